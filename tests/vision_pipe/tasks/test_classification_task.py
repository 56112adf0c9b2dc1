"""The classification task: metrics (hand-computed), summary, confusion-matrix files, description;
and a second classification head that gets all of it in a real run without writing any of it."""

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
    ClassificationPrediction,
    Features,
    Head,
    StageContext,
    stage,
)
from vision_pipe.tasks import CLASSIFICATION, get_task

NAMES6 = ("a", "b", "c", "d", "e", "f")


def ranked_logits(order: list[int]) -> list[float]:
    """Logits whose classes rank as ``order`` (best first): 5, 4, 3, ..."""
    logits = [0.0] * len(order)
    for rank, cls in enumerate(order):
        logits[cls] = float(len(order) - 1 - rank)
    return logits


# Hand-made evaluation set, 6 classes, 7 samples: (true label, class ranking best first).
#   top-1 right: samples 0, 1, 3, 5               → 4/7
#   top-5 right: all but sample 4 (true class last) → 6/7
SAMPLES = [
    (0, [0, 1, 2, 3, 4, 5]),
    (1, [1, 0, 2, 3, 4, 5]),
    (2, [0, 2, 1, 3, 4, 5]),  # predicted a, true c ranked 2nd
    (3, [3, 0, 1, 2, 4, 5]),
    (4, [1, 0, 2, 3, 5, 4]),  # predicted b, true e ranked last
    (0, [0, 5, 1, 2, 3, 4]),
    (5, [2, 0, 5, 1, 3, 4]),  # predicted c, true f ranked 3rd
]
# confusion[true][pred]
EXPECTED_CONFMAT = [
    [2, 0, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0],
]


def evaluate() -> dict[str, Tensor]:
    logits = torch.tensor([ranked_logits(order) for _, order in SAMPLES])
    labels = torch.tensor([label for label, _ in SAMPLES])
    metrics = CLASSIFICATION.make_metrics(6)
    # two batches, to check that the metrics accumulate
    CLASSIFICATION.update_metrics(metrics, logits[:3], {"label": labels[:3]})
    CLASSIFICATION.update_metrics(metrics, logits[3:], {"label": labels[3:]})
    return metrics.compute()


# ----------------------------------------------------------------------------
# metrics and summary
# ----------------------------------------------------------------------------


def test_metrics_hand_computed() -> None:
    computed = evaluate()
    assert set(computed) == {"acc", "acc_top5", "confmat"}
    assert float(computed["acc"]) == pytest.approx(4 / 7)
    assert float(computed["acc_top5"]) == pytest.approx(6 / 7)
    assert computed["confmat"].tolist() == EXPECTED_CONFMAT


def test_top5_is_top_num_classes_for_few_classes() -> None:
    metrics = CLASSIFICATION.make_metrics(3)
    CLASSIFICATION.update_metrics(metrics, torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]), {"label": torch.tensor([0, 0])})
    computed = metrics.compute()
    assert float(computed["acc"]) == pytest.approx(0.5)
    assert float(computed["acc_top5"]) == pytest.approx(1.0)


def test_summarize_without_plots() -> None:
    summary = CLASSIFICATION.summarize(evaluate(), NAMES6, None)
    expected = {
        "acc": 4 / 7,
        "acc_top5": 6 / 7,
        "error": 3 / 7,
        "error_top5": 1 / 7,
        "acc/a": 1.0,
        "acc/b": 1.0,
        "acc/c": 0.0,
        "acc/d": 1.0,
        "acc/e": 0.0,
        "acc/f": 0.0,
    }
    assert set(summary) == set(expected)
    for key, value in expected.items():
        assert isinstance(summary[key], float)
        assert summary[key] == pytest.approx(value), key


def test_summarize_class_without_samples_is_nan() -> None:
    computed = {
        "acc": torch.tensor(0.75),
        "acc_top5": torch.tensor(1.0),
        "confmat": torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]]),
    }
    summary = CLASSIFICATION.summarize(computed, ("a", "b", "c"), None)
    assert summary["acc/a"] == pytest.approx(0.75)
    assert math.isnan(summary["acc/b"]) and math.isnan(summary["acc/c"])


def test_summarize_writes_confusion_csv_and_png(tmp_path: Path) -> None:
    plots_dir = tmp_path / "plots" / "test"  # does not exist yet
    CLASSIFICATION.summarize(evaluate(), NAMES6, plots_dir)

    with (plots_dir / "confusion_matrix.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == list(NAMES6)
    assert [row[0] for row in rows[1:]] == list(NAMES6)
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == EXPECTED_CONFMAT

    image = cv2.imread(str(plots_dir / "confusion_matrix.png"))
    assert image is not None
    height, width, channels = image.shape
    assert channels == 3
    assert 300 <= height <= 2000 and 300 <= width <= 2000
    assert image.std() > 10  # not blank


def test_summarize_png_with_many_classes(tmp_path: Path) -> None:
    names = tuple(f"class{i}" for i in range(31))
    computed = {"acc": torch.tensor(1.0), "acc_top5": torch.tensor(1.0), "confmat": torch.diag(torch.arange(31))}
    CLASSIFICATION.summarize(computed, names, tmp_path)
    assert cv2.imread(str(tmp_path / "confusion_matrix.png")) is not None


# ----------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------


def test_describe_and_draw() -> None:
    pred = ClassificationPrediction(id="x.png", label=1, class_name="b", score=0.875, scores=np.zeros(3, np.float32))
    assert CLASSIFICATION.describe(pred) == "x.png: b (0.875)"
    image = np.full((20, 30, 3), 100, np.uint8)
    drawn = CLASSIFICATION.draw(image, pred)
    assert drawn.shape[0] >= 256 and drawn.dtype == np.uint8
    assert (drawn[:24] < 100).any() and (drawn[:24] == 255).any()  # a black bar with white text
    assert get_task("classification") is CLASSIFICATION


# ----------------------------------------------------------------------------
# a second classification head inherits evaluation
# ----------------------------------------------------------------------------


class LinearProbe(Head):
    """A second classification head: only forward, loss and decode."""

    task = "classification"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, features: Features) -> Tensor:
        return self.linear(list(features.maps.values())[-1].amax(dim=(2, 3)))

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(outputs, batch["label"])}

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[ClassificationPrediction]:
        probs = outputs.softmax(dim=1).cpu().numpy()
        return [
            ClassificationPrediction(meta["id"], int(p.argmax()), class_names[int(p.argmax())], float(p.max()), p)
            for p, meta in zip(probs, batch["meta"], strict=True)
        ]


@stage("head", "second")
def linear_probe(context: StageContext) -> LinearProbe:
    assert context.feature_info is not None
    return LinearProbe(context.feature_info[-1].channels, context.num_classes)


def test_a_second_head_gets_the_metrics_summary_and_plots(tmp_path: Path) -> None:
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(LinearProbe))
    pipe, metrics = run_second_head(linear_probe, "classification", tmp_path)
    names = pipe.class_names
    expected = {"test/acc", "test/acc_top5", "test/error", "test/error_top5", *(f"test/acc/{n}" for n in names)}
    assert expected <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["test/error"] == pytest.approx(1.0 - metrics["test/acc"])
    saved = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"]) and "val/acc" in saved
    plots = pipe.run_dir / "plots" / "test"
    rows = (plots / "confusion_matrix.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[1:] == names
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == len(pipe.splits["test"])
    assert cv2.imread(str(plots / "confusion_matrix.png")) is not None
