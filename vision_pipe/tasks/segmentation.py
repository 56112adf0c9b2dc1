"""The segmentation task: a ``mask`` of class ids per image (255 = ignore).

Owns the mask's check, its path through albumentations (compact dtype, the
``mask`` target) and its tensors, the metrics (per-class IoU, mean IoU, pixel
accuracy) with their summary (``miou``, ``pixel_acc``, ``iou/<class>``) and
pictures (``iou_per_class.csv`` / ``.png``), drawing a
:class:`~vision_pipe.results.SegmentationPrediction` and its ``_mask.png``.
Evaluation form of a head's outputs: logits (B, num_classes, H, W).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from vision_pipe.drawing import class_palette, upscale, write_class_bars
from vision_pipe.io import write_png
from vision_pipe.results import Prediction, SegmentationPrediction
from vision_pipe.samples import IGNORE_INDEX, check_mask
from vision_pipe.tasks.base import Graded, Task

if TYPE_CHECKING:
    import torchmetrics
    from torch import Tensor


class SegmentationTask(Task):
    """Segmentation: ``mask`` (H, W) class ids per sample, (B, H, W) int64 per batch."""

    name = "segmentation"
    prediction_type = SegmentationPrediction
    has_class_scores = True
    target_keys = ("mask",)
    main_metrics = ("miou",)
    per_class_metrics = ("iou",)
    report_plots = ("iou_per_class.png",)

    # -- samples ---------------------------------------------------------------

    def check_targets(self, sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
        check_mask(sample.get("mask"), size, num_classes, sample_id)

    def transform_inputs(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"mask": compact_mask(sample["mask"])}

    def transformed_targets(self, sample: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Tensor]:
        import torch

        # compact (uint8 up to 255 classes, the transform's dtype); int64 once on the device
        return {"mask": torch.from_numpy(np.ascontiguousarray(out["mask"]))}

    def collate_targets(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        from vision_pipe.data import stack

        mask = stack([it["mask"] for it in items])  # (B, H, W)
        # uint8 where the ids fit (an eighth of int64's bytes to pin and copy; the datamodule
        # makes it int64 on the device), else int64
        if mask.dtype != torch.uint8:
            fits = mask.numel() and int(mask.min()) >= 0 and int(mask.max()) <= IGNORE_INDEX
            mask = mask.to(torch.uint8) if fits else mask.long()
        return {"mask": mask}

    def random_targets(
        self, rng: np.random.Generator, batch_size: int, input_size: tuple[int, int], num_classes: int
    ) -> dict[str, Any]:
        """Random class ids; the first two rows of every mask are ignored (255) pixels."""
        import torch

        height, width = input_size
        mask = rng.integers(0, num_classes, (batch_size, height, width)).astype(np.int64)
        mask[:, :2] = IGNORE_INDEX
        return {"mask": torch.from_numpy(mask)}

    # -- evaluation ------------------------------------------------------------

    def make_metrics(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torchmetrics.MetricCollection:
        """``iou`` (num_classes,) per-class IoU (NaN for a class absent from both prediction and
        target) and ``pixel_acc``, both ignoring ``ignore_index`` pixels."""
        import torchmetrics
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassJaccardIndex,
        )

        n = num_classes
        return torchmetrics.MetricCollection(
            {
                "iou": MulticlassJaccardIndex(
                    num_classes=n,
                    average="none",
                    ignore_index=ignore_index,
                    zero_division=math.nan,
                    validate_args=False,
                ),
                "pixel_acc": MulticlassAccuracy(
                    num_classes=n, average="micro", ignore_index=ignore_index, validate_args=False
                ),
            }
        )

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Tensor, batch: Mapping[str, Any]) -> None:
        """Feed the argmax of logits (B, num_classes, H, W) and ``batch["mask"]`` (B, H, W)."""
        metrics.update(outputs.detach().argmax(dim=1), batch["mask"].long())

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``miou`` (mean over classes present in prediction or target), ``pixel_acc`` and ``iou/<class>``.

        With ``plots_dir``, writes ``iou_per_class.csv`` (columns ``id, class, iou``; ``nan`` for a
        class absent from both prediction and target) and ``iou_per_class.png`` (a bar per class,
        the mean IoU as a dashed line) there.
        """
        iou = computed["iou"].detach().cpu().double().numpy()
        present = iou[~np.isnan(iou)]
        out = {"miou": float(present.mean()) if present.size else math.nan, "pixel_acc": float(computed["pixel_acc"])}
        for name, value in zip(class_names, iou, strict=True):
            out[f"iou/{name}"] = float(value)
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            write_iou_csv(iou, class_names, plots_dir / "iou_per_class.csv")
            write_class_bars(iou, class_names, out["miou"], plots_dir / "iou_per_class.png", metric="IoU")
        return out

    # -- predictions -------------------------------------------------------------

    def export_outputs(self, outputs: Any) -> dict[str, Tensor]:
        """Logits (B, C, H, W) → ``{"class_ids": (B, H, W) int64}``."""
        return {"class_ids": outputs.argmax(dim=1)}

    def class_scores(self, outputs: Any) -> Tensor:
        """Logits (B, C, H, W) → (B, C): each class's logit summed over the pixels predicted as that class,
        divided by the image's pixel count (0 for a class predicted nowhere); the Grad-CAM score of a class."""
        import torch

        logits = outputs.float()
        classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
        predicted = (logits.argmax(dim=1, keepdim=True) == classes).to(logits.dtype)  # (B, C, H, W)
        return (logits * predicted).mean(dim=(2, 3))

    def draw(
        self, image: np.ndarray, prediction: Prediction, class_colors: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """Every class but 0 blended in its colour (``class_colors`` (R, G, B) per class, else the VOC palette)."""
        prediction = cast(SegmentationPrediction, prediction)
        mask = prediction.mask
        colours = class_palette(max(len(prediction.class_names), int(mask.max(initial=0)) + 1), class_colors)
        overlay = colours[np.clip(mask, 0, len(colours) - 1)]
        blended = np.where(mask[..., None] > 0, (0.5 * image + 0.5 * overlay).astype(np.uint8), image)
        return upscale(np.ascontiguousarray(blended))[0]

    def write_prediction(self, prediction: Prediction, out_dir: Path, stem: str) -> dict[str, str]:
        """``<stem>_mask.png``: class ids at the original size, 8-bit (16-bit for more than 256 classes)."""
        prediction = cast(SegmentationPrediction, prediction)
        dtype = np.uint8 if len(prediction.class_names) <= 256 else np.uint16
        return {"mask": str(write_png(out_dir / f"{stem}_mask.png", prediction.mask.astype(dtype)))}

    def describe(self, prediction: Prediction) -> str:
        return f"{prediction.id}: {prediction.to_dict()['pixels_per_class']}"

    def grade(self, prediction: Prediction, sample: Mapping[str, Any], class_names: Sequence[str]) -> Graded:
        """The image's mean IoU over the classes in its mask or the prediction (ignored pixels left out)."""
        prediction = cast(SegmentationPrediction, prediction)
        true = np.asarray(sample["mask"]).astype(np.int64)
        found = prediction.mask
        counted = true != IGNORE_INDEX
        ious = []
        for c in np.union1d(np.unique(true[counted]), np.unique(found[counted])):
            t, f = (true == c) & counted, (found == c) & counted
            ious.append(float((t & f).sum()) / float((t | f).sum()))
        score = float(np.mean(ious)) if ious else 1.0
        return Graded(score, f"image IoU {score:.2f}", prediction)


def compact_mask(mask: np.ndarray) -> np.ndarray:
    """Class ids as uint8 when they fit (they do with <= 255 classes: 255 is ignore), else int32.

    OpenCV, which albumentations calls, has no kernels for int64 in several
    operations (e.g. morphology); and smaller masks are faster to warp.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        return mask
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        return mask.astype(np.int32)
    return mask.astype(np.uint8)


def write_iou_csv(iou: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """One row per class: id, name, IoU in [0, 1] (``nan`` when the class is in neither prediction nor target)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "class", "iou"])
        for i, (name, value) in enumerate(zip(class_names, iou, strict=True)):
            writer.writerow([i, name, f"{value:.6f}" if np.isfinite(value) else "nan"])


SEGMENTATION = SegmentationTask()
