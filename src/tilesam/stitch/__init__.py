"""Joining per-tile instances into one label image, across tile borders and sections."""
