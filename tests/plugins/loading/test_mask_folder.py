"""The mask_folder loading stage: matching, mask decoding, classes, splits, per-sample errors,
a tiny end-to-end run, and the two segmentation templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vision_pipe import DataError, LoadedData, Loader, StageError
from vision_pipe import voc_palette as default_colors
from vision_pipe.registry import make_entry
from vision_pipe_plugins.loading import mask_folder as plugin
from vision_pipe_plugins.loading.mask_files import MaskReader
from vision_pipe_plugins.loading.mask_folder import mask_folder

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "tests" / "assets" / "segmentation"
IMAGES, MASKS, PALETTE = ASSETS / "images", ASSETS / "masks", ASSETS / "palette_masks"
NAMES = ["background", "circle", "square"]
KEYS = [f"scene_{i}" for i in range(6)]


def scene_mask(i: int) -> np.ndarray:
    """The class ids of asset scene ``i`` (40×48), as tests/assets/segmentation/make_assets.py draws them."""
    mask = np.zeros((40, 48), np.int64)
    mask[4 + i : 16 + i, 4:20] = 255  # the border of the class-1 rectangle is 'ignore'
    mask[5 + i : 15 + i, 5:19] = 1
    mask[22:34, 24 + i : 40 + i] = 2
    return mask


def write_mask(path: Path, ids: np.ndarray, mode: str = "L", palette: list[int] | None = None) -> Path:
    """Save ``ids`` as a PNG of PIL ``mode`` (``L``, ``I;16``, ``P`` with ``palette``, ``RGB``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint16 if mode == "I;16" else np.uint8))  # I;16, L or RGB
    if mode == "P":
        image = Image.fromarray(ids.astype(np.uint8), mode="P")
    assert image.mode == mode
    if palette is not None:
        image.putpalette(palette)
    image.save(path)
    return path


def write_image(path: Path, size: tuple[int, int] = (6, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)
    return path


def load(images: Path = IMAGES, masks: Path = MASKS, **params: Any) -> LoadedData:
    params.setdefault("classes", NAMES)
    return mask_folder(images, masks, **params).load("segmentation")


def pair_folder(root: Path, masks: dict[str, np.ndarray], mode: str = "L", **kw: Any) -> tuple[Path, Path]:
    """``root/images/<key>.png`` (grey, the mask's size) and ``root/masks/<key>.png`` for each key."""
    for key, ids in masks.items():
        write_image(root / "images" / f"{key}.png", ids.shape[:2])
        write_mask(root / "masks" / f"{key}.png", ids, mode, **kw)
    return root / "images", root / "masks"


# -- registration ---------------------------------------------------------------


def test_registered_as_loading_stage_for_segmentation() -> None:
    assert plugin.vision_pipe_stages() == [mask_folder]
    info = mask_folder.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "mask_folder")
    loader = mask_folder(IMAGES, MASKS)
    assert isinstance(loader, Loader) and loader.tasks == ("segmentation",)
    with pytest.raises(StageError, match="segmentation"):
        loader.load("classification")


# -- matching and decoding ------------------------------------------------------------------


def test_images_and_masks_match_by_stem_in_one_all_source() -> None:
    data = load()
    assert data.class_names == NAMES
    assert list(data.splits) == ["all"]
    source = data.splits["all"]
    assert len(source) == 6
    ids = [source[i]["id"] for i in range(6)]
    assert ids == [str(IMAGES / f"scene_{i}.jpg") for i in range(5)] + [str(IMAGES / "scene_5.png")]


