"""The detection task: ``boxes`` (xyxy pixels) with ``labels`` (and optional ``difficult`` flags) per image.

Owns the boxes' check, their path through albumentations (``pascal_voc`` boxes
clipped to the image and dropped by the :class:`~vision_pipe.config.BoxRules`)
and their per-image tensors, the metrics (COCO mAP through torchmetrics'
``MeanAveragePrecision``, ``difficult`` objects ignored as VOC does, synced across
processes once per evaluation) with their
summary (``map``, ``map_50``, ``map_75``, ``mar_100``, ``ap/<class>``,
``ap_50/<class>``) and pictures (``ap_per_class.csv`` / ``.png``, ``precision_recall.png``),
drawing a :class:`~vision_pipe.results.DetectionPrediction` and the run's
``detections_coco.json``.

Evaluation form of a head's outputs: a list of B dicts ``{"boxes": (K, 4) float
xyxy in pixels of the model input, "scores": (K,), "labels": (K,) int64 in
0..C-1}``; the metrics compare them with the ground truth in original-image pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np

from vision_pipe.drawing import class_palette, upscale, write_class_bars
from vision_pipe.io import atomic_write_text
from vision_pipe.results import DetectionPrediction, Prediction
from vision_pipe.samples import IGNORE_INDEX, box_iou, check_boxes, pack_targets
from vision_pipe.tasks.base import Graded, Task

if TYPE_CHECKING:
    import albumentations as A
    import torchmetrics
    from torch import Tensor

    from vision_pipe.config import BoxRules

#: Index of IoU 0.5 in the IoU thresholds of torchmetrics' mAP (0.5, 0.55, ..., 0.95).
_IOU_50 = 0
#: Recall thresholds of COCO's interpolated precision (101 points, 0..1).
_RECALLS = np.linspace(0.0, 1.0, 101)
#: The detections a report grades and draws: those at least this sure.
REPORT_MIN_SCORE = 0.5


class DetectionTask(Task):
    """Detection: per sample ``boxes`` (N, 4), ``labels`` (N,), optional ``difficult`` (N,);
    per batch lists of B such tensors (``difficult`` all False when the loader gives none)."""

    name = "detection"
    prediction_type = DetectionPrediction
    target_keys = ("boxes", "labels", "difficult")
    main_metrics = ("map_50", "map")
    per_class_metrics = ("ap_50", "ap")
    report_plots = ("ap_per_class.png", "precision_recall.png")

    # -- samples ---------------------------------------------------------------

    def check_targets(self, sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
        check_boxes(sample, size, num_classes, sample_id)

    def compose(self, transforms: Sequence[A.BasicTransform], boxes: BoxRules | None = None) -> A.Compose:
        """Boxes (``pascal_voc`` = xyxy pixels) follow every geometric transform, are clipped to the
        image and dropped by ``boxes``' rules (none is dropped when ``boxes`` is None, as for evaluation)."""
        import albumentations as A

        bbox = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "difficult"],
            min_visibility=boxes.min_visibility if boxes is not None else 0.0,
            min_area=boxes.min_area if boxes is not None else 0.0,
            min_width=boxes.min_width if boxes is not None else 0.0,
            min_height=boxes.min_height if boxes is not None else 0.0,
            clip=True,
        )
        return A.Compose(list(transforms), bbox_params=bbox)

    def transform_inputs(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        labels = np.asarray(sample["labels"], dtype=np.int64).reshape(-1)
        difficult = sample.get("difficult")
        return {
            "bboxes": np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4),
            "labels": labels,
            "difficult": np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1),
        }

    def transformed_targets(self, sample: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Tensor]:
        import torch

        return {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1)),
            "difficult": torch.as_tensor(np.asarray(out["difficult"], dtype=bool).reshape(-1)),
        }

    def collate_targets(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        boxes = [it["boxes"] for it in items]
        labels = [it["labels"] for it in items]
        difficult = [it.get("difficult", torch.zeros(len(it["labels"]), dtype=torch.bool)) for it in items]
        return {"boxes": boxes, "labels": labels, "difficult": difficult, **pack_targets(boxes, labels, difficult)}

    def random_targets(
        self, rng: np.random.Generator, batch_size: int, input_size: tuple[int, int], num_classes: int
    ) -> dict[str, Any]:
        """Image 0 gets two boxes, image 1 none (every head must cope with empty images), the others one."""
        import torch

        height, width = input_size
        counts = [2 if i == 0 else (0 if i == 1 else 1) for i in range(batch_size)]
        boxes = [_random_boxes(rng, n, height, width) for n in counts]
        labels = [torch.from_numpy(rng.integers(0, num_classes, n).astype(np.int64)) for n in counts]
        difficult = [torch.zeros(n, dtype=torch.bool) for n in counts]
        return {"boxes": boxes, "labels": labels, "difficult": difficult, **pack_targets(boxes, labels, difficult)}

    # -- evaluation ------------------------------------------------------------

    def make_metrics(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torchmetrics.MetricCollection:
        """COCO-style mean average precision over IoU 0.5:0.95, per class, with the precision array
        (``extended_summary``) from which per-class AP at IoU 0.5 is read."""
        import torchmetrics

        return torchmetrics.MetricCollection(
            {"map": _mean_ap_class()(box_format="xyxy", iou_type="bbox", class_metrics=True, extended_summary=True)}
        )

    def update_metrics(
        self, metrics: torchmetrics.MetricCollection, outputs: Sequence[Mapping[str, Tensor]], batch: Mapping[str, Any]
    ) -> None:
        """Feed the detections (in model-input pixels) and the ground truth of one batch, both mapped
        to original-image pixels; ``batch["difficult"]`` objects (when present) go in as ``iscrowd``
        and are ignored."""
        import torch

        h, w = batch["image"].shape[-2:]
        difficult = batch.get("difficult")
        preds, targets = [], []
        for i, (det, meta) in enumerate(zip(outputs, batch["meta"], strict=True)):
            oh, ow = (float(v) for v in meta["orig_size"])
            device = det["boxes"].device
            boxes = batch["boxes"][i].to(device=device, dtype=torch.float32)
            to_orig = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=device)
            crowd = difficult[i].to(device=device, dtype=torch.long) if difficult is not None else None
            target = {"boxes": boxes * to_orig, "labels": batch["labels"][i].to(device)}
            target["iscrowd"] = crowd if crowd is not None else torch.zeros_like(target["labels"])
            targets.append(target)
            found = det["boxes"].detach().to(torch.float32) * to_orig
            preds.append({"boxes": found, "scores": det["scores"].detach(), "labels": det["labels"]})
        metrics.update(preds, targets)

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``map`` (COCO mAP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100``, ``ap/<class>`` and
        ``ap_50/<class>`` (NaN for a class without ground truth in the split). With ``plots_dir``,
        writes ``ap_per_class.csv``, ``ap_per_class.png`` (a bar per class, the mean as a dashed line) and
        ``precision_recall.png`` (per class), all at IoU 0.5."""
        out = {key: _nan_if_missing(float(computed[key])) for key in ("map", "map_50", "map_75", "mar_100")}
        ap, ap50 = per_class_ap(computed, len(class_names))
        for name, a, a50 in zip(class_names, ap, ap50, strict=True):
            out[f"ap/{name}"] = a
            out[f"ap_50/{name}"] = a50
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            write_ap_csv(class_names, ap, ap50, plots_dir / "ap_per_class.csv")
            write_class_bars(
                np.array(ap50), class_names, out["map_50"], plots_dir / "ap_per_class.png", metric="AP@0.5"
            )
            write_pr_png(computed, class_names, ap50, plots_dir / "precision_recall.png")
        return out

    # -- predictions -------------------------------------------------------------

    def draw(
        self, image: np.ndarray, prediction: Prediction, class_colors: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """Boxes with class name and score, in the class's colour (``class_colors`` are of the classes
        0..C-1; without them the VOC palette from its second colour, as its first is black)."""
        prediction = cast(DetectionPrediction, prediction)
        canvas, scale = upscale(image.copy())
        canvas = np.ascontiguousarray(canvas)
        colours = class_palette(int(prediction.labels.max(initial=0)) + 2)
        if class_colors:
            colours[1 : len(class_colors) + 1] = class_colors
        for box, label, name, score in zip(
            prediction.boxes, prediction.labels, prediction.class_names, prediction.scores, strict=True
        ):
            x1, y1, x2, y2 = (round(float(v) * scale) for v in box)
            colour = tuple(int(c) for c in colours[int(label) + 1])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(
                canvas,
                f"{name} {score:.2f}",
                (x1, max(12, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                colour,
                1,
                cv2.LINE_AA,
            )
        return canvas

    def write_predictions(self, predictions: Sequence[Prediction], out_dir: Path) -> list[Path]:
        """``detections_coco.json`` (COCO results format: ``image_id`` = the input's position,
        ``file_name``, ``category_id`` = label, ``category_name``, ``bbox`` [x, y, width, height]
        in pixels, ``score``)."""
        coco: list[dict[str, Any]] = []
        for i, prediction in enumerate(predictions):
            prediction = cast(DetectionPrediction, prediction)
            for box, label, cname, score in zip(
                prediction.boxes, prediction.labels, prediction.class_names, prediction.scores, strict=True
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                coco.append(
                    {
                        "image_id": i,
                        "file_name": prediction.id,
                        "category_id": int(label),
                        "category_name": cname,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 5),
                    }
                )
        path = out_dir / "detections_coco.json"
        atomic_write_text(path, json.dumps(coco, indent=2))
        return [path]

    def describe(self, prediction: Prediction) -> str:
        prediction = cast(DetectionPrediction, prediction)
        return f"{prediction.id}: {len(prediction.boxes)} object(s)"

    def grade(self, prediction: Prediction, sample: Mapping[str, Any], class_names: Sequence[str]) -> Graded:
        """F1 at IoU 0.5 of the detections scored at least :data:`REPORT_MIN_SCORE` (greedy matching, most
        confident first, same class); 1 for an image with neither objects nor detections. Those are drawn."""
        prediction = cast(DetectionPrediction, prediction)
        keep = prediction.scores >= REPORT_MIN_SCORE
        shown = dataclasses.replace(
            prediction,
            boxes=prediction.boxes[keep],
            labels=prediction.labels[keep],
            scores=prediction.scores[keep],
            class_names=[n for n, k in zip(prediction.class_names, keep, strict=True) if k],
        )
        true_boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        true_labels = np.asarray(sample["labels"], np.int64).reshape(-1)
        unmatched = set(range(len(true_boxes)))
        hits = 0
        for box, label in zip(shown.boxes, shown.labels, strict=True):
            candidates = [(box_iou(box, true_boxes[j]), j) for j in unmatched if true_labels[j] == label]
            best = max(candidates, default=(0.0, -1))
            if best[0] >= 0.5:
                unmatched.discard(best[1])
                hits += 1
        total = len(shown.boxes) + len(true_boxes)
        score = 2.0 * hits / total if total else 1.0
        caption = f"{hits} of {len(true_boxes)} object(s) found, {len(shown.boxes)} detection(s), F1 {score:.2f}"
        return Graded(score, caption, shown)


@functools.cache
def _mean_ap_class() -> type:
    """torchmetrics' ``MeanAveragePrecision`` synced across processes with one collective per evaluation
    (:class:`~vision_pipe.tasks.metric_sync.SyncListsOnce`; made on first use: importing the task needs no torch)."""
    from torchmetrics.detection import MeanAveragePrecision

    from vision_pipe.tasks.metric_sync import SyncListsOnce

    return type("MeanAveragePrecision", (SyncListsOnce, MeanAveragePrecision), {"__module__": __name__})


def _random_boxes(rng: np.random.Generator, n: int, height: int, width: int) -> Tensor:
    """(n, 4) float32 xyxy boxes of at least a quarter of the image side."""
    import torch

    x1 = rng.uniform(0, width * 0.5, n)
    y1 = rng.uniform(0, height * 0.5, n)
    x2 = np.minimum(x1 + rng.uniform(width * 0.25, width * 0.5, n), width)
    y2 = np.minimum(y1 + rng.uniform(height * 0.25, height * 0.5, n), height)
    return torch.from_numpy(np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(n, 4))


def _nan_if_missing(value: float) -> float:
    """torchmetrics writes -1 for "no ground truth"; we write NaN (``null`` in metrics.json)."""
    return math.nan if value < 0 else value


def _precision_at_50(computed: dict[str, Tensor]) -> dict[int, np.ndarray]:
    """Class id → interpolated precision (101,) at IoU 0.5, all areas, the most detections (-1 where undefined)."""
    precision = computed["precision"].detach().cpu().double().numpy()  # (T, R, K, A, M)
    classes = computed["classes"].detach().cpu().reshape(-1).tolist()
    return {int(c): precision[_IOU_50, :, k, 0, -1] for k, c in enumerate(classes)}


def per_class_ap(computed: dict[str, Tensor], num_classes: int) -> tuple[list[float], list[float]]:
    """(AP@[.5:.95], AP@0.5) per class 0..num_classes-1 from ``MeanAveragePrecision.compute()``;
    NaN for a class without ground truth. AP@0.5 is the mean of the 101-point interpolated precision."""
    ap = [math.nan] * num_classes
    per_class = computed["map_per_class"].detach().cpu().reshape(-1).tolist()
    classes = computed["classes"].detach().cpu().reshape(-1).tolist()
    for c, value in zip(classes, per_class, strict=True):
        if 0 <= int(c) < num_classes:
            ap[int(c)] = _nan_if_missing(float(value))
    ap50 = [math.nan] * num_classes
    for c, prec in _precision_at_50(computed).items():
        if 0 <= c < num_classes and (prec > -1).any():
            ap50[c] = float(prec[prec > -1].mean())
    return ap, ap50


def write_ap_csv(class_names: Sequence[str], ap: Sequence[float], ap50: Sequence[float], path: Path) -> None:
    """One row per class: ``class, ap_50, ap`` (empty for NaN)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap_50", "ap"])
        for name, a, a50 in zip(class_names, ap, ap50, strict=True):
            writer.writerow([name, "" if math.isnan(a50) else f"{a50:.4f}", "" if math.isnan(a) else f"{a:.4f}"])


def write_pr_png(computed: dict[str, Tensor], class_names: Sequence[str], ap50: Sequence[float], path: Path) -> None:
    """Interpolated precision-recall curves at IoU 0.5, one line per class with ground truth."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state is touched
    )

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for c, prec in sorted(_precision_at_50(computed).items()):
        if 0 <= c < len(class_names) and (prec > -1).any():
            ax.plot(_RECALLS, np.where(prec > -1, prec, np.nan), label=f"{class_names[c]} (AP50 {ap50[c]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall at IoU 0.5")
    if ax.lines:
        ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


DETECTION = DetectionTask()
