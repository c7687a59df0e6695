"""tilesam: Segment Anything over large microscopy data."""

__all__ = ["load_model"]


def __getattr__(name: str):
    """`tilesam.load_model`, imported on first use: torch costs ~600 MB and seconds in jobs that never need it."""
    if name == "load_model":
        from tilesam.models import load_model

        return load_model
    raise AttributeError(f"module 'tilesam' has no attribute {name!r}")
