"""Property-based fuzzing of every parser of untrusted files: the YAML loader, the COCO / VOC / YOLO
annotation parsers and the mask reader.

Random bytes and random documents that are well-formed but wrong (wrong types, missing keys, huge
numbers, NaN, aliases, odd tags ...) must give a result or one of our documented errors
(:class:`vision_pipe.VisionPipeError` subclasses) — never another exception — within a deadline per
example. Derandomized (the same examples every run: no flaky CI), no example database written;
``VISION_PIPE_FUZZ_EXAMPLES=N`` runs N fresh random examples per test instead.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vision_pipe import VisionPipeError, write_png
from vision_pipe.config_files import load_yaml_with_bases, read_yaml
from vision_pipe_plugins.loading.coco import coco, parse_coco
from vision_pipe_plugins.loading.mask_files import MaskReader, palette_colors
from vision_pipe_plugins.loading.voc import voc
from vision_pipe_plugins.loading.yolo import yolo

#: ``VISION_PIPE_FUZZ_EXAMPLES=5000`` fuzzes longer, with fresh random examples (locally, not in CI).
_EXAMPLES = int(os.environ.get("VISION_PIPE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXAMPLES or 80,
    deadline=2000,  # ms per example: a parser that hangs or expands something fails here
    derandomize=not _EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def ours(fn: Callable[[], Any]) -> Any:
    """Run ``fn``: a result, or ``None`` when it raised one of our errors; anything else fails the test."""
    try:
        return fn()
    except VisionPipeError as exc:
        assert str(exc)  # every error says something
        return None


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


# ----------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------

HUGE = 10**400  # an int no float can hold
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 5)
    | st.just(HUGE)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
numbers = st.sampled_from(
    ["0", "1", "5", "9.5", "-1", "nan", "inf", "-inf", "1e999", "1e400", "", "abc", "1_0", "0x10", "½"]
)


def _or(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (3 in 4) well-typed values, sometimes anything."""
    return good | good | good | values


# ----------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------

yaml_tokens = st.sampled_from(
    ["a", "b", "base", ":", ": ", " ", "  ", "\n", "- ", "&x ", "*x", "&y ", "*y", "[", "]", "{", "}", ",", "? ",
     "<<: ", "!!str ", "!!python/object:os.system ", "!!binary ", "'", '"', "#", "---\n", "...\n", "|\n", "1", "null",
     "1e999", "~", "\t", "%YAML 1.1\n", "!tag "]
)  # fmt: skip


@FUZZ
@given(data=st.binary(max_size=300))
def test_yaml_loader_on_random_bytes(folder, data):
    path = folder / "random.yaml"
    path.write_bytes(data)
    result = ours(lambda: read_yaml(path))
    if result is not None:
        assert isinstance(result[0], dict)


@FUZZ
@given(tokens=st.lists(yaml_tokens, max_size=40))
def test_yaml_loader_on_token_soup(folder, tokens):
    path = folder / "soup.yaml"
    path.write_text("".join(tokens), encoding="utf-8")
    ours(lambda: load_yaml_with_bases(path))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["name", "data", "model", "base", "x"]), values, max_size=5))
def test_yaml_loader_on_wrong_documents_with_bases(folder, doc):
    import yaml

    (folder / "parent.yaml").write_text("name: p\nx: {a: 1}\n", encoding="utf-8")
    if "base" in doc and isinstance(doc["base"], str):
        doc["base"] = doc["base"].replace("\x00", "") or "parent.yaml"
    path = folder / "child.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    ours(lambda: load_yaml_with_bases(path))


# ----------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------

box_numbers = st.floats(-5, 40) | st.integers(-5, 40) | st.just(HUGE) | st.floats() | scalars
file_names = st.sampled_from(["img.png", "missing.png", "a\x00b.png", "../img.png", "/img.png", "\udcff.png", ""])
coco_category = _or(st.fixed_dictionaries({"id": _or(st.integers(0, 2)), "name": _or(st.sampled_from(["a", "b"]))}))
coco_image = _or(st.fixed_dictionaries({"id": _or(st.integers(0, 1)), "file_name": _or(file_names)}))


def _annotation(image_id: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "id": _or(st.integers(0, 9)),
            "image_id": image_id,
            "category_id": _or(st.integers(0, 2)),
            "bbox": st.lists(box_numbers, min_size=4, max_size=4) | _or(st.lists(box_numbers, max_size=5)),
            "iscrowd": _or(st.integers(0, 1)),
        }
    )


coco_annotation = _or(_annotation(_or(st.integers(0, 1))))
coco_document = (
    values
    | st.fixed_dictionaries(
        {
            "images": _or(st.lists(coco_image, max_size=3)),
            "categories": _or(st.lists(coco_category, max_size=3)),
            "annotations": _or(st.lists(coco_annotation, max_size=4)),
        }
    )
    | st.fixed_dictionaries(  # valid images and categories: the annotations are what is wrong
        {
            "images": st.just([{"id": 0, "file_name": "img.png"}, {"id": 1, "file_name": "img.png"}]),
            "categories": st.just([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]),
            "annotations": st.lists(_annotation(st.integers(0, 1)), max_size=4),
        }
    )
)


