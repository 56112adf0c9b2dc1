"""The csv_list loading stage: path,label lists and GTSRB's GT-*.csv, ROI crops, and its errors.

The shipped sample (tests/assets/classification/gtsrb, written by make_gtsrb.py): 3 classes,
4 training images per class in Final_Training/Images/0000<c>/ with GT-0000<c>.csv, 6 test images
with Final_Test/Images/GT-final_test.csv; ``;``-separated, ROI x2/y2 exclusive.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vision_pipe import DataError, Pipeline, StageError, read_image
from vision_pipe.cli import main
from vision_pipe.testing import check_loader
from vision_pipe_plugins.loading import csv_list as plugin
from vision_pipe_plugins.loading.csv_list import csv_list, sniff_delimiter

ROOT = Path(__file__).resolve().parents[3]
GTSRB = ROOT / "tests" / "assets" / "classification" / "gtsrb"
LISTS = {"train": "Final_Training/Images/*/GT-*.csv", "test": "Final_Test/Images/GT-final_test.csv"}


def load(root: Path = GTSRB, **params: Any):
    params.setdefault("lists", LISTS)
    return csv_list(root, **params).load("classification")


def error_of(source: Any, index: int) -> str:
    with pytest.raises(DataError) as info:
        source[index]
    return str(info.value)


def write_list(root: Path, text: str, name: str = "labels.csv") -> Path:
    """A ``path,label`` list in ``root`` and the 4×4 images it names (``a.png``, ``b.png``, ``sub/c.png``)."""
    for rel in ("a.png", "b.png", "sub/c.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GTSRB / "Final_Test" / "Images" / "00000.ppm", root / rel)
    (root / name).write_text(text, encoding="utf-8")
    return root / name


def test_registered_and_passes_the_loader_check() -> None:
    assert plugin.vision_pipe_stages() == [csv_list]
    info = csv_list.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "csv_list")
    check_loader(csv_list, "classification", root=GTSRB, lists=LISTS, crop_roi=True)


def test_gtsrb_layout_splits_labels_and_roi_crop() -> None:
    data = load(crop_roi=True)
    assert data.class_names == ["0", "1", "2"] and sorted(data.splits) == ["test", "train"]
    train, test = data.splits["train"], data.splits["test"]
    assert len(train) == 12 and len(test) == 6
    assert [train[i]["label"] for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert [test[i]["label"] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    # first test row: 00000.ppm;19;16;2;3;16;13;0 → image[3:13, 2:16]
    sample = test[0]
    full = read_image(GTSRB / "Final_Test" / "Images" / "00000.ppm")
    assert full.shape == (16, 19, 3)
    assert sample["image"].shape == (10, 14, 3) and np.array_equal(sample["image"], full[3:13, 2:16])
    assert sample["id"] == str(GTSRB / "Final_Test" / "Images" / "00000.ppm")
    uncropped = load(crop_roi=False).splits["test"][0]["image"]
    assert np.array_equal(uncropped, full)


def test_path_label_list_with_names_header_and_subfolders(tmp_path: Path) -> None:
    write_list(tmp_path, "path,label\na.png,dog\n\nsub/c.png,cat\nb.png,dog\n")
    data = load(tmp_path, lists={"all": "*.csv"})
    src = data.splits["all"]
    assert data.class_names == ["cat", "dog"] and list(data.splits) == ["all"]
    assert [src[i]["label"] for i in range(3)] == [1, 0, 1]
    assert src[1]["id"] == str(tmp_path / "sub" / "c.png")


def test_headerless_list_tab_delimiter_and_given_classes(tmp_path: Path) -> None:
    write_list(tmp_path, "a.png\t1\nb.png\tzero\n")
    data = load(tmp_path, lists={"all": "labels.csv"}, classes=["zero", "one"])
    assert sniff_delimiter("a.png\t1") == "\t" and sniff_delimiter("x;y,z;w") == ";" and sniff_delimiter("x") == ","
    assert data.class_names == ["zero", "one"]
    assert [data.splits["all"][i]["label"] for i in range(2)] == [1, 0]
    forced = load(tmp_path, lists={"all": "labels.csv"}, delimiter=",", classes=["zero", "one"])
    assert "has no path or no label column" in error_of(forced.splits["all"], 0)


def test_fingerprint_changes_when_a_listed_image_or_the_csv_changes(tmp_path: Path) -> None:
    csv_file = write_list(tmp_path, "path,label\na.png,0\nb.png,1\n")
    first = load(tmp_path, lists={"all": "*.csv"}).splits["all"].fingerprint()
    assert load(tmp_path, lists={"all": "*.csv"}).splits["all"].fingerprint() == first
    (tmp_path / "b.png").write_bytes((tmp_path / "b.png").read_bytes() + b"\0")
    second = load(tmp_path, lists={"all": "*.csv"}).splits["all"].fingerprint()
    csv_file.write_text("path,label\na.png,0\nb.png,0\n", encoding="utf-8")
    third = load(tmp_path, lists={"all": "*.csv"}).splits["all"].fingerprint()
    assert len({first, second, third}) == 3


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("../escape.png,0", "points outside"),
        ("/etc/passwd,0", "points outside"),
        ("a.png", "has no path or no label column"),
        ("a.png,-1", "label '-1' is not a class id 0..1"),
        ("missing.png,1", "file is missing"),
    ],
)
def test_bad_rows_name_the_csv_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    csv_file = write_list(tmp_path, f"path,label\na.png,0\nb.png,1\n{row}\n")
    src = load(tmp_path, lists={"all": "*.csv"}).splits["all"]
    assert src[0]["label"] == 0 and src[1]["label"] == 1  # the other rows load
    text = error_of(src, 2)
    assert message in text and (f"{csv_file}:4" in text or message == "file is missing")


def test_roi_outside_the_image_and_bad_roi_values(tmp_path: Path) -> None:
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    csv_file = write_list(
        tmp_path, header + "a.png;19;16;2;3;20;13;0\nb.png;19;16;2;x;16;13;0\nb.png;19;16;0;0;19;16;0\n"
    )
    src = load(tmp_path, lists={"all": "*.csv"}, crop_roi=True).splits["all"]
    assert f"{csv_file}:2: the ROI (x1=2, y1=3, x2=20, y2=13) is not inside the image" in error_of(src, 0)
    assert f"{csv_file}:3: the ROI ['2', 'x', '16', '13'] is not four integers" in error_of(src, 1)
    assert src[2]["image"].shape == (16, 19, 3)  # the whole image is a valid ROI
    write_list(tmp_path, "path,label\na.png,0\n")
    with pytest.raises(DataError, match=r"labels.csv:1: crop_roi is true but the header has no roi.x1"):
        load(tmp_path, lists={"all": "*.csv"}, crop_roi=True)


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no file below"):
        load(tmp_path, lists={"all": "*.csv"})
    write_list(tmp_path, "path,label\n")
    with pytest.raises(DataError, match="have no rows"):
        load(tmp_path, lists={"all": "*.csv"})
    with pytest.raises(StageError, match="give 'all' alone"):
        csv_list(tmp_path, lists={"all": "a.csv", "test": "b.csv"})
    with pytest.raises(StageError, match="has no 'train'"):
        csv_list(tmp_path, lists={"test": "b.csv"})


# -- the template ---------------------------------------------------------------


def test_the_gtsrb_template_checks_and_fits_on_the_sample(tmp_path: Path, capsys: Any) -> None:
    template = ROOT / "pipelines" / "gtsrb_classification.yaml"
    overrides = [f"data.loader.root={GTSRB}", f"output_dir={tmp_path / 'runs'}"]
    assert main(["check", str(template), *overrides]) == 0
    out = capsys.readouterr().out
    assert "pipelines/gtsrb_classification.yaml: OK" in out and "split         train 11, val 1, test 6" in out
    tiny = [
        "model.backbone.width=4",
        "model.backbone.depth=10",
        "data.input_size=[16,16]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
    ]
    pipe = Pipeline.from_yaml(template, [*overrides, *tiny])
    metrics = pipe.fit()
    assert pipe.class_names == ["0", "1", "2"] and 0.0 <= metrics["val/acc"] <= 1.0
    assert len(pipe.splits["test"]) == 6 and pipe.splits["test"][0]["image"].shape == (10, 14, 3)  # cropped
