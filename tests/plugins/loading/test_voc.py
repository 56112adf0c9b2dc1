"""The voc loading stage: 1-based boxes, classes, difficult, split lists, and its errors.

The shipped files (tests/assets/detection/voc, written by make_assets.py), 1-based inclusive boxes:
000001.jpg 64×48: dog (11, 21, 15, 26) difficult 0, person (1, 1, 64, 48) difficult 1;
000002.jpg 32×32: cat (5, 9, 20, 30), no <difficult> tag;   000003.jpg 40×40: no objects.
ImageSets/Main: train.txt = 000001, 000002; val.txt = 000003.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vision_pipe import DataError, Loader, Pipeline, StageError
from vision_pipe.registry import make_entry
from vision_pipe.testing import check_loader
from vision_pipe_plugins.loading import voc as plugin
from vision_pipe_plugins.loading.voc import VOC_CLASSES, voc

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "detection" / "voc"
DOG, PERSON, CAT = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")


def load(root: Path = ASSETS, **params: Any):
    return voc(root, **params).load("detection")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of the shipped VOC folder."""
    return Path(shutil.copytree(ASSETS, tmp_path / "VOC"))


def edit_xml(root: Path, stem: str, old: str, new: str) -> Path:
    """Replace ``old`` (which must occur) by ``new`` in ``Annotations/<stem>.xml``."""
    path = root / "Annotations" / f"{stem}.xml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def bad_sample(root: Path, split: str = "train", index: int = 0, **params: Any) -> str:
    """The message of the DataError reading one sample; the other samples of the split still load."""
    src = load(root, **params).splits[split]
    for i in range(len(src)):
        if i != index:
            src[i]
    with pytest.raises(DataError) as info:
        src[index]
    return str(info.value)


# -- parsing ------------------------------------------------------------------


def test_registered_as_loading_stage() -> None:
    assert plugin.vision_pipe_stages() == [voc]
    info = voc.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "voc")
    loader = voc(Path("anything"))
    assert isinstance(loader, Loader) and loader.tasks == ("detection",)


def test_keeps_the_loader_contract() -> None:
    check_loader(voc, "detection", root=ASSETS)


def test_default_classes_are_the_20_voc_classes() -> None:
    data = load()
    assert data.class_names == list(VOC_CLASSES) and len(data.class_names) == 20
    assert data.class_names[0] == "aeroplane" and data.class_names[-1] == "tvmonitor"


def test_split_lists_give_the_splits() -> None:
    splits = load().splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1}
    assert splits["train"][1]["id"] == str(ASSETS / "JPEGImages" / "000002.jpg")
    assert splits["val"][0]["id"] == str(ASSETS / "JPEGImages" / "000003.jpg")


def test_one_based_boxes_become_pixel_edges_and_difficult_is_kept() -> None:
    s = load().splits["train"][0]
    assert s["image"].shape == (48, 64, 3) and s["image"].dtype == np.uint8
    # dog (11, 21, 15, 26) → (10, 20, 15, 26); person (1, 1, 64, 48) → the whole image (0, 0, 64, 48)
    np.testing.assert_array_equal(s["boxes"], [[10, 20, 15, 26], [0, 0, 64, 48]])
    assert s["boxes"].dtype == np.float32
    assert s["labels"].tolist() == [DOG, PERSON] and s["labels"].dtype == np.int64
    assert s["difficult"].tolist() == [False, True]


def test_missing_difficult_tag_means_not_difficult() -> None:
    s = load().splits["train"][1]
    np.testing.assert_array_equal(s["boxes"], [[4, 8, 20, 30]])
    assert s["labels"].tolist() == [CAT] and s["difficult"].tolist() == [False]


def test_the_image_shows_the_annotated_box() -> None:
    s = load().splits["train"][1]
    x1, y1, x2, y2 = s["boxes"][0].astype(int)
    inside = s["image"][y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].astype(int)  # JPEG: away from the edges
    assert np.abs(inside - (230, 60, 60)).max() < 20


def test_xml_without_objects_is_an_image_without_objects() -> None:
    s = load().splits["val"][0]
    assert s["image"].shape == (40, 40, 3)
    assert s["boxes"].shape == (0, 4) and s["labels"].shape == (0,) and s["difficult"].shape == (0,)


def test_keep_difficult_false_leaves_them_out() -> None:
    s = load(keep_difficult=False).splits["train"][0]
    np.testing.assert_array_equal(s["boxes"], [[10, 20, 15, 26]])
    assert s["labels"].tolist() == [DOG] and s["difficult"].tolist() == [False]


