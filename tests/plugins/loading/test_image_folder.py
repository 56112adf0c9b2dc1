"""The image_folder loading stage: layouts, decoding, errors."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_pipe import DataError, Loader, StageError
from vision_pipe_plugins.loading import image_folder as plugin
from vision_pipe_plugins.loading.image_folder import image_folder

ASSETS = Path(__file__).resolve().parents[3] / "assets" / "imagefolder_tiny"


def write(path: Path, image: np.ndarray | None = None) -> Path:
    """Write ``image`` (as OpenCV does: BGR order) to ``path``; a 4×4 grey one by default."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = np.full((4, 4, 3), 128, np.uint8)
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def make_tree(root: Path, layout: dict[str, int]) -> Path:
    """``{"cat": 2}`` → root/cat/0.png, root/cat/1.png."""
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write(root / folder / f"{i}.png")
    return root


def load(root: Path):
    return image_folder(root).load("classification")


# -- layouts ------------------------------------------------------------------


def test_registered_as_loading_stage() -> None:
    assert plugin.vision_pipe_stages() == [image_folder]
    info = image_folder.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "image_folder")
    loader = image_folder(Path("anything"))
    assert isinstance(loader, Loader) and loader.tasks == ("classification",)


def test_class_folders_give_one_all_split(tmp_path: Path) -> None:
    make_tree(tmp_path, {"dog": 2, "cat": 3})
    data = load(tmp_path)
    assert data.class_names == ["cat", "dog"]
    src = data.splits["all"]
    assert list(data.splits) == ["all"]
    assert len(src) == 5
    assert [src[i]["label"] for i in range(5)] == [0, 0, 0, 1, 1]
    assert src[0]["id"] == str(tmp_path / "cat" / "0.png")
    assert src[4]["id"] == str(tmp_path / "dog" / "1.png")
    assert src[0]["image"].shape == (4, 4, 3) and src[0]["image"].dtype == np.uint8


def test_only_images_are_listed(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 1})
    write(tmp_path / "a" / "upper.JPG")
    write(tmp_path / "a" / "b.jpeg")
    write(tmp_path / "a" / "c.bmp")
    write(tmp_path / "a" / "nested" / "d.png")
    write(tmp_path / "a" / ".hidden.png")
    write(tmp_path / "a" / ".cache" / "e.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "labels.csv").write_text("x")
    (tmp_path / "README.md").write_text("a file in root is ignored")
    write(tmp_path / ".thumbs" / "x.png")  # hidden folder: not a class
    data = load(tmp_path)
    assert data.class_names == ["a"]
    names = sorted(Path(data.splits["all"][i]["id"]).name for i in range(len(data.splits["all"])))
    assert names == ["0.png", "b.jpeg", "c.bmp", "d.png", "upper.JPG"]


def test_train_val_test_layout(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"b": 2, "a": 1})
    make_tree(tmp_path / "val", {"b": 1})
    make_tree(tmp_path / "test", {"a": 1, "b": 1})
    data = load(tmp_path)
    assert data.class_names == ["a", "b"]
    assert {name: len(src) for name, src in data.splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert data.splits["val"][0]["label"] == 1  # "b" keeps its train index
    assert [data.splits["test"][i]["label"] for i in range(2)] == [0, 1]


def test_train_only_layout(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 1, "b": 1})
    assert list(load(tmp_path).splits) == ["train"]


def test_val_class_missing_from_train(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 1})
    make_tree(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"zebra.*not a class of"):
        load(tmp_path)


def test_split_folders_next_to_class_folders(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 1})
    make_tree(tmp_path, {"stray": 1})
    with pytest.raises(DataError, match="stray"):
        load(tmp_path)


def test_non_ascii_paths(tmp_path: Path) -> None:
    make_tree(tmp_path / "données", {"café": 1})
    data = load(tmp_path / "données")
    assert data.class_names == ["café"]
    assert data.splits["all"][0]["image"].shape == (4, 4, 3)


def test_shipped_tiny_dataset() -> None:
    data = load(ASSETS)
    assert data.class_names == ["circle", "square", "triangle"]
    src = data.splits["all"]
    assert len(src) == 18
    assert np.bincount([src[i]["label"] for i in range(18)]).tolist() == [6, 6, 6]
    assert src[0]["image"].shape == (32, 32, 3)


# -- decoding -----------------------------------------------------------------


def decoded(tmp_path: Path, image: np.ndarray, name: str = "x.png") -> np.ndarray:
    write(tmp_path / "root" / "c" / name, image)
    return load(tmp_path / "root").splits["all"][0]["image"]


def test_bgr_file_loads_as_rgb(tmp_path: Path) -> None:
    red_bgr = np.zeros((3, 5, 3), np.uint8)
    red_bgr[..., 2] = 255
    image = decoded(tmp_path, red_bgr)
    assert image.shape == (3, 5, 3)
    assert np.all(image == (255, 0, 0))


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = decoded(tmp_path, grey)
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., :3] = (10, 100, 200)  # B, G, R
    bgra[0, :, 3] = 255  # opaque row
    bgra[1, :, 3] = 0  # transparent row
    image = decoded(tmp_path, bgra)
    assert image.shape == (2, 2, 3)
    assert image.reshape(-1, 3).tolist() == [[200, 100, 10]] * 4


def test_16_bit_is_scaled_to_8_bit(tmp_path: Path) -> None:
    deep = np.array([[0, 257 * 100, 65535]], np.uint16)
    image = decoded(tmp_path, deep)
    assert image.dtype == np.uint8
    assert image[..., 0].tolist() == [[0, 100, 255]]


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2})
    src = load(tmp_path).splits["all"]
    os.remove(tmp_path / "a" / "1.png")
    with pytest.raises(DataError, match=r"cannot read image .*1\.png: file is missing"):
        src[1]


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"definitely not a png")
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    src = load(tmp_path).splits["all"]
    for i, name in enumerate(["broken.png", "empty.jpg"]):
        with pytest.raises(DataError, match=rf"cannot read image .*{name}: .*not a valid image"):
            src[i]


# -- errors -------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path.name}.nope does not exist"):
        load(tmp_path / "nope")


def test_root_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "one.png")
    with pytest.raises(DataError, match="one.png is not a folder"):
        load(path)


def test_no_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no class folders"):
        load(tmp_path)
    write(tmp_path / "loose.png")
    with pytest.raises(DataError, match="holds images directly.*<class name>"):
        load(tmp_path)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 1, "b": 0})
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*b contains no images \(jpg, jpeg, png, bmp\)"):
        load(tmp_path)


def test_fingerprint_tracks_files(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2})
    fp = load(tmp_path).splits["all"].fingerprint()
    assert fp == load(tmp_path).splits["all"].fingerprint()
    write(tmp_path / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))  # new size and mtime
    assert load(tmp_path).splits["all"].fingerprint() != fp
    write(tmp_path / "a" / "2.png")
    assert len({fp, load(tmp_path).splits["all"].fingerprint()}) == 2


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="'detection'.*classification"):
        image_folder(tmp_path).load("detection")
