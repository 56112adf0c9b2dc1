"""Paths read from annotation files stay inside their dataset folder (issue #11, section 1).

A COCO ``file_name``, a VOC image id from ``ImageSets/Main/*.txt`` or a
``mask_folder`` split-list line that is absolute or climbs out with ``..`` is a
DataError of that sample (naming the file and the entry), so the pre-flight pass
stops on it or, under ``on_bad_sample: skip``, leaves it out; the other samples
load. A link inside the dataset folder is fine. (``yolo`` takes no paths from its
files: label paths are derived from the listed images.)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from vision_pipe import DataError, resolve_inside
from vision_pipe.preflight import apply_report, run_preflight
from vision_pipe_plugins.loading.coco import coco
from vision_pipe_plugins.loading.mask_folder import mask_folder
from vision_pipe_plugins.loading.voc import voc

ROOT = Path(__file__).resolve().parents[3]
COCO = ROOT / "tests" / "assets" / "detection" / "coco"
VOC = ROOT / "tests" / "assets" / "detection" / "voc"
SEG = ROOT / "tests" / "assets" / "segmentation"


@pytest.mark.parametrize("entry", ["../secret.png", "a/../../secret.png", "/etc/passwd", "..", "a/b/../../../x"])
def test_resolve_inside_refuses_paths_that_leave_the_root(tmp_path: Path, entry: str) -> None:
    with pytest.raises(DataError, match=rf"list.txt: line 3: '{entry}' points outside {tmp_path}"):
        resolve_inside(tmp_path, entry, "list.txt: line 3")


@pytest.mark.parametrize("entry", ["a.png", "sub/a.png", "sub/../a.png", "./a.png", "..a.png"])
def test_resolve_inside_keeps_paths_inside_the_root(tmp_path: Path, entry: str) -> None:
    assert resolve_inside(tmp_path, entry, "x") == tmp_path / entry


def _coco_dataset(tmp_path: Path, names: dict[int, str]) -> Path:
    """The shipped COCO dataset copied to ``tmp_path/data`` with some ``file_name``s replaced."""
    data_dir = Path(shutil.copytree(COCO / "images", tmp_path / "data"))
    doc = copy.deepcopy(json.loads((COCO / "instances.json").read_text(encoding="utf-8")))
    for img in doc["images"]:
        img["file_name"] = names.get(img["id"], img["file_name"])
    path = data_dir / "instances.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["../outside.png", "/abs/outside.png"])
def test_coco_file_name_outside_the_images_folder_is_a_sample_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.png").write_bytes((COCO / "images" / "a.png").read_bytes())  # would decode if read
    json_path = _coco_dataset(tmp_path, {1: name})
    source = coco(json_path).load("detection").splits["all"]
    with pytest.raises(DataError, match=rf"instances.json: image id 1: file_name: '{name}' points outside"):
        source[0]
    assert source[1]["boxes"].shape == (2, 4)  # the other images load

    # pre-flight: an error naming the JSON and the entry; under on_bad_sample: skip, the sample is left out
    report = run_preflight({"all": source}, "detection", 3, 0, use_cache=False)
    assert len(report.bad) == 1 and str(json_path) in report.bad[0].reason and name in report.bad[0].reason
    with pytest.raises(DataError, match="points outside"):
        apply_report({"all": source}, report, "error")
    assert len(apply_report({"all": source}, report, "skip")["all"]) == len(source) - 1


def test_coco_links_inside_the_images_folder_are_fine(tmp_path: Path) -> None:
    elsewhere = Path(shutil.copytree(COCO / "images", tmp_path / "disk"))
    json_path = _coco_dataset(tmp_path, {1: "linked/a.png"})
    os.symlink(elsewhere, json_path.parent / "linked")
    source = coco(json_path).load("detection").splits["all"]
    assert source[0]["image"].shape == (48, 64, 3)


def test_voc_split_list_id_outside_the_dataset_is_a_sample_error(tmp_path: Path) -> None:
    root = Path(shutil.copytree(VOC, tmp_path / "VOC"))
    (tmp_path / "evil.xml").write_text((root / "Annotations" / "000001.xml").read_text(encoding="utf-8"))
    listed = root / "ImageSets" / "Main" / "train.txt"
    listed.write_text("../../evil\n000002\n", encoding="utf-8")
    source = voc(root).load("detection").splits["train"]
    with pytest.raises(DataError, match=rf"{listed}: image id '../../evil': '../../evil.xml' points outside"):
        source[0]
    assert source[1]["labels"].shape == (1,)
    assert source.fingerprint()  # never reads the entry outside


def test_mask_folder_split_line_outside_the_folders_is_a_sample_error(tmp_path: Path) -> None:
    listed = tmp_path / "train.txt"
    listed.write_text("scene_0\n../images/scene_1\n/etc/passwd\n", encoding="utf-8")
    source = mask_folder(
        SEG / "images", SEG / "masks", classes=["background", "circle", "square"], split_files={"train": listed}
    ).load("segmentation")
    train = source.splits["train"]
    assert train[0]["mask"].shape == (40, 48)
    with pytest.raises(DataError, match=rf"{listed}:2: '../images/scene_1': '../images/scene_1' points outside"):
        train[1]
    with pytest.raises(DataError, match=rf"{listed}:3: '/etc/passwd'.* points outside"):
        train[2]
