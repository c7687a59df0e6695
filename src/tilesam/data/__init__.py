"""Inputs and stores: reading images, OME-Zarr, block stores, datasets (local, public, synthetic)."""
