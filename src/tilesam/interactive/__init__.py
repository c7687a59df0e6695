"""Prompted segmentation: where prompts go, and the prompted evaluation protocol."""
