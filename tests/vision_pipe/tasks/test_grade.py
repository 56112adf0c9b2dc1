"""Each task's :meth:`~vision_pipe.tasks.Task.grade` (what a report's prediction grid sorts by), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vision_pipe import ClassificationPrediction, DetectionPrediction, SegmentationPrediction
from vision_pipe.tasks import get_task

NAMES = ["circle", "square"]


def test_classification_grades_right_by_confidence_and_sure_mistakes_worst():
    task = get_task("classification")
    right = task.grade(ClassificationPrediction("a", 1, "square", 0.8), {"label": 1}, NAMES)
    wrong = task.grade(ClassificationPrediction("b", 1, "square", 0.9), {"label": 0}, NAMES)
    assert (right.score, wrong.score) == (0.8, -0.9)
    assert wrong.caption == "true circle, predicted square (0.90)"


def test_segmentation_grades_by_the_images_mean_iou_without_ignored_pixels():
    true = np.array([[0, 1], [1, 255]])
    found = np.array([[0, 1], [0, 0]])  # class 0: 1 of 2 pixels in the union; class 1: 1 of 2
    graded = get_task("segmentation").grade(SegmentationPrediction("m", found, NAMES), {"mask": true}, NAMES)
    assert graded.score == pytest.approx(0.5) and graded.caption == "image IoU 0.50"


def test_detection_grades_by_f1_at_iou_half_of_the_sure_detections():
    sample = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), "labels": np.array([0, 1])}
    pred = DetectionPrediction(
        "d",
        boxes=np.array([[0, 0, 10, 9], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
        labels=np.array([0, 0, 1]),  # the second box has the wrong class
        scores=np.array([0.9, 0.8, 0.3], np.float32),  # the third is below the report's 0.5
        class_names=["circle", "circle", "square"],
    )
    graded = get_task("detection").grade(pred, sample, NAMES)
    assert graded.score == pytest.approx(2 * 1 / (2 + 2))
    assert len(graded.shown.boxes) == 2 and graded.shown.class_names == ["circle", "circle"]
    assert graded.caption == "1 of 2 object(s) found, 2 detection(s), F1 0.50"
    empty = DetectionPrediction("e")
    assert get_task("detection").grade(empty, {"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}, NAMES).score == 1.0
