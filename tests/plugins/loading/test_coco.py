"""The coco loading stage: bbox conversion, category mapping, crowd, splits, and its errors.

The shipped files (tests/assets/detection/coco, written by make_assets.py):
categories ids 3 "cat", 1 "dog", 7 "bird" → labels by sorted id: dog 0, cat 1, bird 2;
a.png 64×48 (id 1): ann 10 cat [10, 20, 5, 6], ann 11 bird [30, 4, 32, 40];
b.png 32×32 (id 2): ann 12 dog [4, 4, 8, 8], ann 13 dog [16, 16, 12, 14] iscrowd;
c.png 40×40 (id 5): no annotations.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vision_pipe import DataError, Loader, Pipeline, StageError
from vision_pipe.testing import check_loader
from vision_pipe_plugins.loading import coco as plugin
from vision_pipe_plugins.loading.coco import coco

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "detection" / "coco"
SHIPPED = json.loads((ASSETS / "instances.json").read_text(encoding="utf-8"))


def load(annotations: Path, images: Path | None = None, **params: Any):
    return coco(annotations, images, **params).load("detection")


def shipped(**params: Any):
    return load(ASSETS / "instances.json", ASSETS / "images", **params)


@pytest.fixture
def dataset(tmp_path: Path):
    """``write(edit)``: a copy of the shipped dataset whose JSON is ``edit(json)``; returns the JSON path.

    The images lie next to the JSON (in ``tmp_path``), its default images folder."""

    def write(edit=lambda data: None, name: str = "instances.json") -> Path:
        if not (tmp_path / "a.png").exists():
            shutil.copytree(ASSETS / "images", tmp_path, dirs_exist_ok=True)
        data = copy.deepcopy(SHIPPED)
        edit(data)
        path = tmp_path / name
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return path

    return write


def annotation(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


# -- parsing ------------------------------------------------------------------


def test_registered_as_loading_stage() -> None:
    assert plugin.vision_pipe_stages() == [coco]
    info = coco.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "coco")
    loader = coco(Path("x.json"))
    assert isinstance(loader, Loader) and loader.tasks == ("detection",)


def test_keeps_the_loader_contract() -> None:
    check_loader(coco, "detection", annotations=ASSETS / "instances.json", images=ASSETS / "images")


def test_category_ids_become_contiguous_labels_sorted_by_id() -> None:
    data = shipped()
    assert data.class_names == ["dog", "cat", "bird"]  # ids 1, 3, 7
    assert list(data.splits) == ["all"]
    assert len(data.splits["all"]) == 3


def test_xywh_becomes_xyxy_pixels() -> None:
    a = shipped().splits["all"][0]
    assert a["id"] == str(ASSETS / "images" / "a.png")
    assert a["image"].shape == (48, 64, 3) and a["image"].dtype == np.uint8
    # [10, 20, 5, 6] → [10, 20, 15, 26]; [30, 4, 32, 40] → [30, 4, 62, 44]
    np.testing.assert_array_equal(a["boxes"], [[10, 20, 15, 26], [30, 4, 62, 44]])
    assert a["boxes"].dtype == np.float32
    assert a["labels"].tolist() == [1, 2] and a["labels"].dtype == np.int64  # cat, bird
    assert a["difficult"].tolist() == [False, False]


def test_the_image_shows_the_annotated_box() -> None:
    a = shipped().splits["all"][0]
    x1, y1, x2, y2 = a["boxes"][0].astype(int)
    assert (a["image"][y1:y2, x1:x2] == (230, 60, 60)).all()  # drawn by make_assets.py over exactly the box
    assert (a["image"][y1 - 1, x1] == 128).all() and (a["image"][y1, x2] == 128).all()


def test_crowd_is_difficult_by_default() -> None:
    b = shipped().splits["all"][1]
    np.testing.assert_array_equal(b["boxes"], [[4, 4, 12, 12], [16, 16, 28, 30]])
    assert b["labels"].tolist() == [0, 0]
    assert b["difficult"].tolist() == [False, True]


def test_crowd_drop_and_object() -> None:
    dropped = shipped(crowd="drop").splits["all"][1]
    np.testing.assert_array_equal(dropped["boxes"], [[4, 4, 12, 12]])
    assert dropped["difficult"].tolist() == [False]
    kept = shipped(crowd="object").splits["all"][1]
    assert len(kept["boxes"]) == 2 and kept["difficult"].tolist() == [False, False]


def test_image_without_annotations_has_no_objects() -> None:
    c = shipped().splits["all"][2]
    assert c["image"].shape == (40, 40, 3)
    assert c["boxes"].shape == (0, 4) and c["boxes"].dtype == np.float32
    assert c["labels"].shape == (0,) and c["labels"].dtype == np.int64
    assert c["difficult"].shape == (0,) and c["difficult"].dtype == bool


def test_file_without_annotations_key(dataset) -> None:
    src = load(dataset(lambda d: d.pop("annotations"))).splits["all"]  # an image_info file: no objects
    assert [len(src[i]["boxes"]) for i in range(3)] == [0, 0, 0]


def test_images_default_to_the_json_folder(tmp_path: Path) -> None:
    shutil.copytree(ASSETS / "images", tmp_path, dirs_exist_ok=True)  # Roboflow-style: the JSON among the images
    shutil.copy(ASSETS / "instances.json", tmp_path / "_annotations.coco.json")
    src = coco(tmp_path / "_annotations.coco.json").load("detection").splits["all"]
    assert src[0]["id"] == str(tmp_path / "a.png")


def test_file_names_with_sub_folders(dataset, tmp_path: Path) -> None:
    path = dataset(lambda d: d["images"][0].update(file_name="sub/a.png"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "sub" / "a.png")
    src = load(path).splits["all"]
    assert src[0]["id"] == str(tmp_path / "sub" / "a.png")
    assert src[0]["image"].shape == (48, 64, 3)


def test_fingerprint_changes_with_the_annotations(dataset) -> None:
    path = dataset()
    before = load(path).splits["all"].fingerprint()
    assert load(path).splits["all"].fingerprint() == before
    dataset(lambda d: annotation(d, 10).update(bbox=[11, 20, 5, 6]))
    assert load(path).splits["all"].fingerprint() != before
    assert load(path, crowd="drop").splits["all"].fingerprint() != load(path).splits["all"].fingerprint()


# -- splits -------------------------------------------------------------------


def test_val_and_test_files_give_the_splits(dataset, tmp_path: Path) -> None:
    def only(image_id: int):
        def edit(d: dict) -> None:
            d["images"] = [i for i in d["images"] if i["id"] == image_id]
            d["annotations"] = [a for a in d["annotations"] if a["image_id"] == image_id]

        return edit

    train = dataset(only(1), "train.json")
    val = dataset(only(2), "val.json")
    test = dataset(only(5), "test.json")
    data = coco(train, tmp_path, val_annotations=val, val_images=tmp_path, test_annotations=test).load("detection")
    assert data.class_names == ["dog", "cat", "bird"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1, "val": 1, "test": 1}
    assert data.splits["train"][0]["id"] == str(tmp_path / "a.png")
    assert data.splits["val"][0]["labels"].tolist() == [0, 0]
    assert data.splits["test"][0]["id"] == str(tmp_path / "c.png")  # test_images: the test JSON's folder


def test_val_file_must_declare_the_same_categories(dataset) -> None:
    train = dataset(name="train.json")
    val = dataset(lambda d: d["categories"][0].update(name="kitten"), "val.json")
    with pytest.raises(DataError, match=r"val\.json: category 3: 'kitten' differs from .*train\.json \(3: 'cat'\)"):
        load(train, val_annotations=val)


def test_val_images_without_val_annotations() -> None:
    with pytest.raises(StageError, match="val_images is set but val_annotations is not"):
        coco(Path("a.json"), val_images=Path("val"))


# -- whole-file problems: load() ----------------------------------------------


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"COCO annotation file .*nope\.json does not exist: check .*'annotations'"):
        load(tmp_path / "nope.json")


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "categories": [,]\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json:3:\d+: invalid JSON"):
        load(path)


def test_not_an_instances_file(dataset) -> None:
    with pytest.raises(DataError, match=r"not a COCO instances file .*got keys \['annotations', 'images', 'info'\]"):
        load(dataset(lambda d: d.pop("categories")))


def test_missing_images_folder(dataset, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"COCO images folder .*pictures does not exist: set .*'images'"):
        load(dataset(), tmp_path / "pictures")


def test_empty_dataset(dataset) -> None:
    with pytest.raises(DataError, match="'images' is empty"):
        load(dataset(lambda d: d.update(images=[], annotations=[])))


def test_annotation_of_an_unlisted_image(dataset) -> None:
    with pytest.raises(DataError, match=r"annotation id 12 \(image_id 99\)"):
        load(dataset(lambda d: annotation(d, 12).update(image_id=99)))


def test_unhashable_ids_are_errors_not_crashes(dataset) -> None:
    with pytest.raises(DataError, match=r"annotation id 12 \(image_id \[2\]\)"):
        load(dataset(lambda d: annotation(d, 12).update(image_id=[2])))
    message = bad_sample(dataset, lambda d: annotation(d, 10).update(category_id=[3]))
    assert "annotation id 10: category_id [3] is not declared" in message


def test_duplicate_category_name(dataset) -> None:
    with pytest.raises(DataError, match=r"\['dog'\] are declared under several ids"):
        load(dataset(lambda d: d["categories"][0].update(name="dog")))


# -- bad samples: __getitem__ names the JSON, the image and the annotation -----


def bad_sample(dataset, edit, index: int = 0) -> str:
    """The message of the DataError reading sample ``index`` of the edited dataset; the others still load."""
    src = load(dataset(edit)).splits["all"]
    for i in range(len(src)):
        if i != index:
            src[i]
    with pytest.raises(DataError) as info:
        src[index]
    return str(info.value)


def test_missing_image_file(dataset, tmp_path: Path) -> None:
    path = dataset()
    (tmp_path / "b.png").unlink()
    src = load(path).splits["all"]
    with pytest.raises(DataError) as info:
        src[1]
    message = str(info.value)
    assert f"cannot read image {tmp_path / 'b.png'}: file is missing" in message
    assert f"{path}: image id 2" in message
    assert f"images folder (now {tmp_path}) at the folder that holds 'b.png'" in message
    assert src[0]["image"].shape == (48, 64, 3)  # one missing image is one bad sample


def test_undeclared_category(dataset) -> None:
    message = bad_sample(dataset, lambda d: annotation(d, 10).update(category_id=99))
    assert "instances.json: image id 1" in message
    assert "annotation id 10: category_id 99 is not declared in 'categories'" in message
    assert "declared: 1 'dog', 3 'cat', 7 'bird'" in message


def test_negative_width_names_the_annotation(dataset) -> None:
    message = bad_sample(dataset, lambda d: annotation(d, 11).update(bbox=[30, 4, -5, 40]))
    assert "annotation id 11: 'bbox' [30, 4, -5, 40] has width -5 and height 40; both must be > 0" in message
    assert "not [x1, y1, x2, y2]" in message


def test_nan_in_bbox(dataset) -> None:
    message = bad_sample(dataset, lambda d: annotation(d, 12).update(bbox=[4, float("nan"), 8, 8]), index=1)
    assert "image id 2" in message and "annotation id 12: 'bbox' [4, nan, 8, 8] holds a NaN" in message


def test_malformed_bbox(dataset) -> None:
    message = bad_sample(dataset, lambda d: annotation(d, 10).update(bbox=[10, 20, 5]))
    assert "annotation id 10: 'bbox' is [10, 20, 5]; it must be [x, y, width, height]" in message


def test_box_outside_the_image(dataset) -> None:
    # a.png is 64×48: [60, 20, 10, 6] → x2 = 70 > 64 + 1 px tolerance
    message = bad_sample(dataset, lambda d: annotation(d, 10).update(bbox=[60, 20, 10, 6]))
    assert "annotation id 10 (bbox [60, 20, 10, 6]): box (x1, y1, x2, y2) = [60, 20, 70, 26]" in message
    assert "outside the 64×48 image" in message


def test_box_within_one_pixel_of_the_border_is_kept(dataset) -> None:
    # x + w = 64.5: half a pixel past a 64 px wide image is rounding, as the pre-flight check allows
    src = load(dataset(lambda d: annotation(d, 11).update(bbox=[30, 4, 34.5, 40]))).splits["all"]
    np.testing.assert_array_equal(src[0]["boxes"][1], [30, 4, 64.5, 44])  # passed on as written, not clipped


def test_every_bad_annotation_of_an_image_is_listed(dataset) -> None:
    def edit(d: dict) -> None:
        annotation(d, 10).update(category_id=42)
        annotation(d, 11).update(bbox=[30, 4, 0, 40])

    message = bad_sample(dataset, edit)
    assert "annotation id 10: category_id 42" in message and "annotation id 11: 'bbox'" in message


def test_dropped_crowd_annotations_are_not_checked(dataset) -> None:
    src = load(dataset(lambda d: annotation(d, 13).update(bbox=[0, 0, -1, -1])), crowd="drop").splits["all"]
    assert len(src[1]["boxes"]) == 1


# -- through the pipeline ------------------------------------------------------


def detection_config(tiny_config: dict, loader: dict) -> dict:
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    config["data"].update(loader=loader, input_size=[32, 32], augmentation=[], batch_size=4)
    config["data"]["normalization"] = {"name": "mean_image", "divide_by": "255"}
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False}
    config["trainer"]["max_epochs"] = 1
    return config


def test_pipeline_skips_and_counts_a_bad_sample(tiny_config: dict, dataset) -> None:
    path = dataset(lambda d: annotation(d, 12).update(category_id=99))  # b.png is bad
    loader = {"name": "coco", "annotations": str(path)}
    config = detection_config(tiny_config, loader)
    with pytest.raises(DataError, match=r"(?s)1 bad sample.*image id 2 .*annotation id 12: category_id 99"):
        Pipeline.from_dict(config).preflight()
    config["data"]["on_bad_sample"] = "skip"
    config["data"]["split"] = [0.5, 0.5, 0.0]
    pipe = Pipeline.from_dict(config)
    report = pipe.preflight()
    assert len(report.bad) == 1 and "annotation id 12" in report.bad[0].reason
    assert sum(len(s) for s in pipe.splits.values()) == 2


def test_pipeline_fits_on_the_shipped_files(tiny_config: dict) -> None:
    loader = {"name": "coco", "annotations": str(ASSETS / "instances.json"), "images": str(ASSETS / "images")}
    pipe = Pipeline.from_dict(detection_config(tiny_config, loader))
    metrics = pipe.fit()
    assert np.isfinite(metrics["train/loss"]) and "val/map" in metrics


def test_template_pipeline_builds_on_the_shipped_files() -> None:
    files = {"annotations": ASSETS / "instances.json", "val_annotations": ASSETS / "instances.json"}
    overrides = [f"data.loader.{k}={v}" for k, v in files.items()]
    overrides += [f"data.loader.{k}={ASSETS / 'images'}" for k in ("images", "val_images")]
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "coco_detection.yaml", overrides=overrides)
    assert pipe.config.task == "detection" and pipe.class_names == ["dog", "cat", "bird"]
    assert type(pipe.stages["head"]).__name__ == "SSDHead"
