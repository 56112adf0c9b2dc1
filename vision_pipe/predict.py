"""Prediction on raw inputs: image files and/or arrays → model-sized batches → decoded predictions.

Owns what :meth:`vision_pipe.Pipeline.predict` does between its inputs and the
head's ``decode``: reading each input as a sample (:func:`predict_sample`),
the prediction transform and collation, batching in inference mode, and
:class:`LazyImages` (the inputs decoded again one at a time when the results
are drawn, so they are never all in memory). Writing the results is
:mod:`vision_pipe.render`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vision_pipe.data import build_transform, collate, transform_sample
from vision_pipe.errors import DataError
from vision_pipe.io import read_image
from vision_pipe.module import PipelineModule
from vision_pipe.results import Prediction
from vision_pipe.stages import Sample


def predict_sample(i: int, item: Any) -> Sample:
    """A predict input (a path or an array) as a sample: ``{"image": (H, W, 3) uint8 RGB, "id": ...}``."""
    if not isinstance(item, np.ndarray):
        return {"image": read_image(item), "id": str(item)}
    image = item if item.ndim != 2 else np.repeat(item[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"predict input {i}: an array of shape {item.shape} and dtype {item.dtype}; "
            "expected an (H, W, 3) uint8 RGB image (or an (H, W) grey one)"
        )
    return {"image": image, "id": f"array:{i}"}


def predict_batches(
    module: PipelineModule,
    items: Sequence[Any],
    input_size: tuple[int, int],
    batch_size: int,
    class_names: Sequence[str],
) -> list[Prediction]:
    """The decoded predictions of ``module`` for ``items`` (paths or arrays), in order, in original-image coordinates."""
    # no targets at prediction: a detection Compose would demand bboxes and labels
    transform = build_transform("prediction", input_size, [])
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    results: list[Prediction] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                chunk = [predict_sample(i, items[i]) for i in range(start, min(start + batch_size, len(items)))]
                batch = collate([transform_sample(s, "prediction", transform, input_size) for s in chunk])
                outputs = module(batch["image"].to(device))
                results.extend(module.head.decode(outputs, batch, list(class_names)))
    finally:
        module.train(was_training)
    return results


class LazyImages(Sequence[np.ndarray]):
    """The predict inputs as images, decoded when indexed."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return predict_sample(i, self.items[i])["image"]


__all__ = ["LazyImages", "predict_batches", "predict_sample"]
