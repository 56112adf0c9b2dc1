"""vision_pipe.io: listing, path checks, file stamps and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vision_pipe import (
    DataError,
    atomic_torch_save,
    atomic_write_text,
    file_stamp,
    list_files,
    list_images,
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
