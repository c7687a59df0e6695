"""The model registry: names (``name``, ``name@version``) -> cards, registering a lab's own, recommending one.

The cards tilesam ships are :mod:`tilesam.models.cards`; a card's type is :mod:`tilesam.models.card`
(both re-exported here, so ``tilesam.models.registry.ModelCard`` keeps working). Names: ``name`` is
the newest version, ``name@version`` a specific one. Versions are labels such as ``v0`` and ``v1``,
ordered by the numbers in them; an outdated version warns when resolved.
"""

from __future__ import annotations

import difflib
import re
import warnings

from .card import (
    ARCHITECTURES,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    UNIT_PIXEL_MEAN,
    UNIT_PIXEL_STD,
    DecoderRef,
    ModelCard,
    architecture_defaults,
)
from .cards import SEED_CARDS

__all__ = [
    "ARCHITECTURES",
    "DecoderRef",
    "ModelCard",
    "RECOMMEND_MODALITIES",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "UNIT_PIXEL_MEAN",
    "UNIT_PIXEL_STD",
    "UnknownModelError",
    "all_cards",
    "architecture_defaults",
    "is_registered",
    "lookup",
    "names",
    "recommend",
    "register",
    "resolve",
    "unregister",
]


class UnknownModelError(KeyError):
    """A model name (or version) that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


_REGISTRY: dict[str, dict[str, ModelCard]] = {}


def register(card: ModelCard, *, replace: bool = False) -> ModelCard:
    """Add a card (e.g. a lab's own finetuned model, or a test server's file); returns it."""
    versions = _REGISTRY.setdefault(card.name, {})
    if card.version in versions and not replace and versions[card.version] != card:
        raise ValueError(f"{card.spec} is already registered; pass replace=True to overwrite it")
    versions[card.version] = card
    return card


def unregister(name: str, version: str | None = None) -> None:
    """Remove one version of a name, or all of its versions."""
    if name not in _REGISTRY or (version is not None and version not in _REGISTRY[name]):
        raise UnknownModelError(f"{name}@{version}" if version else name)
    if version is None:
        del _REGISTRY[name]
    else:
        del _REGISTRY[name][version]
        if not _REGISTRY[name]:
            del _REGISTRY[name]


for _card in SEED_CARDS:
    register(_card)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def all_cards() -> list[ModelCard]:
    """Every registered card, all versions, sorted by name then version."""
    return [
        card for name in names() for card in sorted(_REGISTRY[name].values(), key=lambda c: _version_key(c.version))
    ]


def is_registered(name: str) -> bool:
    """Whether ``name`` or ``name@version`` names a registered model (no warnings, no errors)."""
    base, _, version = name.partition("@")
    return base in _REGISTRY and (not version or version in _REGISTRY[base])


def lookup(name: str) -> ModelCard:
    """Like :func:`resolve` but silent about outdated models (for listings)."""
    base, _, version = name.partition("@")
    if base not in _REGISTRY:
        hint = difflib.get_close_matches(base, names(), n=1)
        suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownModelError(f"unknown model {name!r}.{suggestion} Known models: {', '.join(names())}")
    versions = _REGISTRY[base]
    if not version:
        return versions[max(versions, key=_version_key)]
    if version not in versions:
        known = ", ".join(f"{base}@{v}" for v in sorted(versions, key=_version_key))
        raise UnknownModelError(f"model {base!r} has no version {version!r}; known versions: {known}")
    return versions[version]


def resolve(name: str) -> ModelCard:
    """The card for ``name`` (newest version) or ``name@version``.

    Warns (UserWarning) when the model is outdated, naming its current replacement, so that old
    configurations keep working but say what to move to.
    """
    card = lookup(name)
    if card.status == "outdated":
        warnings.warn(
            f"model {card.spec} is outdated; its current replacement is {card.replacement!r}",
            UserWarning,
            stacklevel=2,
        )
    return card


_RECOMMENDED = {
    "lm": "vit_b_lm",
    "em_organelles": "vit_b_em_organelles",
    "medical": "vit_b_medical_imaging",
    "histopathology": "vit_b_histopathology",
}
#: The modalities :func:`recommend` knows (anything else gets the default).
RECOMMEND_MODALITIES: tuple[str, ...] = (*_RECOMMENDED, "em_boundaries", "other")


def recommend(modality: str | None) -> str:
    """micro-sam's current rule of thumb: its finetuned vit_b generalist where one exists, else vit_b.

    lm (cells, nuclei in light microscopy) -> vit_b_lm (vit_l_lm is a bit better, mostly for
    automatic segmentation, at more cost); em_organelles (mitochondria, nuclei, roundish organelles
    in EM) -> vit_b_em_organelles; medical -> vit_b_medical_imaging; histopathology (nuclei) ->
    vit_b_histopathology; anything else, em_boundaries included (micro-sam dropped its v1-only
    boundaries model), -> the default vit_b. vit_h is never recommended (no advantage, much more
    cost); the vit_t models are much faster at lower quality.
    """
    return _RECOMMENDED.get((modality or "").strip().lower(), "vit_b")