@pytest.mark.parametrize("masks", [MASKS, PALETTE], ids=["index", "palette"])
def test_masks_give_the_drawn_class_ids(masks: Path) -> None:
    source = load(masks=masks).splits["all"]
    for i in range(6):
        sample = source[i]
        assert sample["image"].shape == (40, 48, 3) and sample["image"].dtype == np.uint8
        assert sample["mask"].dtype == np.int64
        np.testing.assert_array_equal(sample["mask"], scene_mask(i))
    mask = source[2]["mask"]
    # scene 2: class 1 in rows 7..16, columns 5..18; its border (rows 6, 17; columns 4, 19) ignored
    assert (mask[7, 5], mask[16, 18], mask[6, 10], mask[17, 19], mask[10, 4], mask[5, 10]) == (1, 1, 255, 255, 255, 0)
    assert (mask[22, 26], mask[33, 41], mask[33, 42]) == (2, 2, 0)  # class 2: rows 22..33, columns 26..41
    assert [int((mask == v).sum()) for v in (0, 1, 2, 255)] == [1536, 140, 192, 52]


def test_image_colours_are_rgb() -> None:
    image = load().splits["all"][5]["image"]  # the PNG image: lossless
    assert image[0, 0].tolist() == [40, 40, 40]
    assert image[10, 10].tolist() == [220, 60, 60]
    assert image[25, 30].tolist() == [60, 200, 90]


def test_sixteen_bit_and_grey_rgb_masks_are_read_as_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 300], [2, 1, 0]])
    write_mask(tmp_path / "m16.png", ids, "I;16")
    grey = np.array([[0, 1, 2], [2, 255, 0]])
    write_mask(tmp_path / "grey.png", np.repeat(grey[..., None], 3, axis=2), "RGB")
    reader = MaskReader()
    np.testing.assert_array_equal(reader.read(tmp_path / "m16.png"), ids)
    np.testing.assert_array_equal(reader.read(tmp_path / "grey.png"), grey)


def test_ignore_value_becomes_255(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.array([[0, 1, 9], [9, 2, 0]])})
    mask = load(images, masks, ignore_value=9).splits["all"][0]["mask"]
    assert mask.tolist() == [[0, 1, 255], [255, 2, 0]]


def test_255_is_an_error_when_the_ignore_value_is_another(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.array([[0, 255], [9, 1]])})
    source = load(images, masks, ignore_value=9).splits["all"]
    with pytest.raises(DataError, match="a.png has pixels of value 255") as info:
        source[0]
    assert "ignore_value: 255" in str(info.value)


def test_ignore_value_that_is_a_class_id_is_an_error() -> None:
    with pytest.raises(DataError, match="ignore_value 0 is the id of class 'background'"):
        load(ignore_value=0)


def test_mask_suffix_names_masks_in_the_images_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg", (2, 2))
    write_mask(tmp_path / "x_mask.png", np.array([[0, 1], [1, 0]]))
    data = load(tmp_path, tmp_path, mask_suffix="_mask.png")
    assert len(data.splits["all"]) == 1  # x_mask.png is not taken for an image
    assert data.splits["all"][0]["mask"].tolist() == [[0, 1], [1, 0]]
    with pytest.raises(StageError, match="same folder"):
        mask_folder(tmp_path, tmp_path)


# -- classes ----------------------------------------------------------------------------


def test_classes_and_colours_from_yaml() -> None:
    data = load(classes=ASSETS / "classes.yaml")
    assert data.class_names == NAMES
    assert data.class_colors == [(0, 0, 0), (220, 60, 60), (60, 200, 90)]


def test_classes_from_json_list_and_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(["bg", {"name": "cat", "color": "#ff8000"}, {"name": "dog", "color": [1, 2, 3]}]))
    data = load(classes=listed)
    assert data.class_names == ["bg", "cat", "dog"]
    assert data.class_colors == [(0, 0, 0), (255, 128, 0), (1, 2, 3)]  # bg: VOC colour map's class 0
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"2": "dog", "0": "bg", "1": "cat"}))
    assert load(classes=mapping).class_names == ["bg", "cat", "dog"]


