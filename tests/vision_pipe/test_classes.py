"""vision_pipe.classes: the one reader of class files, and the VOC palette."""

from __future__ import annotations

from pathlib import Path

import pytest

from vision_pipe import DataError, parse_classes, read_class_file, voc_palette


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_voc_palette_matches_the_devkit_colours() -> None:
    # VOC devkit: background black, aeroplane (128,0,0), bicycle (0,128,0), bird (128,128,0), ..., person (192,128,128)
    colors = voc_palette(16)
    assert colors[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert colors[15] == (192, 128, 128)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.txt", "cat\n dog \n\n"),
        ("c.names", "cat\ndog\n"),
        ("c.yaml", "[cat, dog]\n"),
        ("c.yml", "names: {0: cat, 1: dog}\nnc: 2\n"),
        ("c.json", '{"0": "cat", "1": {"name": "dog", "color": "#00ff00"}}'),
    ],
)
def test_every_format_gives_the_same_names(tmp_path: Path, name: str, text: str) -> None:
    assert read_class_file(_write(tmp_path / name, text)).names == ["cat", "dog"]


def test_colours_are_kept_where_given(tmp_path: Path) -> None:
    spec = read_class_file(_write(tmp_path / "c.yaml", "[bg, {name: cat, color: [255, 0, 0]}, {name: dog, color: '#00ff00'}]"))
    assert spec.colors == [None, (255, 0, 0), (0, 255, 0)]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([], "no class names"),
        (["a", "a"], r"\['a'\] appear more than once"),
        ({0: "a", 2: "b"}, r"given \[0, 2\], missing \[1\]"),
        ({"train": "x"}, "key 'train' is not a class id"),
        ("a b", "expected a list"),
    ],
)
def test_bad_classes_name_the_source(data: object, problem: str) -> None:
    with pytest.raises(DataError, match=rf"'classes'.*{problem}"):
        parse_classes(data, "'classes'")


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"YOLO classes file .*n.txt does not exist: set 'classes'"):
        read_class_file(tmp_path / "n.txt", what="YOLO classes file", fix="set 'classes'")
