"""The yolo loading stage: normalized cxcywh → pixels, classes files, layouts, and its errors.

The shipped files (tests/assets/detection/yolo, written by make_assets.py), classes circle (0), square (1):
images/train/a.png 64×48, labels/train/a.txt: "1 0.5 0.5 0.25 0.5" and "0 0.125 0.25 0.25 0.5";
images/train/b.png 32×32 without a txt;  images/val/c.png 40×40 with an empty txt.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vision_pipe import DataError, Loader, Pipeline
from vision_pipe.testing import check_loader
from vision_pipe_plugins.loading import yolo as plugin
from vision_pipe_plugins.loading.yolo import default_labels, read_classes, yolo

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "detection" / "yolo"


def load(root: Path = ASSETS, classes: str = "classes.txt", **params: Any):
    return yolo(root / "images", root / classes, **params).load("detection")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the shipped YOLO folder."""
    return Path(shutil.copytree(ASSETS, tmp_path / "yolo"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def bad_a(root: Path, lines: str) -> str:
    """The message of the DataError reading a.png with ``lines`` as its labels; b.png still loads."""
    write(root / "labels" / "train" / "a.txt", lines)
    src = load(root).splits["train"]
    src[1]
    with pytest.raises(DataError) as info:
        src[0]
    message = str(info.value)
    assert f"{root / 'labels' / 'train' / 'a.txt'} (image {root / 'images' / 'train' / 'a.png'})" in message
    return message


# -- parsing ------------------------------------------------------------------


def test_registered_as_loading_stage() -> None:
    assert plugin.vision_pipe_stages() == [yolo]
    info = yolo.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "yolo")
    loader = yolo(Path("images"), Path("classes.txt"))
    assert isinstance(loader, Loader) and loader.tasks == ("detection",)


@pytest.mark.parametrize("classes", ["classes.txt", "data.yaml"])
def test_keeps_the_loader_contract(classes: str) -> None:
    check_loader(yolo, "detection", images=ASSETS / "images", classes=ASSETS / classes)


def test_split_folders_give_the_splits() -> None:
    data = load()
    assert data.class_names == ["circle", "square"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 2, "val": 1}
    assert data.splits["val"][0]["id"] == str(ASSETS / "images" / "val" / "c.png")


def test_normalized_cxcywh_become_xyxy_pixels() -> None:
    a = load().splits["train"][0]
    assert a["id"] == str(ASSETS / "images" / "train" / "a.png")
    assert a["image"].shape == (48, 64, 3) and a["image"].dtype == np.uint8
    # 64×48 image: (0.5, 0.5, 0.25, 0.5) → centre (32, 24), size (16, 24) → [24, 12, 40, 36]
    #              (0.125, 0.25, 0.25, 0.5) → centre (8, 12), size (16, 24) → [0, 0, 16, 24]
    np.testing.assert_array_equal(a["boxes"], [[24, 12, 40, 36], [0, 0, 16, 24]])
    assert a["boxes"].dtype == np.float32
    assert a["labels"].tolist() == [1, 0] and a["labels"].dtype == np.int64
    assert a["difficult"].tolist() == [False, False]


def test_the_image_shows_the_annotated_box() -> None:
    a = load().splits["train"][0]
    x1, y1, x2, y2 = a["boxes"][0].astype(int)
    assert (a["image"][y1:y2, x1:x2] == (230, 60, 60)).all()
    assert (a["image"][y2, x1] == 128).all() and (a["image"][y1, x2] == 128).all()


def test_images_without_txt_or_with_empty_txt_have_no_objects() -> None:
    splits = load().splits
    for s in (splits["train"][1], splits["val"][0]):  # b.png: no txt; c.png: empty txt
        assert s["boxes"].shape == (0, 4) and s["boxes"].dtype == np.float32
        assert s["labels"].shape == (0,) and s["difficult"].shape == (0,)


def test_blank_lines_are_skipped_and_counted(root: Path) -> None:
    write(root / "labels" / "train" / "a.txt", "\n1 0.5 0.5 0.25 0.5\n\n   \n0 0.5 0.5 2 0.5\n")
    with pytest.raises(DataError, match=r"line 5 '0 0\.5 0\.5 2 0\.5'"):
        load(root).splits["train"][0]


def test_flat_layout_is_one_source(tmp_path: Path) -> None:
    shutil.copy(ASSETS / "images" / "train" / "a.png", write(tmp_path / "images" / "a.png", "").parent)
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 1 1\n")
    write(tmp_path / "classes.txt", "thing\n")
    data = load(tmp_path)
    assert list(data.splits) == ["all"] and data.class_names == ["thing"]
    np.testing.assert_array_equal(data.splits["all"][0]["boxes"], [[0, 0, 64, 48]])


def test_txt_next_to_the_image_without_an_images_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir()
    shutil.copy(ASSETS / "images" / "train" / "a.png", folder / "a.png")
    write(folder / "a.txt", "0 0.5 0.5 1 1\n")
    write(tmp_path / "classes.txt", "thing\n")
    src = yolo(folder, tmp_path / "classes.txt").load("detection").splits["all"]
    np.testing.assert_array_equal(src[0]["boxes"], [[0, 0, 64, 48]])


def test_labels_folder_parameter(root: Path) -> None:
    shutil.move(root / "labels", root / "annotations")
    data = load(root, labels=root / "annotations")
    assert len(data.splits["train"][0]["boxes"]) == 2


def test_default_labels_folder() -> None:
    assert default_labels(Path("data/images")) == Path("data/labels")
    assert default_labels(Path("/x/images/set/images/train")) == Path("/x/images/set/labels/train")
    assert default_labels(Path("data/pictures")) == Path("data/pictures")


def test_valid_is_the_val_split(root: Path) -> None:
    (root / "images" / "val").rename(root / "images" / "valid")
    (root / "labels" / "val").rename(root / "labels" / "valid")
    assert {k: len(v) for k, v in load(root).splits.items()} == {"train": 2, "val": 1}


def test_fingerprint_changes_with_a_label_file(root: Path) -> None:
    before = load(root).splits["train"].fingerprint()
    assert load(root).splits["train"].fingerprint() == before
    write(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.25 0.25\n")
    assert load(root).splits["train"].fingerprint() != before


# -- classes files ---------------------------------------------------------------


def test_classes_txt_and_data_yaml_agree() -> None:
    assert read_classes(ASSETS / "classes.txt") == read_classes(ASSETS / "data.yaml") == ["circle", "square"]


def test_data_yaml_with_a_names_list(tmp_path: Path) -> None:
    assert read_classes(write(tmp_path / "d.yml", "names: [a, b, c]\nnc: 3\n")) == ["a", "b", "c"]


def test_classes_txt_trailing_blank_lines(tmp_path: Path) -> None:
    assert read_classes(write(tmp_path / "c.txt", "a\n b \n\n\n")) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("c.txt", "a\n\nb\n", r"c\.txt:2: empty line"),
        ("c.txt", "a\nb\na\n", r"class name\(s\) \['a'\] appear more than once"),
        ("c.txt", "\n", "no class names"),
        ("d.yaml", "names: {0: a, 2: b}\n", r"'names': class ids must be 0, 1, \.\.\., C-1 without gaps; given \[0, 2\], missing \[1\]"),
        ("d.yaml", "train: images/train\n", "key 'train' is not a class id .* or a mapping with 'names:'"),
        ("d.yaml", "names: [a, b\nnc: 2\n", r"d\.yaml:\d+: invalid YAML"),
    ],
)
def test_bad_classes_file(tmp_path: Path, name: str, text: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        read_classes(write(tmp_path / name, text))


def test_missing_classes_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"YOLO classes file .*names\.txt does not exist: set .*'classes'"):
        yolo(ASSETS / "images", tmp_path / "names.txt").load("detection")


