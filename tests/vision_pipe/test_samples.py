"""vision_pipe.samples: the one sample contract, checked against hand-made samples."""

from __future__ import annotations

import numpy as np
import pytest

from vision_pipe import DataError, box_iou, box_problem, check_boxes, check_image, check_label, check_mask


def test_box_iou_by_hand() -> None:
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)  # intersection 1, union 4 + 4 - 1
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ([0, 0, 4, 4], None),
        ([-1, -1, 11, 9], None),  # within the 1-px tolerance
        ([5, 1, 5, 4], "has x2 5 ≤ x1 5 (no width)"),
        ([1, 4, 3, 2], "has y2 2 ≤ y1 4 (no height)"),
        ([0, 0, float("nan"), 4], "NaN"),
        ([0, 0, 12, 4], "lies outside the 10×8 image"),
    ],
)
def test_box_problem(box: list[float], problem: str | None) -> None:
    found = box_problem(box, width=10, height=8)
    assert found is None if problem is None else (found is not None and problem in found)


def test_check_boxes_rules() -> None:
    ok = {"boxes": np.array([[1, 1, 3, 3]], np.float32), "labels": np.array([1]), "difficult": np.array([True])}
    check_boxes(ok, (8, 10), 2, "s")
    check_boxes({"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}, (8, 10), 2, "s")
    with pytest.raises(DataError, match="box 0 .* has label 2, not a class index"):
        check_boxes({**ok, "labels": np.array([2])}, (8, 10), 2, "s")
    with pytest.raises(DataError, match="1 boxes but 2 labels"):
        check_boxes({**ok, "labels": np.array([0, 1])}, (8, 10), 2, "s")
    with pytest.raises(DataError, match="'difficult' must be an \\(N,\\) = \\(1,\\) bool array"):
        check_boxes({**ok, "difficult": np.array([1])}, (8, 10), 2, "s")


def test_image_label_and_mask_rules() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    assert check_image(image, "s") is image
    with pytest.raises(DataError, match="s: the image is a float32 array"):
        check_image(image.astype(np.float32), "s")
    assert check_label(np.int64(1), 2, "s") == 1
    for bad in (True, 2, -1, 1.0):
        with pytest.raises(DataError, match="s: "):
            check_label(bad, 2, "s")
    mask = np.zeros((4, 5), np.int64)
    mask[0, 0] = 255  # ignored
    check_mask(mask, (4, 5), 2, "s")
    with pytest.raises(DataError, match="is 4x5 but its image is 4x6"):
        check_mask(mask, (4, 6), 2, "s")
    mask[1, 1] = 3
    with pytest.raises(DataError, match="mask values 3 are not class ids"):
        check_mask(mask, (4, 5), 2, "s")
