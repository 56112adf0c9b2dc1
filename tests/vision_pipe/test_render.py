"""Drawing and writing predictions (what ``vision-pipe predict --out`` leaves on disk)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from vision_pipe.classes import voc_palette
from vision_pipe.drawing import class_palette
from vision_pipe.render import render_prediction, write_predictions
from vision_pipe.results import DetectionPrediction, SegmentationPrediction


def test_voc_palette_first_colours() -> None:
    assert voc_palette(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert class_palette(3, [(1, 2, 3), (4, 5, 6)])[:3].tolist() == [[1, 2, 3], [4, 5, 6], [0, 128, 0]]


def test_segmentation_overlay_uses_class_colours_and_leaves_class_0() -> None:
    image = np.full((300, 300, 3), 100, np.uint8)
    mask = np.zeros((300, 300), np.int64)
    mask[:, 150:] = 1
    pred = SegmentationPrediction(id="x", mask=mask, class_names=["bg", "thing"])
    drawn = render_prediction(image, pred, [(0, 0, 0), (200, 0, 0)])
    assert drawn[10, 10].tolist() == [100, 100, 100]
    assert drawn[10, 200].tolist() == [150, 50, 50]  # half image, half the class colour


def test_write_predictions_segmentation_masks_at_original_size(tmp_path: Path) -> None:
    images = [np.zeros((7, 9, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    masks = [np.arange(63).reshape(7, 9) % 3, np.full((5, 4), 2)]
    preds = [SegmentationPrediction(id=f"in/{n}.jpg", mask=m, class_names=["a", "b", "c"]) for n, m in zip("xy", masks, strict=True)]
    records = write_predictions(images, preds, tmp_path / "out", ["x", "x"], None)
    assert [Path(r["mask"]).name for r in records] == ["x_mask.png", "x-1_mask.png"]  # repeated stems kept apart
    for record, mask in zip(records, masks, strict=True):
        written = cv2.imread(record["mask"], cv2.IMREAD_UNCHANGED)
        assert written.dtype == np.uint8 and np.array_equal(written, mask)
        assert Path(record["annotated"]).is_file()
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert saved[1]["pixels_per_class"] == {"c": 20}
    assert not (tmp_path / "out" / "detections_coco.json").exists()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind


def test_write_predictions_detection_coco_results(tmp_path: Path) -> None:
    pred = DetectionPrediction(
        id="imgs/a.png",
        boxes=np.array([[10, 20, 15, 26], [0, 0, 4, 2]], np.float32),
        labels=np.array([1, 0]),
        scores=np.array([0.9, 0.25], np.float32),
        class_names=["cat", "dog"],
    )
    write_predictions([np.zeros((40, 40, 3), np.uint8)], [pred], tmp_path, ["a"], None)
    coco = json.loads((tmp_path / "detections_coco.json").read_text())
    assert coco == [
        {"image_id": 0, "file_name": "imgs/a.png", "category_id": 1, "category_name": "cat", "bbox": [10.0, 20.0, 5.0, 6.0], "score": 0.9},
        {"image_id": 0, "file_name": "imgs/a.png", "category_id": 0, "category_name": "dog", "bbox": [0.0, 0.0, 4.0, 2.0], "score": 0.25},
    ]
    drawn = cv2.imread(str(tmp_path / "a_pred.png"))
    assert drawn.shape[:2] == (256, 256) and drawn.any()  # upscaled for a small input, boxes drawn