def test_colours_come_from_the_palette_when_classes_give_none() -> None:
    assert load(masks=PALETTE).class_colors == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # VOC palette 0, 1, 2
    assert load(masks=MASKS).class_colors == default_colors(3) == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_a_short_palette_gives_the_classes(tmp_path: Path) -> None:
    palette = [0, 0, 0, 250, 0, 0, 0, 0, 250, 9, 9, 9]  # 4 colours
    images, masks = pair_folder(tmp_path, {"a": np.array([[0, 3], [1, 2]])}, "P", palette=palette)
    data = load(images, masks, classes=None)
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert data.class_colors == [(0, 0, 0), (250, 0, 0), (0, 0, 250), (9, 9, 9)]


def test_num_classes_names_the_classes() -> None:
    data = load(classes=None, num_classes=3)
    assert data.class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(DataError, match="num_classes is 4 but 'classes' gives 3"):
        load(num_classes=4)


@pytest.mark.parametrize("masks", [MASKS, PALETTE], ids=["index", "full-palette"])
def test_unknown_classes_are_an_error_asking_for_them(masks: Path) -> None:
    with pytest.raises(DataError, match="set 'classes'") as info:
        load(masks=masks, classes=None)
    assert "num_classes" in str(info.value) and str(masks / "scene_0.png") in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0: bg\n2: dog\n", "missing \\[1\\]"),
        ("[bg, {name: cat, color: [300, 0, 0]}]", "colour \\[300, 0, 0\\]"),
        ("[bg, bg]", "more than once"),
        ("{0: [1, 2]}", "not a class name"),
        ("[bg, {name: cat, colour: [1, 2, 3]}]", "unknown key"),
        ("bg: 0\n", "not a class id"),
        ("[unclosed", r"classes.yaml:1: invalid YAML"),
        ("just a string", "expected a list"),
    ],
)
def test_bad_classes_file_is_a_data_error_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as info:
        load(classes=path)
    assert str(path) in str(info.value)


def test_missing_classes_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="classes file .*nope.yaml does not exist"):
        load(classes=tmp_path / "nope.yaml")


# -- RGB colour masks ---------------------------------------------------------------------


def test_rgb_masks_map_class_colours_to_ids(tmp_path: Path) -> None:
    classes = tmp_path / "classes.yaml"
    classes.write_text("0: {name: bg, color: [0, 0, 0]}\n1: {name: road, color: [128, 64, 128]}\n")
    rgb = np.array([[[0, 0, 0], [128, 64, 128]], [[255, 255, 255], [128, 64, 128]]])
    images, masks = pair_folder(tmp_path, {"a": rgb, "b": rgb[::-1]}, "RGB")
    data = load(images, masks, classes=classes, rgb_masks=True, ignore_color=[255, 255, 255])
    assert data.splits["all"][0]["mask"].tolist() == [[0, 1], [255, 1]]
    write_mask(masks / "b.png", np.array([[[0, 0, 0], [7, 7, 9]]]), "RGB")
    with pytest.raises(DataError, match=r"b.png has 1 colour\(s\) that are no class colour: \(7, 7, 9\): 1 px"):
        data.splits["all"][1]
    with pytest.raises(DataError, match="rgb_masks needs a colour for every class"):
        load(images, masks, rgb_masks=True)


# -- splits -------------------------------------------------------------------------------


