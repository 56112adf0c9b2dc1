"""The two detection metric backends (``metrics.detection``): torchmetrics' MeanAveragePrecision and our own
pycocotools COCOeval run agree with each other and with AP computed by hand on a small fixed set (three images,
two classes, a crowd region, a match good at low IoU thresholds only, a missed object)."""

from __future__ import annotations

import pytest
import torch

from vision_pipe.tasks import DETECTION

NAMES = ("a", "b")


def _t(boxes: list[list[float]], labels: list[int], scores: list[float] | None = None, crowd=None) -> dict:
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if scores is not None:
        out["scores"] = torch.tensor(scores)
    if crowd is not None:
        out["iscrowd"] = torch.tensor(crowd)
    return out


PREDS = [
    # image 0: a and b found exactly, one false a
    _t([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0, 1, 0], [0.9, 0.8, 0.7]),
    # image 1: a detection on the crowd region (ignored), and a box of IoU 0.68 with the a object
    _t([[31, 31, 60, 60], [0, 0, 20, 13.6]], [0, 0], [0.95, 0.6]),
    # image 2: nothing found
    _t([], [], []),
]
TARGETS = [
    _t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], crowd=[0, 0]),
    _t([[0, 0, 20, 20], [30, 30, 60, 60]], [0, 0], crowd=[0, 1]),
    _t([[0, 0, 30, 30]], [1], crowd=[0]),
]

# Hand-computed, 101-point interpolated precision. Class a has 2 objects; ranked detections: (crowd: ignored),
# TP (P 1, R .5), FP (P .5), at IoU <= 0.65 the IoU-0.68 box is a TP (P 2/3, R 1), above it a FP.
# Class b: 2 objects, one TP: precision 1 up to recall .5.
AP_A_LOW = (51 * 1.0 + 50 * 2 / 3) / 101  # IoU thresholds 0.50, 0.55, 0.60, 0.65
HALF = 51 / 101  # precision 1 on recalls 0..0.5, 0 after
AP_A = (4 * AP_A_LOW + 6 * HALF) / 10
EXPECTED = {
    "map_50": (AP_A_LOW + HALF) / 2,
    "map_75": HALF,
    "map": (AP_A + HALF) / 2,
    "mar_100": ((4 * 1.0 + 6 * 0.5) / 10 + 0.5) / 2,
    "ap_50/a": AP_A_LOW,
    "ap_50/b": HALF,
    "ap/a": AP_A,
    "ap/b": HALF,
}


def _summary(backend: str) -> dict[str, float]:
    metrics = DETECTION.make_metrics(len(NAMES), backend=backend)
    metrics.update(PREDS, TARGETS)
    return DETECTION.summarize(metrics.compute(), NAMES, None)


@pytest.mark.parametrize("backend", ["torchmetrics", "pycocotools"])
def test_backend_equals_hand_computed_ap(backend: str) -> None:
    summary = _summary(backend)
    for key, value in EXPECTED.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key


def test_backends_agree_to_1e3_on_every_key() -> None:
    torchmetrics_summary, coco_summary = _summary("torchmetrics"), _summary("pycocotools")
    assert set(torchmetrics_summary) == set(coco_summary)
    for key, value in torchmetrics_summary.items():
        assert coco_summary[key] == pytest.approx(value, abs=1e-3), key


def test_pycocotools_backend_without_any_box_gives_nan() -> None:
    metrics = DETECTION.make_metrics(2, backend="pycocotools")
    metrics.update([_t([], [], [])], [_t([], [])])
    summary = DETECTION.summarize(metrics.compute(), NAMES, None)
    assert all(v != v for v in summary.values())  # NaN everywhere: nothing to measure