def _tiny_image(folder: Path) -> Path:
    path = folder / "img.png"
    if not path.exists():
        write_png(path, np.zeros((30, 40, 3), np.uint8))
    return path


def _read_every_sample(source: Any, image: Path | None = None) -> None:
    assert len(source.fingerprint()) == 64  # never raises, whatever the file names
    if image is not None:
        source.images = [image if p.name == "img.png" else p for p in source.images]  # the one real image
    for i in range(len(source)):
        ours(lambda i=i: source[i])


@FUZZ
@given(data=st.binary(max_size=300) | st.sampled_from([b"[" * 5000, b"1" * 5000, b'{"images": 1e999}']))
def test_coco_parser_on_random_bytes(folder, data):
    path = folder / "random.json"
    path.write_bytes(data)
    ours(lambda: parse_coco(path))


@FUZZ
@given(doc=coco_document)
def test_coco_loader_on_wrong_documents(folder, doc):
    image = _tiny_image(folder)
    path = folder / "instances.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    loaded = ours(lambda: coco(path, images=folder).load("detection"))
    if loaded is not None:
        _read_every_sample(loaded.splits["all"], image)


# ----------------------------------------------------------------------------
# VOC
# ----------------------------------------------------------------------------

xml_text = numbers | st.text(max_size=6).map(escape)
voc_object = st.builds(
    lambda name, difficult, coords, drop: (
        "<object>"
        + (f"<name>{name}</name>" if "name" not in drop else "")
        + (f"<difficult>{difficult}</difficult>" if "difficult" not in drop else "")
        + "<bndbox>"
        + "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), coords, strict=True) if t not in drop
        )
        + "</bndbox></object>"
    ),
    st.sampled_from(["a", "b", "c", " a "]) | st.text(max_size=4).map(escape),
    xml_text,
    st.lists(xml_text, min_size=4, max_size=4),
    st.sets(st.sampled_from(["name", "difficult", "xmin", "ymax"]), max_size=2),
)
voc_document = st.lists(voc_object, max_size=4).map(lambda objs: "<annotation>" + "".join(objs) + "</annotation>")


def _voc_root(folder: Path, xml: bytes) -> Path:
    root = folder / "voc"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    if not (root / "JPEGImages" / "x.png").exists():
        write_png(root / "JPEGImages" / "x.png", np.zeros((30, 40, 3), np.uint8))
    (root / "Annotations" / "x.xml").write_bytes(xml)
    return root


@FUZZ
@given(data=st.binary(max_size=300) | voc_document.map(str.encode))
def test_voc_parser_on_random_bytes_and_wrong_documents(folder, data):
    root = _voc_root(folder, data)
    loaded = ours(lambda: voc(root, classes=["a", "b"]).load("detection"))
    assert loaded is not None  # listing never reads the XML
    _read_every_sample(loaded.splits["all"])


# ----------------------------------------------------------------------------
# YOLO
# ----------------------------------------------------------------------------

yolo_line = st.lists(numbers | st.sampled_from(["0", "1", "2", "0.5", "0.25", "1.0"]), max_size=7).map(" ".join)


def _yolo_root(folder: Path, labels: bytes) -> Path:
    root = folder / "yolo"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    if not (root / "images" / "x.png").exists():
        write_png(root / "images" / "x.png", np.zeros((30, 40, 3), np.uint8))
    (root / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    (root / "labels" / "x.txt").write_bytes(labels)
    return root


@FUZZ
@given(data=st.binary(max_size=300) | st.lists(yolo_line, max_size=5).map(lambda ls: "\n".join(ls).encode()))
def test_yolo_parser_on_random_bytes_and_wrong_lines(folder, data):
    root = _yolo_root(folder, data)
    loaded = ours(lambda: yolo(root / "images", root / "classes.txt").load("detection"))
    assert loaded is not None
    _read_every_sample(loaded.splits["all"])


# ----------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------

MODES = ["L", "P", "1", "I;16", "I", "F", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr"]


def _mask_bytes(mode: str, seed: int, flip: int | None, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 4, (5, 7), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # Pillow cannot write that mode in that format
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    if flip is not None:
        data[flip % len(data)] ^= 0xFF  # one corrupt byte somewhere (header, chunk, CRC, pixels)
    return bytes(data)


masks = st.binary(max_size=300) | st.builds(
    _mask_bytes,
    st.sampled_from(MODES),
    st.integers(0, 3),
    st.none() | st.integers(0, 10_000),
    st.sampled_from(["PNG", "BMP", "TIFF", "JPEG"]),
)
readers = st.sampled_from(
    [
        MaskReader(),
        MaskReader(ignore_value=0),
        MaskReader(colors=np.array([0, 0xFF0000], np.int64), color_ids=np.array([0, 1], np.int64)),
    ]
)


@FUZZ
@given(data=masks, reader=readers)
def test_mask_reader_on_random_bytes_and_odd_images(folder, data, reader):
    path = folder / "mask.png"
    path.write_bytes(data)
    mask = ours(lambda: reader.read(path))
    if mask is not None:
        assert mask.ndim == 2 and mask.dtype == np.int64
    palette = palette_colors(path)
    assert palette is None or all(len(c) == 3 for c in palette)