def test_zero_based_coordinates_are_taken_as_edges() -> None:
    s = load(one_based=False).splits["train"][0]
    np.testing.assert_array_equal(s["boxes"], [[11, 21, 15, 26], [1, 1, 64, 48]])


def test_own_classes() -> None:
    data = load(classes=["person", "dog", "cat"])
    assert data.class_names == ["person", "dog", "cat"]
    assert data.splits["train"][0]["labels"].tolist() == [1, 0]
    assert data.splits["train"][1]["labels"].tolist() == [2]


def test_fractional_coordinates(root: Path) -> None:
    edit_xml(root, "000002", "<xmax>20</xmax>", "<xmax>19.5</xmax>")
    np.testing.assert_array_equal(load(root).splits["train"][1]["boxes"], [[4, 8, 19.5, 30]])


def test_png_images_are_found_by_id(root: Path) -> None:
    jpg = root / "JPEGImages" / "000002.jpg"
    shutil.copy(root / "JPEGImages" / "000003.jpg", root / "JPEGImages" / "000002.png")  # any image will do
    jpg.unlink()
    assert load(root).splits["train"][1]["id"] == str(root / "JPEGImages" / "000002.png")


def test_without_split_lists_every_xml_is_one_source(root: Path) -> None:
    shutil.rmtree(root / "ImageSets")
    splits = load(root).splits
    assert list(splits) == ["all"] and len(splits["all"]) == 3
    assert [Path(splits["all"][i]["id"]).stem for i in range(3)] == ["000001", "000002", "000003"]


def test_trainval_and_test_lists(root: Path) -> None:
    main = root / "ImageSets" / "Main"
    (main / "train.txt").unlink()
    (main / "trainval.txt").write_text("000001\n000002\n", encoding="utf-8")
    (main / "test.txt").write_text("000003\n", encoding="utf-8")
    splits = load(root).splits  # val.txt overlaps trainval.txt: not used
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 1}


def test_fingerprint_changes_with_an_xml(root: Path) -> None:
    before = load(root).splits["train"].fingerprint()
    assert load(root).splits["train"].fingerprint() == before
    edit_xml(root, "000002", "<xmax>20</xmax>", "<xmax>19</xmax>")
    assert load(root).splits["train"].fingerprint() != before
    assert load(root, keep_difficult=False).splits["train"].fingerprint() != load(root).splits["train"].fingerprint()


# -- parameters and whole-folder problems: load() ------------------------------


def test_duplicate_or_empty_classes() -> None:
    with pytest.raises(StageError, match=r"classes lists \['dog'\] more than once"):
        voc(ASSETS, classes=["dog", "cat", "dog"])
    with pytest.raises(StageError, match=r"classes must be list\[str\] \(≥ 1 item\), got \[\]"):
        make_entry(voc).build({"root": ASSETS, "classes": []})


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"VOC folder .*nope does not exist: check the loading stage's 'root'"):
        load(tmp_path / "nope")


def test_root_above_the_voc_folder_gets_a_hint(root: Path, tmp_path: Path) -> None:
    shutil.move(root, tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DataError, match=r"Annotations does not exist: .*did you mean .*VOCdevkit/VOC2012\?"):
        load(tmp_path)


def test_missing_images_folder(root: Path) -> None:
    shutil.rmtree(root / "JPEGImages")
    with pytest.raises(DataError, match=r"VOC image folder .*JPEGImages does not exist"):
        load(root)


def test_no_annotations(root: Path) -> None:
    shutil.rmtree(root / "ImageSets")
    for xml in (root / "Annotations").glob("*.xml"):
        xml.unlink()
    with pytest.raises(DataError, match=r"Annotations holds no \.xml annotation files"):
        load(root)


def test_split_lists_without_a_training_list(root: Path) -> None:
    (root / "ImageSets" / "Main" / "train.txt").unlink()
    with pytest.raises(DataError, match=r"has val\.txt but no train\.txt or trainval\.txt"):
        load(root)


def test_empty_split_list(root: Path) -> None:
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"split list .*val\.txt is empty"):
        load(root)


# -- bad samples: __getitem__ names the XML and the object ----------------------


def test_missing_image_file(root: Path) -> None:
    (root / "JPEGImages" / "000002.jpg").unlink()
    message = bad_sample(root, index=1)
    assert f"cannot read image {root / 'JPEGImages' / '000002.jpg'}: file is missing" in message
    assert str(root / "Annotations" / "000002.xml") in message
    assert "put the image 000002.jpg (or .jpeg, .png, .bmp) into" in message


