"""View embeddings of a frozen image encoder, computed once (what makes finetuning feasible on a CPU)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from tilesam.embed import model_input
from tilesam.finetune.data import ImageSet
from tilesam.finetune.views import View, view_pixels


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on a GPU (bfloat16 where supported), full precision on a CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def model_device(model: Sam) -> torch.device:
    """Where the model's weights are (inputs and embeddings go there too)."""
    return next(model.parameters()).device


class EmbeddingCache:
    """Image embeddings of views computed once by a frozen encoder, in memory and optionally on disk.

    ``namespace`` must identify the encoder's weights (e.g. the base model's sha256): disk
    entries are only valid for the encoder that made them. 4 MB per view in memory.
    """

    def __init__(self, model: Sam, namespace: str, directory: str | os.PathLike | None = None) -> None:
        self.model = model
        self.memory: dict[str, torch.Tensor] = {}
        self.directory = Path(directory) / namespace[:24] if directory is not None else None
        self.computed = 0

    def _compute(self, rgb: np.ndarray) -> torch.Tensor:
        device = model_device(self.model)
        with torch.no_grad(), mixed_precision(device):
            return self.model.image_encoder(model_input(self.model, rgb)).float()

    def get(self, key: str, rgb: np.ndarray) -> torch.Tensor:
        """The embedding (1, 256, 64, 64) of ``rgb``, stored under ``key``."""
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.npy" if self.directory is not None else None
        if path is not None and path.is_file():
            embedding = torch.from_numpy(np.load(path)).to(model_device(self.model))
        else:
            embedding = self._compute(rgb)
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, embedding.cpu().numpy())
                tmp.replace(path)
        self.memory[key] = embedding
        return embedding


def view_key(images: ImageSet, view: View) -> str:
    """Cache key of a view: image content, window and transform."""
    window = "full" if view.window is None else "_".join(map(str, view.window))
    return f"{images.digests[view.image]}-{window}-t{view.transform}"


def view_embedding(model: Sam, images: ImageSet, view: View, cache: EmbeddingCache | None, grad: bool) -> torch.Tensor:
    """A view's embedding: from the cache when the encoder is frozen, else computed (with grad if training)."""
    rgb, _ = view_pixels(images, view)
    if cache is not None:
        return cache.get(view_key(images, view), rgb)
    with torch.set_grad_enabled(grad), mixed_precision(model_device(model)):
        return model.image_encoder(model_input(model, rgb)).float()