# -- whole-folder problems: load() -------------------------------------------------


def test_missing_images_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"YOLO images folder .*images does not exist"):
        load(tmp_path)


def test_split_folder_without_images(root: Path) -> None:
    shutil.rmtree(root / "images" / "val")
    (root / "images" / "val").mkdir()
    with pytest.raises(DataError, match=r"images/val holds no images"):
        load(root)


def test_images_outside_the_split_folders(root: Path) -> None:
    shutil.copy(root / "images" / "train" / "a.png", root / "images" / "stray.png")
    with pytest.raises(DataError, match=r"has split folders \(train/\) and images outside them \(e\.g\. .*stray\.png\)"):
        load(root)


def test_no_label_files_at_all(root: Path) -> None:
    shutil.rmtree(root / "labels")
    expected = root / "labels" / "train" / "a.txt"
    with pytest.raises(DataError, match=rf"no label file found for any image .*has its labels in {expected}"):
        load(root)


def test_missing_labels_folder_parameter(root: Path) -> None:
    with pytest.raises(DataError, match=r"YOLO labels folder .*nope does not exist: check .*'labels'"):
        load(root, labels=root / "nope")


# -- bad samples: __getitem__ names the txt and the line ------------------------------


def test_missing_image_file(root: Path) -> None:
    src = load(root).splits["train"]
    (root / "images" / "train" / "a.png").unlink()
    with pytest.raises(DataError, match=r"cannot read image .*a\.png: file is missing \(.*a\.txt"):
        src[0]


