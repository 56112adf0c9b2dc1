"""Image bombs and odd file names: a huge image is refused from its header (fast, little memory), any
decoder failure is our DataError naming the file, and file names that are not valid UTF-8 work end to end."""

from __future__ import annotations

import copy
import io
import json
import os
import struct
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from vision_pipe import DataError, Pipeline
from vision_pipe.cli import main
from vision_pipe.io import max_image_pixels, read_image, set_max_image_pixels, write_png
from vision_pipe_plugins.loading.image_folder import image_folder
from vision_pipe_plugins.loading.mask_files import MaskReader


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header (IHDR) claims ``width`` × ``height`` pixels; its CRC is valid."""
    ok, data = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    assert ok
    raw = bytearray(data.tobytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def restore_cap():
    old = max_image_pixels()
    yield
    set_max_image_pixels(old)


def _refused_fast(read, path: Path) -> DataError:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            read(path)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 50 * 2**20
    return info.value


def test_a_huge_png_is_refused_from_its_header(tmp_path):
    path = png_claiming(tmp_path / "huge.png", 40000, 40000)  # Pillow itself refuses to open this one
    message = str(_refused_fast(read_image, path))
    assert message.startswith(f"image {path}") and "data.max_image_pixels = 100,000,000" in message
    path = png_claiming(tmp_path / "big.png", 12000, 12000)  # Pillow opens it (with a warning): our cap decides
    with pytest.warns(Image.DecompressionBombWarning):
        assert Image.open(path).size == (12000, 12000)
    message = str(_refused_fast(read_image, path))
    assert message.startswith(f"image {path} is 12000×12000 = 144,000,000 pixels, more than data.max_image_pixels")


def test_the_mask_reader_refuses_a_huge_mask_from_its_header(tmp_path):
    path = png_claiming(tmp_path / "huge_mask.png", 40000, 40000)
    message = str(_refused_fast(MaskReader().read, path))
    assert message.startswith(f"mask {path}") and "data.max_image_pixels" in message


def test_the_cap_is_a_parameter_and_a_setting(tmp_path, restore_cap):
    path = tmp_path / "img.png"
    write_png(path, np.zeros((20, 30, 3), np.uint8))
    assert read_image(path).shape == (20, 30, 3)
    with pytest.raises(DataError, match="30×20 = 600 pixels, more than data.max_image_pixels = 599"):
        read_image(path, max_pixels=599)
    set_max_image_pixels(599)
    assert os.environ["VISION_PIPE_MAX_IMAGE_PIXELS"] == "599"  # worker processes inherit it
    with pytest.raises(DataError, match="data.max_image_pixels"):
        read_image(path)


def test_decoder_failures_are_data_errors_naming_the_file(tmp_path):
    # a valid PNG header over a broken stream, and one whose header claims a size its data cannot have
    broken = tmp_path / "broken.png"
    ok, data = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    broken.write_bytes(data.tobytes()[:40] + b"\x00" * 40)
    liar = png_claiming(tmp_path / "liar.png", 9000, 9000)
    for path in (broken, liar):
        with pytest.raises(DataError, match=f"cannot read image {path}"):
            read_image(path)


def test_a_huge_image_is_a_skipped_sample_under_skip(tiny_config, tmp_path, restore_cap):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            write_png(root / c / f"{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    png_claiming(root / "a" / "huge.png", 40000, 40000)
    config = copy.deepcopy(tiny_config)
    config["data"].update(loader={"name": "image_folder", "root": str(root)}, split=[0.5, 0.25, 0.25])
    config["data"]["on_bad_sample"] = "skip"
    config["data"]["max_image_pixels"] = 1_000_000
    from vision_pipe.config_files import Locations

    pipe = Pipeline(config, Locations())
    assert max_image_pixels() == 1_000_000
    report = pipe.preflight()
    skipped = json.dumps(report.to_dict())
    assert "huge.png" in skipped and "data.max_image_pixels" in skipped
    assert sum(len(s) for s in pipe.splits.values()) == 8


# ----------------------------------------------------------------------------
# File names that are not valid UTF-8
# ----------------------------------------------------------------------------


def _non_utf8_tree(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        for i in range(4):
            write_png(root / c / f"{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    odd = Path(os.fsdecode(os.fsencode(root / "a") + b"/\xff\xfe.png"))
    write_png(odd, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    assert b"\xff\xfe.png" in os.listdir(os.fsencode(root / "a"))
    return odd


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux")
def test_image_folder_with_a_non_utf8_file_name_loads_and_fingerprints(tmp_path):
    odd = _non_utf8_tree(tmp_path / "data")
    source = image_folder(tmp_path / "data").load("classification").splits["all"]
    index = source.paths.index(str(odd))
    assert source[index]["image"].shape == (16, 16, 3)
    first = source.fingerprint()
    assert first == source.fingerprint() and len(first) == 64


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux")
def test_fit_and_predict_out_with_a_non_utf8_file_name(tiny_config, tmp_path, monkeypatch):
    odd = _non_utf8_tree(tmp_path / "data")
    config = copy.deepcopy(tiny_config)
    config["data"].update(loader={"name": "image_folder", "root": str(tmp_path / "data")}, split=[0.6, 0.2, 0.2])
    config["trainer"]["max_epochs"] = 1
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["fit", str(path), "--no-test"]) == 0
    ckpt = next((tmp_path / "runs" / "tiny").iterdir()) / "checkpoints" / "last.ckpt"
    out = tmp_path / "pred"
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # what a terminal gets: strict UTF-8
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["predict", str(ckpt), str(odd), "--out", str(out)]) == 0
    stdout.flush()
    assert b"\\xff\\xfe.png" in stdout.buffer.getvalue()  # printed with the bytes escaped
    written = os.listdir(os.fsencode(out))
    assert b"\xff\xfe_pred.png" in written and b"predictions.json" in written
    records = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert records[0]["id"] == str(odd)
    assert cv2.imdecode(np.fromfile(Path(records[0]["annotated"]), np.uint8), cv2.IMREAD_COLOR) is not None


@pytest.mark.skipif(sys.platform != "linux", reason="file names are bytes on Linux")
def test_mask_folder_and_yolo_read_and_fingerprint_non_utf8_file_names(tmp_path):
    from vision_pipe_plugins.loading.mask_folder import mask_folder
    from vision_pipe_plugins.loading.yolo import yolo

    def odd(folder: Path, suffix: str) -> Path:
        return Path(os.fsdecode(os.fsencode(folder) + b"/\xff" + suffix.encode()))

    image = np.zeros((6, 8, 3), np.uint8)
    write_png(odd(tmp_path / "seg" / "images", ".png"), image)
    write_png(odd(tmp_path / "seg" / "masks", ".png"), np.ones((6, 8), np.uint8))
    source = mask_folder(tmp_path / "seg" / "images", tmp_path / "seg" / "masks", num_classes=2)
    seg = source.load("segmentation").splits["all"]
    assert seg[0]["mask"].max() == 1 and len(seg.fingerprint()) == 64

    write_png(odd(tmp_path / "det" / "images", ".png"), image)
    odd(tmp_path / "det" / "labels", ".txt").parent.mkdir(parents=True)
    odd(tmp_path / "det" / "labels", ".txt").write_text("0 0.5 0.5 0.5 0.5\n", encoding="utf-8")
    (tmp_path / "det" / "classes.txt").write_text("a\n", encoding="utf-8")
    det = yolo(tmp_path / "det" / "images", tmp_path / "det" / "classes.txt").load("detection").splits["all"]
    assert det[0]["boxes"].shape == (1, 4) and len(det.fingerprint()) == 64
