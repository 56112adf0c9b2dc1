"""The detection task: box targets through albumentations and collation, metrics (hand-computed mAP,
``difficult`` objects ignored, original-image pixels), summary, AP files, COCO results, description;
and a second detection head that gets all of it in a real run without writing any of it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from second_head import run_second_head
from torch import Tensor, nn

from vision_pipe import Batch, DetectionPrediction, Features, Head, StageContext, stage
from vision_pipe.config import BoxRules
from vision_pipe.data import collate, transform_sample
from vision_pipe.tasks import DETECTION, task_of_prediction

NAMES = ("a", "b", "c")


def _batch(boxes: list[list[list[float]]], labels: list[list[int]], size: int = 32, orig=None) -> Batch:
    n = len(boxes)
    return {
        "image": torch.zeros(n, 3, size, size),
        "boxes": [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        "labels": [torch.tensor(lab, dtype=torch.int64) for lab in labels],
        "meta": [{"id": f"img{i}", "orig_size": orig or (size, size)} for i in range(n)],
    }


def _detections(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> dict[str, Tensor]:
    """One image's detections in the evaluation form (model-input pixels)."""
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores or [0.99] * len(labels)),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


# ----------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------


def test_boxes_follow_the_transform_and_collate_per_image() -> None:
    import albumentations as A

    sample = {
        "id": "s",
        "image": np.zeros((20, 40, 3), np.uint8),
        "boxes": np.array([[0, 0, 10, 10], [30, 5, 40, 15]], np.float32),
        "labels": np.array([1, 2]),
    }
    flip = DETECTION.compose([A.HorizontalFlip(p=1.0)])
    item = transform_sample(sample, DETECTION, flip, (20, 40))
    assert item["boxes"].tolist() == [[30.0, 0.0, 40.0, 10.0], [0.0, 5.0, 10.0, 15.0]]
    assert item["labels"].tolist() == [1, 2] and item["difficult"].tolist() == [False, False]
    empty = transform_sample({**sample, "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}, DETECTION, flip, (20, 40))
    batch = collate([item, empty])
    assert [b.shape[0] for b in batch["boxes"]] == [2, 0] and len(batch["difficult"]) == 2
    # the box rules drop what a crop leaves too little of; without rules nothing is dropped
    crop = [A.Crop(0, 0, 12, 20, p=1.0), A.Resize(20, 40)]
    partly = {**sample, "boxes": np.array([[0, 0, 10, 10], [8, 5, 40, 15]], np.float32)}  # 4 of 32 px stay
    kept = transform_sample(partly, DETECTION, DETECTION.compose(crop, BoxRules(min_visibility=0.3)), (20, 40))
    assert kept["labels"].tolist() == [1]
    assert transform_sample(partly, DETECTION, DETECTION.compose(crop), (20, 40))["labels"].tolist() == [1, 2]


# ----------------------------------------------------------------------------
# metrics and summary
# ----------------------------------------------------------------------------


def test_metrics_hand_computed_with_difficult_objects_ignored(tmp_path: Path) -> None:
    # model input 16 px, original 64 px: ground truth and detections in input pixels
    batch = _batch([[[0, 0, 4, 4], [8, 8, 16, 16], [0, 8, 8, 16]]], [[0, 2, 1]], size=16, orig=(64, 64))
    outputs = [_detections([[0, 0, 4, 4], [8, 8, 16, 16]], [0, 2])]  # a and c found exactly; b missed

    metrics = DETECTION.make_metrics(3)
    DETECTION.update_metrics(metrics, outputs, batch)
    summary = DETECTION.summarize(metrics.compute(), NAMES, tmp_path / "plots")
    assert summary["ap_50/a"] == pytest.approx(1.0) and summary["ap_50/c"] == pytest.approx(1.0)
    assert summary["ap_50/b"] == pytest.approx(0.0)
    assert summary["map_50"] == pytest.approx(2 / 3, abs=1e-6)
    assert summary["map"] == pytest.approx(2 / 3, abs=1e-6)  # the hits are exact at every IoU
    assert (tmp_path / "plots" / "precision_recall.png").is_file()
    assert (tmp_path / "plots" / "ap_per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "plots" / "ap_per_class.csv").read_text().splitlines()
    assert rows[0] == "class,ap_50,ap" and rows[2] == "b,0.0000,0.0000"

    # the missed object flagged difficult is ignored, as in Pascal VOC: b has no ground truth left
    batch["difficult"] = [torch.tensor([False, False, True])]
    metrics = DETECTION.make_metrics(3)
    DETECTION.update_metrics(metrics, outputs, batch)
    summary = DETECTION.summarize(metrics.compute(), NAMES, None)
    assert math.isnan(summary["ap_50/b"]) and math.isnan(summary["ap/b"])
    assert summary["map_50"] == pytest.approx(1.0)
    assert summary["map"] == pytest.approx(1.0)
    assert set(summary) == {"map", "map_50", "map_75", "mar_100"} | {f"ap{s}/{n}" for s in ("", "_50") for n in NAMES}


def test_metrics_compare_in_original_pixels() -> None:
    batch = _batch([[[4, 4, 8, 12]]], [[1]], size=16, orig=(40, 80))
    metrics = DETECTION.make_metrics(3)
    DETECTION.update_metrics(metrics, [_detections([[4, 4, 8, 12]], [1])], batch)
    state = metrics["map"]  # torchmetrics keeps boxes as xywh for pycocotools
    # both × (80/16, 40/16)
    torch.testing.assert_close(state.detection_box[0], torch.tensor([[20.0, 10.0, 20.0, 20.0]]))
    torch.testing.assert_close(state.groundtruth_box[0], torch.tensor([[20.0, 10.0, 20.0, 20.0]]))


# ----------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------


def test_coco_results_and_description(tmp_path: Path) -> None:
    preds = [
        DetectionPrediction("x.png", np.array([[1, 2, 11, 7]], np.float32), np.array([2]), np.array([0.5], np.float32), ["c"]),
        DetectionPrediction("y.png"),
    ]
    assert task_of_prediction(preds[0]) is DETECTION
    (path,) = DETECTION.write_predictions(preds, tmp_path)
    assert path == tmp_path / "detections_coco.json"
    assert json.loads(path.read_text()) == [
        {"image_id": 0, "file_name": "x.png", "category_id": 2, "category_name": "c", "bbox": [1.0, 2.0, 10.0, 5.0], "score": 0.5}
    ]
    assert DETECTION.describe(preds[0]) == "x.png: 1 object(s)"
    assert DETECTION.describe(preds[1]) == "y.png: 0 object(s)"


# ----------------------------------------------------------------------------
# a second detection head inherits evaluation
# ----------------------------------------------------------------------------


class CellProbe(Head):
    """A second detection head: one class score (background included) per cell of the coarsest map,
    the cell its box; only forward, loss, decode and evaluation_outputs."""

    task = "detection"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score = nn.Conv2d(channels, num_classes + 1, 1)

    def forward(self, features: Features) -> Tensor:
        return self.score(list(features.maps.values())[-1])  # (B, C + 1, h, w)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        b, _, h, w = outputs.shape
        size_h, size_w = batch["image"].shape[-2:]
        target = torch.zeros(b, h, w, dtype=torch.int64, device=outputs.device)
        for i, (boxes, labels) in enumerate(zip(batch["boxes"], batch["labels"], strict=True)):
            for box, label in zip(boxes, labels, strict=True):
                cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
                target[i, min(int(cy * h / size_h), h - 1), min(int(cx * w / size_w), w - 1)] = int(label) + 1
        return {"loss": F.cross_entropy(outputs, target)}

    def evaluation_outputs(self, outputs: Tensor, batch: Batch) -> list[dict[str, Tensor]]:
        _, _, h, w = outputs.shape
        size_h, size_w = batch["image"].shape[-2:]
        probs = outputs.detach().float().softmax(dim=1)
        scores, classes = probs[:, 1:].max(dim=1)  # (B, h, w): the best object class per cell
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cells = torch.stack([xs * size_w / w, ys * size_h / h, (xs + 1) * size_w / w, (ys + 1) * size_h / h], -1)
        cells = cells.reshape(-1, 4).float().to(outputs.device)
        return [
            {"boxes": cells, "scores": scores[i].reshape(-1), "labels": classes[i].reshape(-1)}
            for i in range(outputs.shape[0])
        ]

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[DetectionPrediction]:
        size_h, size_w = batch["image"].shape[-2:]
        predictions = []
        for det, meta in zip(self.evaluation_outputs(outputs, batch), batch["meta"], strict=True):
            oh, ow = meta["orig_size"]
            scale = torch.tensor([ow / size_w, oh / size_h, ow / size_w, oh / size_h])
            labels = det["labels"].cpu().numpy()
            predictions.append(
                DetectionPrediction(
                    meta["id"],
                    (det["boxes"].cpu() * scale).numpy(),
                    labels,
                    det["scores"].cpu().numpy(),
                    [class_names[int(i)] for i in labels],
                )
            )
        return predictions


@stage("head", "second")
def cell_probe(context: StageContext) -> CellProbe:
    assert context.feature_info is not None
    return CellProbe(context.feature_info[-1].channels, context.num_classes)


def test_a_second_head_gets_the_metrics_summary_and_plots(tmp_path: Path) -> None:
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(CellProbe))
    pipe, metrics = run_second_head(cell_probe, "detection", tmp_path)
    names = pipe.class_names
    expected = {"test/map", "test/map_50", "test/map_75", "test/mar_100"}
    expected |= {f"test/ap{s}/{n}" for s in ("", "_50") for n in names}
    assert expected <= set(metrics)
    assert 0.0 <= metrics["test/map"] <= metrics["test/map_50"] <= 1.0
    saved = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert saved["test/map_50"] == pytest.approx(metrics["test/map_50"]) and "val/map_50" in saved
    plots = pipe.run_dir / "plots" / "test"
    rows = (plots / "ap_per_class.csv").read_text().splitlines()
    assert rows[0] == "class,ap_50,ap" and [r.split(",")[0] for r in rows[1:]] == names
    assert (plots / "precision_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
