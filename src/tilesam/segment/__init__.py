"""Automatic segmentation of tiles from stored embeddings: AMG (point or box grid) and its threshold search."""
