"""SAM's prompt encoder and mask decoder on one stored image embedding, batched over objects.

The model-running half of prompted segmentation: :mod:`tilesam.interactive.prompts` decides
where the prompts go, this turns them into masks (flat pixel indices) and low-res logits.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam

from tilesam.resize import resized_shape, scale_boxes, scale_points

__all__ = ["PromptDecoder"]


class PromptDecoder:
    """Prompt encoder + mask decoder of one model on one stored embedding, batched."""

    def __init__(self, model: Sam, embedding: torch.Tensor | np.ndarray, original_size: tuple[int, int]) -> None:
        self.model = model
        self.device = next(model.mask_decoder.parameters()).device  # a part it runs: the encoder may be unloaded
        self.embedding = torch.as_tensor(embedding, dtype=torch.float32).to(self.device)
        if self.embedding.ndim == 3:
            self.embedding = self.embedding[None]
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.img_size = int(model.image_encoder.img_size)
        self.input_size = resized_shape(*self.original_size, self.img_size)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def decode(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[list[np.ndarray], torch.Tensor]:
        """Masks (flat pixel indices at the window's size) and low-res logits (b, 1, h, w) of one batch.

        points (b, k, 2) are x, y and boxes (b, 4) are x0, y0, x1, y1 in window pixels.
        """
        point_prompt = None
        if points is not None:
            coords = scale_points(points, self.original_size, self.img_size)
            point_prompt = (self._tensor(coords), self._tensor(labels).to(torch.int64))
        box_prompt = None if boxes is None else self._tensor(scale_boxes(boxes, self.original_size, self.img_size))
        sparse, dense = self.model.prompt_encoder(points=point_prompt, boxes=box_prompt, masks=mask_input)
        logits, iou = self.model.mask_decoder(
            image_embeddings=self.embedding,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if multimask:  # keep the mask the model itself rates best
            logits = logits[torch.arange(len(logits), device=logits.device), iou.argmax(dim=1)][:, None]
        masks = self.model.postprocess_masks(logits, self.input_size, self.original_size)
        masks = (masks[:, 0] > self.model.mask_threshold).cpu().numpy()
        return [np.flatnonzero(m) for m in masks], logits

    def decode_all(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: torch.Tensor | None,
        multimask: bool,
        batch_size: int | None,
    ) -> tuple[list[np.ndarray], torch.Tensor]:
        """`decode` over all objects, in chunks of batch_size (None: one batch) to bound memory."""
        n = len(points) if points is not None else len(boxes)
        step = batch_size or n

        def part(array, start):
            return None if array is None else array[start : start + step]

        pixels, logits = [], []
        for start in range(0, n, step):
            p, lg = self.decode(
                part(points, start), part(labels, start), part(boxes, start), part(mask_input, start), multimask
            )
            pixels += p
            logits.append(lg)
        return pixels, torch.cat(logits)
