"""tilesam: Segment Anything over large microscopy data."""