def test_split_folders_are_the_splits(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    for split, keys in {"train": KEYS[:4], "val": KEYS[4:]}.items():
        (images / split).mkdir(parents=True)
        (masks / split).mkdir(parents=True)
        for key in keys:
            image = next(IMAGES.glob(f"{key}.*"))
            shutil.copy(image, images / split / image.name)
            shutil.copy(MASKS / f"{key}.png", masks / split / f"{key}.png")
    data = load(images, masks)
    assert list(data.splits) == ["train", "val"]
    assert [len(s) for s in data.splits.values()] == [4, 2]
    np.testing.assert_array_equal(data.splits["val"][1]["mask"], scene_mask(5))
    shutil.rmtree(masks / "val")
    with pytest.raises(DataError, match="has no masks folder .*val"):
        load(images, masks)


def test_split_files_choose_the_images_of_each_split() -> None:
    splits = {"train": ASSETS / "splits" / "train.txt", "test": ASSETS / "splits" / "val.txt"}
    data = load(masks=PALETTE, split_files=splits)
    assert list(data.splits) == ["train", "test"]
    assert [s["id"] for s in (data.splits["test"][0], data.splits["test"][1])] == [
        str(IMAGES / "scene_4.jpg"),
        str(IMAGES / "scene_5.png"),
    ]
    np.testing.assert_array_equal(data.splits["train"][3]["mask"], scene_mask(3))


def test_an_image_in_two_split_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("scene_0\nscene_1\n")
    (tmp_path / "b.txt").write_text("# comment\nscene_2.jpg\nscene_1\n")
    with pytest.raises(DataError, match=r"b.txt:3: 'scene_1' is in split 'val' and also in split 'train'"):
        load(split_files={"train": tmp_path / "a.txt", "val": tmp_path / "b.txt"})


def test_split_file_naming_a_missing_image_is_a_sample_error(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("scene_0\nscene_9\n")
    source = load(split_files={"train": tmp_path / "train.txt"}).splits["train"]
    assert source[0]["id"].endswith("scene_0.jpg")
    with pytest.raises(DataError, match=r"train.txt:2: names 'scene_9', but there is no image scene_9"):
        source[1]


def test_bad_split_files_parameter_is_a_stage_error() -> None:
    entry = make_entry(mask_folder)
    with pytest.raises(StageError, match=r"split_files must be dict\['train' \| 'val' \| 'test', Path\], got 'training'"):
        entry.build({"images": IMAGES, "masks": MASKS, "split_files": {"training": Path("x.txt")}})
    with pytest.raises(StageError, match="'train' list"):
        entry.build({"images": IMAGES, "masks": MASKS, "split_files": {"val": Path("x.txt")}})
    with pytest.raises(StageError, match=r"ignore_color.*(at most|at least|3)"):
        entry.build({"images": IMAGES, "masks": MASKS, "rgb_masks": True, "ignore_color": [1, 2]})
    with pytest.raises(StageError, match="ignore_value"):
        entry.build({"images": IMAGES, "masks": MASKS, "ignore_value": -1})


# -- per-sample and whole-source errors ----------------------------------------------------


def test_image_without_mask_is_a_sample_error_naming_both(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.zeros((2, 2)), "b": np.zeros((2, 2))})
    (masks / "b.png").unlink()
    source = load(images, masks).splits["all"]
    assert source[0]["mask"].shape == (2, 2)
    with pytest.raises(DataError) as info:
        source[1]
    message = str(info.value)
    assert f"image {images / 'b.png'} has no mask: expected {masks / 'b.png'}" in message
    assert "on_bad_sample: skip" in message


def test_rgb_mask_is_a_sample_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (200, 10, 10)
    images, masks = pair_folder(tmp_path, {"a": rgb}, "RGB")
    with pytest.raises(DataError) as info:
        load(images, masks).splits["all"][0]
    message = str(info.value)
    assert f"mask {masks / 'a.png'} is an RGB image (1 pixels" in message
    assert "colour (200, 10, 10) at x=2, y=1" in message
    assert "palette PNGs" in message and "rgb_masks" in message


def test_unreadable_mask_is_a_sample_error_naming_it(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.zeros((2, 2))})
    (masks / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read mask {masks / 'a.png'}"):
        load(images, masks).splits["all"][0]


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_folder_is_a_data_error(tmp_path: Path, missing: str) -> None:
    folders = {"images": IMAGES, "masks": MASKS, missing: tmp_path / "nope"}
    with pytest.raises(DataError, match=f"{missing} folder .*nope does not exist"):
        load(folders["images"], folders["masks"])


def test_no_images_or_no_matching_masks_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        load(tmp_path / "images", MASKS)
    with pytest.raises(DataError, match=r"no image in .* has a mask .*expects .*scene_0.jpg.png.*mask_suffix"):
        load(IMAGES, MASKS, mask_suffix=".jpg.png")


def test_two_images_with_one_stem_are_an_error(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.zeros((2, 2))})
    write_image(images / "a.jpg")
    with pytest.raises(DataError, match="would share the mask"):
        load(images, masks)


