"""COCO evaluation with the reference implementation: pycocotools' ``COCOeval`` on a split held in memory.

Owns :class:`CocoEvalMAP`, the metric of ``metrics.detection: pycocotools``, and
:data:`COCO_PARAMS`, the evaluation settings both detection backends use.

What each backend does (both end in pycocotools' ``COCOeval.evaluate`` /
``accumulate``, with the same settings, so they agree; a test checks it on a
hand-made set against hand-computed AP):

- ``torchmetrics``: torchmetrics' ``MeanAveragePrecision`` keeps the tensors,
  converts them with its own code (``torchmetrics.detection.helpers``) into COCO
  objects, runs ``COCOeval`` once for the summary and once per class for the
  per-class AP (``summarize`` output parsed from ``stats``);
- ``pycocotools`` (here): the ground truth and the detections are written by
  vision-pipe as COCO dictionaries (``images``, ``categories``, ``annotations``
  with ``bbox`` [x, y, w, h], ``area`` = w * h, ``iscrowd``), ``COCOeval`` runs
  once and every figure (``map``, ``map_50``, ``map_75``, ``mar_100``, per-class
  AP) is read from its ``eval["precision"]`` / ``eval["recall"]`` arrays as
  ``COCOeval.summarize`` does.

Settings (:data:`COCO_PARAMS`, COCO's own defaults, set explicitly): IoU
thresholds 0.50:0.05:0.95 (10, float64 as ``np.linspace`` makes them), recall
thresholds 0:0.01:1 (101-point interpolated precision), at most 1 / 10 / 100
detections per image and class (the figures use 100), area ranges all
[0, 1e10], small [0, 32²], medium [32², 96²], large [96², 1e10] pixels² (the
figures use "all"). Ground truth flagged ``iscrowd`` (our ``difficult``) is
ignored as COCO ignores crowd regions: a detection matching it is neither a
true nor a false positive.

Under DDP the lists are gathered once per evaluation
(:class:`~vision_pipe.tasks.metric_sync.SyncListsOnce`), in the split's order.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from vision_pipe.tasks.metric_sync import SyncListsOnce

#: COCOeval's settings for boxes, written out (pycocotools' ``Params.setDetParams``).
COCO_PARAMS: dict[str, Any] = {
    "iouThrs": np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True),
    "recThrs": np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True),
    "maxDets": [1, 10, 100],
    "areaRng": [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]],
    "areaRngLbl": ["all", "small", "medium", "large"],
}
#: Index of IoU 0.5 / 0.75 in ``COCO_PARAMS["iouThrs"]``.
_IOU_50, _IOU_75 = 0, 5


def _xywh(boxes: Tensor) -> list[list[float]]:
    """(N, 4) xyxy → [[x, y, w, h], ...] floats."""
    b = boxes.detach().cpu().double().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()


def _dataset(
    images: int, categories: list[int], per_image: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]]
) -> dict[str, Any]:
    """A COCO dataset dict: images ``0..images-1``; per image (boxes xyxy, labels, scores or None, crowd or None)."""
    anns: list[dict[str, Any]] = []
    for image_id, (boxes, labels, scores, crowd) in enumerate(per_image):
        for k, (box, label) in enumerate(zip(_xywh(boxes), labels.tolist(), strict=True)):
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(label), "bbox": box}
            ann["area"] = box[2] * box[3]
            ann["iscrowd"] = int(crowd[k]) if crowd is not None else 0
            if scores is not None:
                ann["score"] = float(scores[k])
            anns.append(ann)
    return {
        "images": [{"id": i} for i in range(images)],
        "categories": [{"id": c} for c in categories],
        "annotations": anns,
    }


def _coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _mean(values: np.ndarray) -> float:
    """COCOeval.summarize's mean: over the defined (> -1) entries, -1 when there is none."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def evaluate_coco(ground_truth: dict[str, Any], detections: dict[str, Any]) -> Any:
    """Run ``COCOeval`` (boxes, :data:`COCO_PARAMS`) on two COCO dataset dicts; the evaluated ``COCOeval``."""
    from pycocotools.cocoeval import COCOeval

    gt, dt = _coco(ground_truth), _coco(detections)
    evaluator = COCOeval(gt, dt, iouType="bbox")
    for name, value in COCO_PARAMS.items():
        setattr(evaluator.params, name, value.copy() if isinstance(value, np.ndarray) else list(value))
    evaluator.params.imgIds = sorted(gt.getImgIds())
    evaluator.params.catIds = sorted(gt.getCatIds())
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


