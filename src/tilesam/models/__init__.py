"""The model zoo: registry of model cards, verified downloads, and SAM model loading.

``load_model("vit_b_lm")`` (or ``"name@version"``, or a checkpoint path) returns a
``segment_anything`` ``Sam`` ready for SamPredictor / SamAutomaticMaskGenerator;
``load_decoder_state`` the same model's instance-segmentation decoder state (or None). The functions
``models_table``, ``recommend`` and ``fetch`` back the ``tilesam models`` command line.

The names of :mod:`~tilesam.models.load` are imported on first use: the registry and downloads
need no torch (~600 MB and seconds), so listing, fetching or planning models does not load it.
"""

from tilesam.download import ChecksumError, DownloadError, OfflineError, UnknownChecksumError, cache_dir, file_sha256

from .fetch import DECODER_SEPARATOR, ModelFiles, ModelRef, fetch, fetch_files, is_cached, models_table, parse
from .registry import (
    RECOMMEND_MODALITIES,
    DecoderRef,
    ModelCard,
    UnknownModelError,
    all_cards,
    names,
    recommend,
    register,
    resolve,
    unregister,
)

_LAZY = {
    "Checkpoint": "tilesam.models.load",
    "CheckpointError": "tilesam.models.load",
    "build_sam": "tilesam.models.load",
    "load_decoder_state": "tilesam.models.load",
    "load_model": "tilesam.models.load",
    "model_info": "tilesam.models.load",
    "read_checkpoint": "tilesam.models.load",
}

__all__ = [
    "DECODER_SEPARATOR",
    "RECOMMEND_MODALITIES",
    "Checkpoint",
    "CheckpointError",
    "ChecksumError",
    "DecoderRef",
    "DownloadError",
    "ModelCard",
    "ModelFiles",
    "ModelRef",
    "OfflineError",
    "UnknownChecksumError",
    "UnknownModelError",
    "all_cards",
    "build_sam",
    "cache_dir",
    "fetch",
    "fetch_files",
    "file_sha256",
    "is_cached",
    "load_decoder_state",
    "load_model",
    "model_info",
    "models_table",
    "names",
    "parse",
    "read_checkpoint",
    "recommend",
    "register",
    "resolve",
    "unregister",
]


def __getattr__(name: str):
    """The torch-backed names (``load_model`` and friends), imported when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tilesam.models' has no attribute {name!r}")
