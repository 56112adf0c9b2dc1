"""The segmentation task: sample tensors, metrics (hand-computed IoU), summary, IoU files, mask files,
description; and a second segmentation head that gets all of it in a real run without writing any of it."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from second_head import run_second_head
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    Features,
    Head,
    SegmentationPrediction,
    StageContext,
    stage,
)
from vision_pipe.data import collate, transform_sample
from vision_pipe.tasks import SEGMENTATION, task_of_item, task_of_prediction
from vision_pipe.tasks.segmentation import compact_mask

NAMES = ("background", "a", "b")


# ----------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------


def test_masks_go_through_albumentations_and_the_batch_compact() -> None:
    mask = np.zeros((6, 8), np.int64)
    mask[1:3, 2:5] = 2
    mask[5] = 255
    assert compact_mask(mask).dtype == np.uint8
    assert compact_mask(np.full((2, 2), 300)).dtype == np.int32
    sample = {"id": "s", "image": np.zeros((6, 8, 3), np.uint8), "mask": mask}
    item = transform_sample(sample, SEGMENTATION, SEGMENTATION.compose([]), (6, 8))
    assert item["mask"].dtype == torch.uint8 and item["mask"].tolist() == mask.tolist()
    assert task_of_item(item) is SEGMENTATION
    batch = collate([item, item])
    assert batch["mask"].shape == (2, 6, 8) and batch["mask"].tolist() == [mask.tolist()] * 2


# ----------------------------------------------------------------------------
# metrics and summary
# ----------------------------------------------------------------------------


def test_metrics_give_the_hand_computed_iou() -> None:
    # prediction and target over 6 pixels (one target pixel ignored):
    pred = torch.tensor([[[0, 0, 1, 1, 1, 0]]])
    target = torch.tensor([[[0, 1, 1, 1, 255, 0]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()  # (1, 3, 1, 6)
    metrics = SEGMENTATION.make_metrics(3)
    SEGMENTATION.update_metrics(metrics, logits, {"mask": target})
    out = SEGMENTATION.summarize(metrics.compute(), NAMES, None)
    # class 0: pred {0,1,5}, target {0,5} → 2/3; class 1: pred {2,3}, target {1,2,3} → 2/3 (pixel 4 ignored);
    # class 2: absent from both → NaN, left out of the mean
    assert out["iou/background"] == pytest.approx(2 / 3)
    assert out["iou/a"] == pytest.approx(2 / 3)
    assert math.isnan(out["iou/b"])
    assert out["miou"] == pytest.approx(2 / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 5)


def test_the_ignore_index_is_a_parameter_of_the_metrics() -> None:
    pred = torch.tensor([[[0, 1]]])
    target = torch.tensor([[[0, 2]]])  # pixel 0 right, pixel 1 wrong
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    metrics = SEGMENTATION.make_metrics(3, ignore_index=0)  # pixel 0 not counted
    SEGMENTATION.update_metrics(metrics, logits, {"mask": target})
    assert float(metrics.compute()["pixel_acc"]) == pytest.approx(0.0)
    metrics = SEGMENTATION.make_metrics(3)
    SEGMENTATION.update_metrics(metrics, logits, {"mask": target})
    assert float(metrics.compute()["pixel_acc"]) == pytest.approx(0.5)


def test_summarize_writes_the_per_class_iou_as_csv_and_bar_chart(tmp_path: Path) -> None:
    computed = {"iou": torch.tensor([0.5, 0.25, math.nan]), "pixel_acc": torch.tensor(0.75)}
    out = SEGMENTATION.summarize(computed, NAMES, tmp_path / "plots")
    assert out["miou"] == pytest.approx(0.375)  # (0.5 + 0.25) / 2, NaN left out
    with (tmp_path / "plots" / "iou_per_class.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["id", "class", "iou"],
        ["0", "background", "0.500000"],
        ["1", "a", "0.250000"],
        ["2", "b", "nan"],
    ]
    png = (tmp_path / "plots" / "iou_per_class.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    again = SEGMENTATION.summarize(computed, NAMES, None)  # no plots_dir: nothing written, same numbers
    assert math.isnan(again.pop("iou/b")) and math.isnan(out.pop("iou/b"))
    assert again == out


# ----------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------


def test_mask_file_and_description(tmp_path: Path) -> None:
    mask = np.zeros((5, 7), np.int64)
    mask[1:3, 1:4] = 2
    pred = SegmentationPrediction(id="x.png", mask=mask, class_names=list(NAMES))
    assert task_of_prediction(pred) is SEGMENTATION
    record = SEGMENTATION.write_prediction(pred, tmp_path, "x")
    assert record == {"mask": str(tmp_path / "x_mask.png")}
    written = cv2.imread(record["mask"], cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint8 and written.tolist() == mask.tolist()
    assert SEGMENTATION.describe(pred) == "x.png: {'background': 29, 'b': 6}"


# ----------------------------------------------------------------------------
# a second segmentation head inherits evaluation
# ----------------------------------------------------------------------------


class PixelProbe(Head):
    """A second segmentation head: a 1×1 conv on the finest map, bilinearly upsampled; only forward, loss, decode."""

    task = "segmentation"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        finest = next(iter(features.maps.values()))
        return F.interpolate(self.score(finest), scale_factor=2, mode="bilinear", align_corners=False)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(outputs, batch["mask"], ignore_index=255)}

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[SegmentationPrediction]:
        labels = outputs.argmax(dim=1, keepdim=True).float()
        return [
            SegmentationPrediction(
                meta["id"],
                F.interpolate(labels[i : i + 1], size=tuple(meta["orig_size"]), mode="nearest")[0, 0].long().numpy(),
                list(class_names),
            )
            for i, meta in enumerate(batch["meta"])
        ]


@stage("head", "second")
def pixel_probe(context: StageContext) -> PixelProbe:
    assert context.feature_info is not None
    return PixelProbe(context.feature_info[0].channels, context.num_classes)


def test_a_second_head_gets_the_metrics_summary_and_plots(tmp_path: Path) -> None:
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(PixelProbe))
    pipe, metrics = run_second_head(pixel_probe, "segmentation", tmp_path)
    names = pipe.class_names
    assert names[0] == "background"
    assert {"test/miou", "test/pixel_acc", *(f"test/iou/{n}" for n in names)} <= set(metrics)
    assert 0.0 <= metrics["test/pixel_acc"] <= 1.0
    saved = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert saved["test/miou"] == pytest.approx(metrics["test/miou"]) and "val/miou" in saved
    plots = pipe.run_dir / "plots" / "test"
    with (plots / "iou_per_class.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "class", "iou"] and [r[1] for r in rows[1:]] == names
    assert (plots / "iou_per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
