"""The ``unlabelled_folder`` loader: every image below the root (recursively, hidden ones skipped), no labels,
one ``all`` source; clear errors for an empty folder and another task."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_pipe import DataError, StageError
from vision_pipe_plugins.loading.unlabelled_folder import unlabelled_folder


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((6, 5, 3), value, np.uint8))


def test_every_image_below_the_root_without_labels(tmp_path) -> None:
    _image(tmp_path / "b.png", 10)
    _image(tmp_path / "sub" / "deeper" / "a.jpg", 20)
    _image(tmp_path / ".hidden" / "c.png", 30)
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = unlabelled_folder(tmp_path).load("reconstruction")
    assert loaded.class_names == [] and set(loaded.splits) == {"all"}
    source = loaded.splits["all"]
    assert [Path(source[i]["id"]).name for i in range(len(source))] == ["b.png", "a.jpg"]
    sample = source[0]
    assert set(sample) == {"id", "image"} and sample["image"].shape == (6, 5, 3) and int(sample["image"][0, 0, 0]) == 10
    assert source.fingerprint() == unlabelled_folder(tmp_path).load("reconstruction").splits["all"].fingerprint()


def test_an_empty_folder_and_another_task_are_clear_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="holds no images"):
        unlabelled_folder(tmp_path).load("reconstruction")
    with pytest.raises(StageError, match="unlabelled_folder': unknown task 'classification'; it serves reconstruction"):
        unlabelled_folder(tmp_path).load("classification")
