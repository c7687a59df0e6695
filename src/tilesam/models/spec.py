"""How the workflow names models: a config entry -> a resolved spec -> a file-safe id."""

from __future__ import annotations

from pathlib import Path


def resolve_spec(spec: str, modality: str = "other") -> str:
    """A registry name (validated), `auto` (picked by modality), or an existing checkpoint path."""
    from tilesam.models import recommend
    from tilesam.models.registry import resolve

    if spec == "auto":
        return recommend(modality)
    if Path(spec).suffix in (".pt", ".pth", ".ckpt") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"model {spec!r}: no such checkpoint file")
        return str(path.resolve())
    resolve(spec)  # raises with the known names for an unknown one
    return spec


def model_id(spec: str) -> str:
    """A name usable in file paths: the registry name, or a checkpoint file's stem."""
    if "/" in spec:
        return Path(spec).stem
    return spec
