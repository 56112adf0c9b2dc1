"""Prediction on raw inputs: image files and/or arrays → model-sized batches → decoded predictions.

Owns what :meth:`vision_pipe.Pipeline.predict` does between its inputs and the
head's ``decode``: reading each input as a sample (:func:`predict_sample`),
the prediction transform and collation, batching in inference mode on the chosen device (:func:`predict_device`: the
accelerator when there is one) under the pipeline's precision there
(:func:`autocast_dtype`), and
:class:`LazyImages` (the inputs decoded again one at a time when the results
are drawn, so they are never all in memory). Writing the results is
:mod:`vision_pipe.render`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from vision_pipe.data import build_transform, collate, transform_sample
from vision_pipe.errors import ConfigError, DataError
from vision_pipe.io import read_image
from vision_pipe.module import PipelineModule
from vision_pipe.results import Prediction
from vision_pipe.stages import Batch, Sample


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


#: What ``device`` may name besides a torch device string (``cuda:1``): the accelerator when there is one.
AUTO = "auto"


def predict_device(requested: str | None, accelerator: Any = "auto") -> torch.device:
    """The device to predict on: ``requested`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) when given,
    else — and for ``"auto"`` — the first GPU when there is one and the pipeline's ``trainer.accelerator``
    does not say ``cpu``, else the CPU. A device this machine does not have is a :class:`ConfigError`."""
    name = (requested or AUTO).strip().lower()
    if name == AUTO:
        if str(accelerator).lower() == "cpu":
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {requested!r}: not a device name ({exc}); use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"--device {requested!r}: this machine has {count} CUDA device(s); use auto or cpu"
                if count
                else f"--device {requested!r}: no CUDA device on this machine; use auto or cpu"
            )
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {requested!r}: MPS is not available on this machine; use auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {requested!r}: vision-pipe predicts on cpu, cuda[:N] or mps")
    return device


def autocast_dtype(device: torch.device, precision: Any) -> torch.dtype | None:
    """The autocast dtype for prediction under the pipeline's ``trainer.precision`` on ``device``:
    bf16 for ``bf16-mixed``/``bf16``, fp16 for ``16-mixed``/``16`` — on an accelerator only (on the CPU
    prediction stays in float32, as it is usually no faster there); ``None`` for full precision."""
    if device.type == "cpu":
        return None
    text = str(precision).lower()
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return None


def input_batches(
    items: Sequence[Any], input_size: tuple[int, int], batch_size: int
) -> Iterator[tuple[list[Sample], Batch]]:
    """``items`` (paths or arrays) ``batch_size`` at a time, in order: the samples as read
    (:func:`predict_sample`) and their collated batch after the prediction transform (resize to ``input_size``):
    ``image`` (B, 3, H, W) uint8 and ``meta``. What every inference path (predict, similar, inspect) feeds
    the model."""
    # no targets at prediction: a detection Compose would demand bboxes and labels
    transform = build_transform("prediction", input_size, [])
    for start in range(0, len(items), batch_size):
        chunk = [predict_sample(i, items[i]) for i in range(start, min(start + batch_size, len(items)))]
        yield chunk, collate([transform_sample(s, "prediction", transform, input_size) for s in chunk])


def predict_batches(
    module: PipelineModule,
    items: Sequence[Any],
    input_size: tuple[int, int],
    batch_size: int,
    class_names: Sequence[str],
    *,
    device: torch.device | None = None,
    precision: Any = "32",
) -> list[Prediction]:
    """The decoded predictions of ``module`` for ``items`` (paths or arrays), in order, in original-image
    coordinates. The module is moved to ``device`` (default: where it is) and stays there; the forward
    runs under :func:`autocast_dtype` of ``precision`` on that device, the decoding in float32."""
    device = device or next(module.parameters()).device
    module.to(device)
    dtype = autocast_dtype(device, precision)
    was_training = module.training
    module.eval()
    results: list[Prediction] = []
    try:
        with torch.inference_mode():
            for _, batch in input_batches(items, input_size, batch_size):
                autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with autocast:
                    outputs = module(batch["image"].to(device, non_blocking=True))
                results.extend(module.head.decode(as_float32(outputs), batch, list(class_names)))
    finally:
        module.train(was_training)
    return results


def as_float32(value: Any) -> Any:
    """A head's raw outputs with half-precision tensors in float32 (a tensor, a dataclass, a dict or a
    sequence of them), so that decoding and NMS run in full precision."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: as_float32(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value


class LazyImages(Sequence[np.ndarray]):
    """The predict inputs as images, decoded when indexed."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return predict_sample(i, self.items[i])["image"]


__all__ = [
    "AUTO",
    "LazyImages",
    "as_float32",
    "autocast_dtype",
    "input_batches",
    "predict_batches",
    "predict_device",
    "predict_sample",
]