def test_malformed_line(root: Path) -> None:
    message = bad_a(root, "1 0.5 0.5 0.25 0.5\n0 0.5 0.5 0.25\n")
    assert "line 2 '0 0.5 0.5 0.25' has 4 values; expected 5: class cx cy w h" in message
    assert "line 1" not in message


def test_polygon_line(root: Path) -> None:
    message = bad_a(root, "0 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9\n")
    assert "has 9 values; expected 5: class cx cy w h (polygon / segmentation labels are not supported)" in message


def test_value_that_is_not_a_number(root: Path) -> None:
    assert "line 1 'circle 0.5 0.5 0.2 0.2' holds a value that is not a number" in bad_a(root, "circle 0.5 0.5 0.2 0.2")


def test_undeclared_class(root: Path) -> None:
    message = bad_a(root, "1 0.5 0.5 0.25 0.5\n2 0.5 0.5 0.25 0.5\n")
    assert f"line 2 '2 0.5 0.5 0.25 0.5': class 2 is not declared in {root / 'classes.txt'} (2 classes, ids 0..1)" in (
        message
    )
    assert "add its name to the classes file" in message


def test_nan_value(root: Path) -> None:
    assert "line 1 '0 nan 0.5 0.2 0.2' holds a NaN or infinite value" in bad_a(root, "0 nan 0.5 0.2 0.2\n")


def test_pixel_coordinates_instead_of_normalized(root: Path) -> None:
    message = bad_a(root, "0 32 24 16 24\n")
    assert "cx cy w h must be normalized to [0, 1] by the image size (64×48)" in message
    assert "divide cx and w by 64, cy and h by 48" in message


def test_box_outside_the_image(root: Path) -> None:
    # centre x 0.1·64 = 6.4, width 0.5·64 = 32 → x1 = -9.6: beyond the 1 px tolerance
    message = bad_a(root, "0 0.1 0.5 0.5 0.5\n")
    assert "line 1 (cx cy w h [0.1, 0.5, 0.5, 0.5]): box (x1, y1, x2, y2) = [-9.6, 12, 22.4, 36]" in message
    assert "lies outside the 64×48 image" in message


def test_empty_box(root: Path) -> None:
    assert "has x2 32 ≤ x1 32 (no width)" in bad_a(root, "0 0.5 0.5 0 0.5\n")


# -- through the pipeline ------------------------------------------------------------


def test_pipeline_fits_on_the_shipped_files(tiny_config: dict) -> None:
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    loader = {"name": "yolo", "images": str(ASSETS / "images"), "classes": str(ASSETS / "data.yaml")}
    config["data"].update(loader=loader, input_size=[32, 32], augmentation=[], batch_size=4)
    config["data"]["normalization"] = {"name": "mean_image", "divide_by": "255"}
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False}
    config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(config)
    metrics = pipe.fit()
    assert pipe.class_names == ["circle", "square"]
    assert np.isfinite(metrics["train/loss"]) and "val/map" in metrics