def test_missing_xml_of_a_listed_id(root: Path) -> None:
    (root / "Annotations" / "000002.xml").unlink()
    message = bad_sample(root, index=1)
    assert f"annotation file {root / 'Annotations' / '000002.xml'} is missing" in message
    assert "train.txt" in message and "remove the id from the list" in message


def test_invalid_xml_names_file_and_line(root: Path) -> None:
    edit_xml(root, "000002", "</bndbox>", "</bndbx>")
    message = bad_sample(root, index=1)
    assert f"{root / 'Annotations' / '000002.xml'}:19:6: invalid XML (mismatched tag" in message


def test_class_not_in_classes(root: Path) -> None:
    edit_xml(root, "000001", "<name>person</name>", "<name>persn</name>")
    message = bad_sample(root)
    assert str(root / "Annotations" / "000001.xml") in message
    assert "object 2 ('persn'): class 'persn' is not in classes (the 20 VOC classes)" in message
    assert "Did you mean 'person'?" in message and "Add it to the loading stage's 'classes' list" in message


def test_class_not_in_own_classes(root: Path) -> None:
    message = bad_sample(root, classes=["dog", "person"], index=1)
    assert "object 1 ('cat'): class 'cat' is not in classes (dog, person)" in message


def test_missing_coordinate(root: Path) -> None:
    edit_xml(root, "000001", "<ymax>26</ymax>", "")
    message = bad_sample(root)
    assert "object 1 ('dog'): <bndbox> lacks a number in <ymax>" in message


def test_non_numeric_coordinate(root: Path) -> None:
    edit_xml(root, "000001", "<xmin>11</xmin>", "<xmin>eleven</xmin>")
    assert "object 1 ('dog'): <bndbox> lacks a number in <xmin>" in bad_sample(root)


def test_nan_coordinate(root: Path) -> None:
    edit_xml(root, "000001", "<xmin>11</xmin>", "<xmin>nan</xmin>")
    assert "object 1 ('dog') (bndbox [nan, 21, 15, 26]): box (x1, y1, x2, y2) = [nan, 20, 15, 26] has NaN" in (
        bad_sample(root)
    )


def test_xmax_before_xmin(root: Path) -> None:
    edit_xml(root, "000001", "<xmax>15</xmax>", "<xmax>5</xmax>")
    message = bad_sample(root)
    assert "object 1 ('dog') (bndbox [11, 21, 5, 26]): box (x1, y1, x2, y2) = [10, 20, 5, 26] has x2 5 ≤ x1 10" in (
        message
    )


def test_box_outside_the_image(root: Path) -> None:
    edit_xml(root, "000001", "<xmax>64</xmax>", "<xmax>70</xmax>")  # the person box, image 64 px wide
    message = bad_sample(root)
    assert "object 2 ('person')" in message and "lies outside the 64×48 image" in message
    assert "set the loading stage's one_based: false" in message


def test_every_bad_object_is_listed_in_file_order(root: Path) -> None:
    edit_xml(root, "000001", "<name>person</name>", "<name>persn</name>")
    edit_xml(root, "000001", "<xmax>15</xmax>", "<xmax>5</xmax>")
    message = bad_sample(root)
    assert 0 < message.index("object 1 ('dog')") < message.index("object 2 ('persn')")


def test_invalid_difficult_flag(root: Path) -> None:
    edit_xml(root, "000001", "<difficult>1</difficult>", "<difficult>yes</difficult>")
    assert "object 2 ('person'): <difficult> is 'yes'; it must be 0 or 1" in bad_sample(root)


def test_object_without_name(root: Path) -> None:
    edit_xml(root, "000002", "<name>cat</name>", "")
    assert "object 1 has no <name>" in bad_sample(root, index=1)


# -- through the pipeline ------------------------------------------------------


def test_pipeline_fits_on_the_shipped_files(tiny_config: dict) -> None:
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    loader = {"name": "voc", "root": str(ASSETS), "classes": ["cat", "dog", "person"]}
    config["data"].update(loader=loader, input_size=[32, 32], augmentation=[], batch_size=4)
    config["data"]["normalization"] = {"name": "mean_image", "divide_by": "255"}
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False}
    config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(config)
    metrics = pipe.fit()
    assert pipe.class_names == ["cat", "dog", "person"]
    assert np.isfinite(metrics["train/loss"]) and "val/map" in metrics


def test_template_pipeline_builds_on_the_shipped_files() -> None:
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "voc_detection.yaml", overrides=[f"data.loader.root={ASSETS}"])
    assert pipe.config.task == "detection" and pipe.class_names == list(VOC_CLASSES)
    assert type(pipe.stages["head"]).__name__ == "SSDHead"