class CocoEvalMAP(SyncListsOnce, Metric):
    """COCO mAP by pycocotools' ``COCOeval`` (see the module docstring for the settings).

    ``update(preds, targets)`` takes what torchmetrics' ``MeanAveragePrecision`` takes: per image
    ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}`` and ``{"boxes": (N, 4) xyxy,
    "labels": (N,), "iscrowd": (N,) optional}``. ``compute()`` returns its keys: ``map``, ``map_50``,
    ``map_75``, ``mar_100`` (-1 when undefined), ``map_per_class`` and ``classes`` (K,), and
    ``precision`` (T=10, R=101, K, A=4, M=3).
    """

    full_state_update = False
    detection_box: list[Tensor]
    detection_scores: list[Tensor]
    detection_labels: list[Tensor]
    groundtruth_box: list[Tensor]
    groundtruth_labels: list[Tensor]
    groundtruth_crowds: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in (
            "detection_box",
            "detection_scores",
            "detection_labels",
            "groundtruth_box",
            "groundtruth_labels",
            "groundtruth_crowds",
        ):
            self.add_state(name, default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        for p in preds:
            self.detection_box.append(p["boxes"].detach().reshape(-1, 4).float())
            self.detection_scores.append(p["scores"].detach().reshape(-1).float())
            self.detection_labels.append(p["labels"].detach().reshape(-1).long())
        for t in targets:
            labels = t["labels"].detach().reshape(-1).long()
            self.groundtruth_box.append(t["boxes"].detach().reshape(-1, 4).float())
            self.groundtruth_labels.append(labels)
            self.groundtruth_crowds.append(t.get("iscrowd", torch.zeros_like(labels)).detach().reshape(-1).long())

    def compute(self) -> dict[str, Tensor]:
        labels = self.detection_labels + self.groundtruth_labels
        classes = sorted(torch.cat(labels).unique().tolist()) if labels and torch.cat(labels).numel() else []
        n = len(self.groundtruth_box)
        gt = _dataset(
            n,
            classes,
            [
                (b, lab, None, c)
                for b, lab, c in zip(
                    self.groundtruth_box, self.groundtruth_labels, self.groundtruth_crowds, strict=True
                )
            ],
        )
        dt = _dataset(
            n,
            classes,
            [
                (b, lab, s, None)
                for b, lab, s in zip(self.detection_box, self.detection_labels, self.detection_scores, strict=True)
            ],
        )
        if not classes:
            empty = torch.tensor(-1.0)
            return {
                "map": empty,
                "map_50": empty,
                "map_75": empty,
                "mar_100": empty,
                "map_per_class": torch.zeros(0),
                "classes": torch.zeros(0, dtype=torch.int64),
                "precision": -torch.ones(10, 101, 0, 4, 3),
            }
        evaluator = evaluate_coco(gt, dt)
        precision = evaluator.eval["precision"]  # (T, R, K, A, M): area "all" = 0, maxDets 100 = -1
        recall = evaluator.eval["recall"]  # (T, K, A, M)
        return {
            "map": torch.tensor(_mean(precision[:, :, :, 0, -1])),
            "map_50": torch.tensor(_mean(precision[_IOU_50, :, :, 0, -1])),
            "map_75": torch.tensor(_mean(precision[_IOU_75, :, :, 0, -1])),
            "mar_100": torch.tensor(_mean(recall[:, :, 0, -1])),
            "map_per_class": torch.tensor([_mean(precision[:, :, k, 0, -1]) for k in range(len(classes))]),
            "classes": torch.tensor(classes, dtype=torch.int64),
            "precision": torch.from_numpy(precision.copy()),
        }
