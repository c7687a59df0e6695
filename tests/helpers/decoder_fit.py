"""A fitted instance decoder for end-to-end AIS tests: one labelled image, a real model, seconds on CPU.

No decoder of a real model is available offline (micro-sam's are downloads), so AIS tests fit one:
an :class:`~tilesam.models.unetr.InstanceDecoder` trained from scratch with micro-sam's targets and
loss on ONE image's embedding, until its maps contain that image's objects. Overfitted on purpose: it
is a fixture with known content, not a model.

Signature::

    fit_decoder(model, image, labels, *, out=None, cache_dir=None, steps=150, crop=16, batch=1, lr=2e-3, seed=0)
        -> FittedDecoder

- ``model``: a loaded SAM (e.g. ``load_model("lite_medsam")``, the offline one; any architecture).
- ``image`` (H, W) or (H, W, 3), any dtype, min-max normalised like tilesam's embed step;
  ``labels`` (H, W) instance labels of the same shape. ``demo_image()`` gives tilesam's synthetic
  256 x 256 nuclei (14 objects), which needs no data beside the checkout.
- ``out``: where to write the checkpoint in micro-sam's format ``{"model_state": <SAM state dict>,
  "decoder_state": <decoder state>}`` (tilesam's ``read_checkpoint`` / ``load_decoder_state`` read it).
- ``cache_dir``: keep the fitted decoder there, keyed by this file's code, the settings, the embedding and
  the labels, and reuse it in later sessions (``request.config.cache.mkdir("decoder_fit")`` in a fixture).
- Returns a :class:`FittedDecoder`: the decoder (eval mode), the image embedding (1, 256, h, w), the
  sizes ``decode_maps`` needs (``input_size``, ``original_size``, ``model_size``), the loss per step,
  and the checkpoint path.

Fixed seed, deterministic on CPU. Training runs on random ``crop`` x ``crop`` windows of the embedding
(the decoder's output is 16x the embedding, so a whole 64 x 64 embedding costs ~1024^2 pixels of
full-resolution convolutions per step); the loss compares the window's maps, resized to the model
input's scale as ``decode_maps`` resizes them, with :func:`~tilesam.finetune.targets.instance_targets`
of the labels in the model-input frame, with micro-sam's loss (:func:`~tilesam.finetune.targets.decoder_loss`).

What it gives (lite_medsam, ``demo_image()``, defaults 150 steps on 16 x 16 crops; measured on an AMD
EPYC machine): every object foreground (> 0.5) on at least 71 % of its pixels with 2 torch threads (85 % with
1), background 0.3 %; the loss falls from 0.71 to 0.20 (first and last 10 steps); 16 s with 2 threads.
Tried on the same machine: 120 x 10 (the default until then, chosen on another CPU, where it gave at least
64 %) left one object 35 % foreground with 2 threads; 150 x 12 and 200 x 10 gave 58 % and 53 %. The exact
weights depend on the CPU and the torch thread count, as the short, noisy fit amplifies rounding. Crop
training does not transfer perfectly to the whole embedding because the decoder's InstanceNorm statistics
differ between a crop and the whole image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from skimage.transform import resize

from tilesam.data.synthetic import demo_specs, make_labels, render
from tilesam.embed import encode, normalize
from tilesam.finetune.targets import decoder_loss, instance_targets
from tilesam.models import unetr
from tilesam.models.unetr import InstanceDecoder, decode_maps, decoder_upscale, load_decoder

__all__ = ["FittedDecoder", "demo_image", "fit_decoder", "input_frame_targets"]


@dataclass(frozen=True)
class FittedDecoder:
    """A decoder fitted on one image, with what it takes to decode that image again."""

    decoder: InstanceDecoder
    embedding: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    model_size: int
    losses: list[float]
    checkpoint: Path | None

    def maps(self) -> np.ndarray:
        """float32 [3, H, W] maps of the image (one full decoder pass, ~1024^2 output pixels)."""
        return decode_maps(
            self.decoder, self.embedding, self.input_size, self.original_size, model_size=self.model_size
        )[0]


def demo_image() -> tuple[np.ndarray, np.ndarray]:
    """tilesam's synthetic ``nuclei_small`` (256 x 256 uint8, 14 nuclei, some touching) and its labels."""
    spec = demo_specs()["nuclei_small"]
    labels = make_labels(spec)
    return render(labels, spec.seed), labels