def test_fingerprint_changes_with_a_mask_and_only_then(tmp_path: Path) -> None:
    images, masks = pair_folder(tmp_path, {"a": np.zeros((2, 2)), "b": np.ones((2, 2))})
    before = load(images, masks).splits["all"].fingerprint()
    assert load(images, masks).splits["all"].fingerprint() == before
    write_mask(masks / "b.png", np.array([[1, 2, 1]]))
    assert load(images, masks).splits["all"].fingerprint() != before
    assert load(images, masks, ignore_value=200).splits["all"].fingerprint() != load(images, masks).splits[
        "all"
    ].fingerprint()


# -- end to end ---------------------------------------------------------------------------


def segmentation_config(config: dict[str, Any], **loader: Any) -> dict[str, Any]:
    """``tiny_config`` turned into an FCN pipeline on the shipped assets at 32 px, 1 epoch."""
    config["name"] = "tiny_segmentation"
    config["task"] = "segmentation"
    config["data"]["loader"] = {
        "name": "mask_folder",
        "images": str(IMAGES),
        "masks": str(PALETTE),
        "classes": str(ASSETS / "classes.yaml"),
        **loader,
    }
    config["data"]["input_size"] = [32, 32]
    config["data"]["batch_size"] = 2
    config["model"]["head"] = {"name": "fcn", "skips": "fcn16"}
    config["trainer"]["max_epochs"] = 1
    config["checkpoint"] = {"monitor": "val/miou", "mode": "max"}
    return config


def test_tiny_end_to_end_run_reports_miou_and_skips_an_image_without_mask(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    from vision_pipe import Pipeline

    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(IMAGES, images)
    shutil.copytree(PALETTE, masks)
    write_image(images / "unlabelled.jpg", (40, 48))  # no mask: skipped by the pre-flight check
    config = segmentation_config(tiny_config, images=str(images), masks=str(masks))
    config["data"]["on_bad_sample"] = "skip"
    pipe = Pipeline.from_dict(config)
    assert pipe.class_names == NAMES
    pipe.fit()
    metrics = pipe.test()
    assert 0.0 <= metrics["test/miou"] <= 1.0
    assert {"test/pixel_acc", "test/iou/background", "test/iou/circle", "test/iou/square"} <= set(metrics)
    assert sum(len(s) for s in pipe.splits.values()) == 6
    saved = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert saved["data/skipped"] == 1.0 and "test/miou" in saved
    preflight = (pipe.run_dir / "preflight.json").read_text()
    assert "unlabelled.jpg has no mask" in preflight
    assert (pipe.run_dir / "plots" / "test" / "iou_per_class.csv").is_file()
    assert (pipe.run_dir / "plots" / "test" / "iou_per_class.png").is_file()


# -- templates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "overrides"),
    [
        (
            "folders_segmentation.yaml",
            [f"data.loader.images={IMAGES}", f"data.loader.masks={MASKS}", f"data.loader.classes={ASSETS / 'classes.yaml'}"],
        ),
        (
            "voc_segmentation.yaml",
            [
                f"data.loader.images={IMAGES}",
                f"data.loader.masks={PALETTE}",
                f"data.loader.split_files.train={ASSETS / 'splits' / 'train.txt'}",
                f"data.loader.split_files.test={ASSETS / 'splits' / 'val.txt'}",
                "data.loader.classes=[background,circle,square]",
            ],
        ),
    ],
)
def test_templates_validate_and_index_the_assets(template: str, overrides: list[str]) -> None:
    from vision_pipe import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "pipelines" / template, overrides)
    assert pipe.config.task == "segmentation"
    assert pipe.class_names == NAMES
    assert sum(len(s) for s in pipe.splits.values()) == 6
    assert pipe.splits["train"][0]["mask"].shape == (40, 48)
