"""COCO results with the dataset's own ids: ``predict`` and ``test --save-json`` on the shipped COCO set (category
ids 1, 3, 7; image ids 1, 2, 5) write files that pycocotools' ``loadRes`` + ``COCOeval`` take as they are; the
category ids travel in the checkpoint and in an export's model.json; loose files get their position."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vision_pipe import DetectionPrediction, Pipeline
from vision_pipe.cli import main
from vision_pipe.export import model_info
from vision_pipe.tasks.coco_results import CocoIds, coco_results

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "detection" / "coco"
IMAGE_IDS = {"a.png": 1, "b.png": 2, "c.png": 5}


def _config(tiny_config: dict, backend: str = "torchmetrics") -> dict:
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    files = {"annotations": str(ASSETS / "instances.json"), "images": str(ASSETS / "images")}
    files |= {"test_annotations": files["annotations"], "test_images": files["images"]}
    config["data"].update(loader={"name": "coco", **files}, input_size=[32, 32], augmentation=[], batch_size=2)
    config["data"]["split"] = [0.67, 0.33, 0.0]
    config["data"]["normalization"] = {"name": "mean_image", "divide_by": "255"}
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False, "score_thresh": 0.0}
    config["trainer"]["max_epochs"] = 1
    config["metrics"] = {"detection": backend}
    return config


def _cocoeval(results: Path) -> np.ndarray:
    """pycocotools' own evaluation of ``results`` against the shipped annotation file, as a user runs it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ASSETS / "instances.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_records_carry_the_dataset_ids_or_the_position() -> None:
    boxes = np.array([[1, 2, 11, 7]], np.float32)
    preds = [
        DetectionPrediction(str(ASSETS / "images" / "c.png"), boxes, np.array([2]), np.array([0.5], np.float32), ["c"]),
        DetectionPrediction("elsewhere/x.png", boxes, np.array([0]), np.array([0.25], np.float32), ["a"]),
    ]
    ids = CocoIds([1, 3, 7], {str((ASSETS / "images" / "c.png").resolve()): 5})
    first, second = coco_results(preds, ids)
    assert (first["image_id"], first["category_id"], first["bbox"]) == (5, 7, [1.0, 2.0, 10.0, 5.0])
    assert (second["image_id"], second["category_id"]) == (1, 1)  # a loose file: its position; label 0 → id 1
    assert coco_results(preds)[0]["category_id"] == 2  # no dataset ids: the label


@pytest.mark.parametrize("backend", ["torchmetrics", "pycocotools"])
def test_test_save_json_is_read_by_cocoeval_as_it_is(tiny_config: dict, backend: str) -> None:
    pipe = Pipeline.from_dict(_config(tiny_config, backend))
    pipe.fit()
    metrics = pipe.test(save_json=True)
    path = pipe.run_dir / "detections_test_coco.json"
    records = json.loads(path.read_text())
    assert records, "the untrained SSD with score_threshold 0 finds boxes"
    assert {r["image_id"] for r in records} <= {1, 2, 5} and {r["category_id"] for r in records} <= {1, 3, 7}
    assert {r["image_id"] for r in records} == {1, 2, 5}  # every test image has detections
    stats = _cocoeval(path)  # map, map_50, map_75 by pycocotools on the file and the dataset's own JSON
    assert stats[0] == pytest.approx(metrics["test/map"], abs=1e-3)
    assert stats[1] == pytest.approx(metrics["test/map_50"], abs=1e-3)
    assert stats[2] == pytest.approx(metrics["test/map_75"], abs=1e-3)


def test_predict_and_export_carry_the_category_ids(tiny_config: dict, tmp_path: Path) -> None:
    pipe = Pipeline.from_dict(_config(tiny_config))
    pipe.fit()
    images = [str(ASSETS / "images" / name) for name in ("c.png", "a.png")]
    pipe.predict(images, out=tmp_path / "yaml")  # a pipeline with its data: the dataset's image ids
    records = json.loads((tmp_path / "yaml" / "detections_coco.json").read_text())
    assert {r["image_id"] for r in records} == {5, 1} and {r["category_id"] for r in records} <= {1, 3, 7}

    loose = tmp_path / "loose.png"
    shutil.copy(images[0], loose)
    rc = main(["predict", pipe.best_checkpoint, str(loose), images[0], "--out", str(tmp_path / "ckpt")])
    assert rc == 0
    records = json.loads((tmp_path / "ckpt" / "detections_coco.json").read_text())
    assert {r["category_id"] for r in records} <= {1, 3, 7}  # from the checkpoint
    # the loose file: its position; c.png: the dataset's id, read from the annotation file the checkpoint names
    assert {r["image_id"] for r in records} == {0, 5}

    moved = tmp_path / "moved.ckpt"  # the dataset's files gone: positions, and no failure
    shutil.copy(pipe.best_checkpoint, moved)
    gone = Pipeline.load(moved)
    gone.config.data.loader["annotations"] = str(tmp_path / "gone.json")
    gone.predict([images[1], images[0]], out=tmp_path / "gone")
    records = json.loads((tmp_path / "gone" / "detections_coco.json").read_text())
    assert {r["image_id"] for r in records} == {0, 1}
    assert Pipeline.load(pipe.best_checkpoint).coco_ids.category_ids == [1, 3, 7]
    assert model_info(pipe, ["boxes"], dynamic_batch=False)["category_ids"] == [1, 3, 7]
