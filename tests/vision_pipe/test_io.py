"""vision_pipe.io: listing, path checks, file stamps, atomic writes and image sizes from the header."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vision_pipe import (
    DataError,
    atomic_torch_save,
    atomic_write_text,
    file_stamp,
    image_header_size,
    list_files,
    list_images,
    read_image,
    require_dir,
    require_file,
)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_list_images_skips_hidden_and_other_files_and_sorts(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "sub/c.bmp", ".hidden.png", ".git/d.png", "notes.txt", "e.jpeg"]:
        _touch(tmp_path / name)
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == [
        "a.jpg",
        "b.PNG",
        "e.jpeg",
        "sub/c.bmp",
    ]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.jpg", "b.PNG", "e.jpeg"]
    assert [p.name for p in list_files(tmp_path, recursive=False)] == ["a.jpg", "b.PNG", "e.jpeg", "notes.txt"]


def test_require_dir_and_file_name_the_path_and_the_fix(tmp_path: Path) -> None:
    file = _touch(tmp_path / "f.txt")
    require_dir(tmp_path, "images folder", "fix it")
    require_file(file, "classes file", "fix it")
    with pytest.raises(DataError, match=r"images folder .*nope does not exist: set 'root'"):
        require_dir(tmp_path / "nope", "images folder", "set 'root'")
    with pytest.raises(DataError, match=r"images folder .*f.txt is not a folder"):
        require_dir(file, "images folder", "x")
    with pytest.raises(DataError, match=r"classes file .* is not a file"):
        require_file(tmp_path, "classes file", "x")


def test_file_stamp_changes_with_the_content_and_never_raises(tmp_path: Path) -> None:
    path = _touch(tmp_path / "a.png", b"1")
    before = file_stamp(path)
    _touch(path, b"22")
    assert file_stamp(path) != before
    assert file_stamp(tmp_path / "missing.png") == "missing"
    assert file_stamp(None) == "missing"


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "metrics.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        (tmp_path / "plain.json").write_text("x")
        atomic_write_text(tmp_path / "atomic.json", "x")
        atomic_torch_save({"a": torch.ones(1)}, tmp_path / "atomic.pt")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == expected
    for name in ("atomic.json", "atomic.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "stats.pt"
    atomic_torch_save({"mean": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["mean"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.pt"]


# ----------------------------------------------------------------------------
# Image sizes from the header
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "params", "shape"),
    [
        (".png", [], (37, 53, 3)),
        (".png", [], (5, 300)),  # grey
        (".png", [], (20, 24, 4)),  # with alpha
        (".jpg", [], (48, 31, 3)),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], (70, 90, 3)),
        (".jpg", [], (9, 1000)),  # grey
    ],
)
def test_sniffed_size_equals_pillows(tmp_path: Path, suffix: str, params: list[int], shape: tuple[int, ...]) -> None:
    from PIL import Image

    from vision_pipe.io import sniff_image_size

    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), params)
    data = path.read_bytes()
    with Image.open(path) as im:
        expected = im.size
    assert sniff_image_size(data) == expected == (shape[1], shape[0])
    assert image_header_size(path) == expected
    assert image_header_size(path, data=memoryview(data)) == expected


@pytest.mark.parametrize(
    ("suffix", "params", "shape", "rgb8"),
    [
        (".png", [], (37, 53, 3), True),
        (".png", [], (5, 30), False),  # grey
        (".png", [], (20, 24, 4), False),  # with alpha
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 35], (48, 31, 3), True),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], (70, 90, 3), True),
        (".jpg", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], (33, 17, 3), True),
        (".jpg", [], (9, 100), False),  # grey
    ],
)
def test_rgb_decoding_gives_the_general_paths_pixels(
    tmp_path: Path, suffix: str, params: list[int], shape: tuple[int, ...], rgb8: bool
) -> None:
    """8-bit colour PNGs and JPEGs are decoded straight into RGB: the same pixels as decoding them as they
    are and converting (every other file's path)."""
    from vision_pipe.io import _sniff_header, to_rgb

    path = tmp_path / f"x{suffix}"
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8), (5, 5), 0)
    assert cv2.imwrite(str(path), image, params)
    data = np.fromfile(path, np.uint8)
    assert _sniff_header(data.data) == (shape[1], shape[0], rgb8)
    general = to_rgb(cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR))
    read = read_image(path)
    assert read.shape == (*shape[:2], 3) and read.dtype == np.uint8 and read.flags.c_contiguous
    assert np.array_equal(read, general)


def test_16_bit_pngs_keep_the_general_path(tmp_path: Path) -> None:
    from vision_pipe.io import _sniff_header

    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), np.full((3, 4, 3), 257 * 200, np.uint16))
    assert _sniff_header(path.read_bytes()) == (4, 3, False)
    assert read_image(path).tolist() == [[[200] * 3] * 4] * 3  # rounded from 16 bits, not truncated


def test_jpeg_size_is_found_after_an_exif_block(tmp_path: Path) -> None:
    from PIL import Image

    from vision_pipe.io import sniff_image_size

    path = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x010E] = "x" * 20000  # ImageDescription: a long APP1 segment before the frame header
    exif[0x0112] = 6  # rotated: the decoded image is 40 x 25, the header says 25 x 40
    Image.new("RGB", (25, 40), "red").save(path, exif=exif)
    assert sniff_image_size(path.read_bytes()) == (25, 40)
    assert read_image(path).shape == (25, 40, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a....", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8\x00\x00\x00\x00", b"\x89PNG\r\n\x1a\n\x00"],
)
def test_unknown_or_broken_headers_are_left_to_the_decoders(data: bytes) -> None:
    from vision_pipe.io import sniff_image_size

    assert sniff_image_size(data) is None


def test_other_formats_get_their_size_from_pillow(tmp_path: Path) -> None:
    path = tmp_path / "x.bmp"
    assert cv2.imwrite(str(path), np.zeros((11, 13, 3), np.uint8))
    assert image_header_size(path) == (13, 11)
    assert image_header_size(path, data=path.read_bytes()) == (13, 11)
