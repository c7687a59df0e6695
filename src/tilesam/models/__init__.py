"""The model zoo: registry of model cards, verified downloads, and SAM model loading.

``load_model("vit_b_lm")`` (or ``"name@version"``, or a checkpoint path) returns a
``segment_anything`` ``Sam`` ready for SamPredictor / SamAutomaticMaskGenerator. The functions
``models_table``, ``recommend`` and ``fetch`` back the ``tilesam models`` command line.
"""

from .fetch import (
    ChecksumError,
    DownloadError,
    OfflineError,
    UnknownChecksumError,
    cache_dir,
    fetch,
    file_sha256,
    is_cached,
    models_table,
)
from .load import (
    Checkpoint,
    CheckpointError,
    build_sam,
    load_decoder_state,
    load_model,
    model_info,
    read_checkpoint,
    resolve_device,
)
from .registry import (
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

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ChecksumError",
    "DecoderRef",
    "DownloadError",
    "ModelCard",
    "OfflineError",
    "UnknownChecksumError",
    "UnknownModelError",
    "all_cards",
    "build_sam",
    "cache_dir",
    "fetch",
    "file_sha256",
    "is_cached",
    "load_decoder_state",
    "load_model",
    "model_info",
    "models_table",
    "names",
    "read_checkpoint",
    "recommend",
    "register",
    "resolve",
    "resolve_device",
    "unregister",
]
