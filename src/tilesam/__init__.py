"""tilesam: Segment Anything over large microscopy data."""

from tilesam.models import load_model

__all__ = ["load_model"]
