"""segment_anything's model classes without the package's ``__init__``, which costs a job about 1 CPU-s.

``import segment_anything.modeling`` first runs ``segment_anything/__init__.py``, which imports the
predictor and the mask generator and through them torchvision (and torch._dynamo): about 1 s of a
job's start that the model classes do not need. :func:`modeling` registers the package without
running its ``__init__`` (``import tilesam`` does so, before any module imports
``segment_anything.modeling``); the package's own names (``SamPredictor``, ``sam_model_registry``, ...)
still work: the first access to one runs the real ``__init__`` then (see ``_complete``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["modeling", "register_package", "sam_registry"]

PACKAGE = "segment_anything"


def register_package() -> None:
    """``segment_anything`` in ``sys.modules`` with its path set, its ``__init__`` not yet run."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"tilesam needs the package {PACKAGE} (pip install segment-anything)")
    package = importlib.util.module_from_spec(spec)

    def _complete(name: str):
        """The first name asked of the package that it has not got: run its real ``__init__`` now."""
        if name.startswith("__"):
            raise AttributeError(name)
        del package.__dict__["__getattr__"]
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = _complete  # PEP 562: consulted only for names the module lacks
    sys.modules[PACKAGE] = package


def modeling() -> ModuleType:
    """``segment_anything.modeling`` (Sam, ImageEncoderViT, PromptEncoder, MaskDecoder, ...), torchvision-free."""
    register_package()
    return importlib.import_module(f"{PACKAGE}.modeling")


def sam_registry() -> dict:
    """``segment_anything.build_sam.sam_model_registry``: vit_h/l/b builders, torchvision-free."""
    register_package()
    return importlib.import_module(f"{PACKAGE}.build_sam").sam_model_registry