def input_frame_targets(labels: np.ndarray, model_size: int) -> np.ndarray:
    """Decoder targets [3, S, S] in the padded model-input frame: labels resized like the image, then padded."""
    h, w = ResizeLongestSide.get_preprocess_shape(*labels.shape, model_size)
    resized = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    padded = np.zeros((model_size, model_size), labels.dtype)
    padded[:h, :w] = resized
    return instance_targets(padded)


def _corners_with_objects(foreground: np.ndarray, crop: int, scale: int) -> np.ndarray:
    """Embedding-grid corners (n, 2) of the crop windows that hold foreground: a window without any has no gradient."""
    cells = foreground.reshape(foreground.shape[0] // scale, scale, -1, scale).any(axis=(1, 3))
    n = cells.shape[0] - crop + 1
    found = [(i, j) for i in range(n) for j in range(n) if cells[i : i + crop, j : j + crop].any()]
    if not found:
        raise ValueError("fit_decoder: the labels hold no object")
    return np.array(found)


def _cache_key(embedding: torch.Tensor, labels: np.ndarray, settings: dict) -> str:
    """What decides the fitted weights: this helper's code, the settings, the embedding and the labels."""
    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(unetr.__file__).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(embedding.numpy().tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes() + str(labels.shape).encode())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:24]


def _train(
    embedding: torch.Tensor,
    targets: torch.Tensor,
    scale: int,
    *,
    steps: int,
    crop: int,
    batch: int,
    lr: float,
    seed: int,
    upscale: int = 16,
) -> tuple[InstanceDecoder, list[float]]:
    """A fresh decoder trained on random crop windows of ``embedding`` that hold objects; eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with_objects = _corners_with_objects(targets[0].numpy() > 0, crop, scale)
    decoder = InstanceDecoder(upscale=upscale).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        corners = with_objects[rng.integers(0, len(with_objects), size=batch)]
        x = torch.cat([embedding[..., i : i + crop, j : j + crop] for i, j in corners])
        t = torch.stack(
            [targets[:, scale * i : scale * (i + crop), scale * j : scale * (j + crop)] for i, j in corners]
        )
        pred = decoder(x)
        if pred.shape[-1] != t.shape[-1]:
            pred = F.interpolate(pred, t.shape[-2:], mode="bilinear", align_corners=False)
        loss = decoder_loss(pred, t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    decoder.eval()
    return decoder, losses


def fit_decoder(
    model: Sam,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    steps: int = 150,
    crop: int = 16,
    batch: int = 1,
    lr: float = 2e-3,
    seed: int = 0,
) -> FittedDecoder:
    """Fit a fresh :class:`InstanceDecoder` on ``image``'s embedding to ``labels`` (see the module docstring)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"fit_decoder: image {image.shape} and labels {labels.shape} differ in shape")
    model_size = model.image_encoder.img_size
    embedding = encode(model, [normalize(image, (float(image.min()), float(image.max())))]).cpu()
    side = embedding.shape[-1]
    if model_size % side or crop > side:
        raise ValueError(f"fit_decoder: model input {model_size} is not a multiple of the embedding {side} >= crop")
    scale = model_size // side  # target pixels per embedding pixel (the decoder's upscale)
    targets = torch.from_numpy(input_frame_targets(labels, model_size))

    settings = {"steps": steps, "crop": crop, "batch": batch, "lr": lr, "seed": seed, "upscale": decoder_upscale(model)}
    cached = None if cache_dir is None else Path(cache_dir) / f"{_cache_key(embedding, labels, settings)}.pt"
    if cached is not None and cached.is_file():
        saved = torch.load(cached, map_location="cpu", weights_only=True)
        decoder = load_decoder(saved["decoder_state"], source=str(cached), upscale=settings["upscale"])
        losses = [float(x) for x in saved["losses"]]
    else:
        decoder, losses = _train(embedding, targets, scale, **settings)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"decoder_state": decoder.state_dict(), "losses": torch.tensor(losses)}, cached)

    path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model_state": model.state_dict(), "decoder_state": decoder.state_dict()}, path)
    input_size = ResizeLongestSide.get_preprocess_shape(*labels.shape, model_size)
    return FittedDecoder(decoder, embedding, input_size, tuple(labels.shape), model_size, losses, path)
