"""tilesam: Segment Anything over large microscopy data."""

from tilesam.sam_modules import register_package as _register_segment_anything

__all__ = ["load_model"]

# segment_anything's model classes without its __init__ (torchvision, ~1 CPU-s a job); its own
# names still work, they complete the package on first use (see tilesam.sam_modules)
_register_segment_anything()


def __getattr__(name: str):
    """`tilesam.load_model`, imported on first use: torch costs ~600 MB and seconds in jobs that never need it."""
    if name == "load_model":
        from tilesam.models import load_model

        return load_model
    raise AttributeError(f"module 'tilesam' has no attribute {name!r}")
