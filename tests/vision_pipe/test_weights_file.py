"""What ``model.backbone.weights`` may name: a file, a run folder (best.ckpt, else last.ckpt) or a pipeline's
runs folder (its newest run); anything else is a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vision_pipe import ConfigError
from vision_pipe.finetune import weights_file

WHERE = "p.yaml:12: model.backbone"


def _run(root: Path, name: str, *checkpoints: str) -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    for ckpt in checkpoints:
        (run / "checkpoints" / ckpt).write_bytes(b"x")
    return run


def test_a_file_is_itself(tmp_path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"x")
    assert weights_file(path, WHERE) == path


def test_a_run_folder_gives_its_best_checkpoint_else_its_last(tmp_path) -> None:
    both = _run(tmp_path, "a", "best.ckpt", "last.ckpt")
    assert weights_file(both, WHERE) == both / "checkpoints" / "best.ckpt"
    last_only = _run(tmp_path, "b", "last.ckpt")
    assert weights_file(last_only, WHERE) == last_only / "checkpoints" / "last.ckpt"


def test_a_runs_folder_gives_its_newest_run_with_a_checkpoint(tmp_path) -> None:
    runs = tmp_path / "shapes_autoencoder"
    _run(runs, "20261207-101500", "best.ckpt")
    newest = _run(runs, "20261207-111500", "best.ckpt")
    _run(runs, "20261207-121500")  # started, no checkpoint yet
    assert weights_file(runs, WHERE) == newest / "checkpoints" / "best.ckpt"


def test_a_folder_without_checkpoints_or_a_missing_path_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"p\.yaml:12.*model\.backbone\.weights.*holds no run checkpoint"):
        weights_file(tmp_path, WHERE)
    with pytest.raises(ConfigError, match=r"model\.backbone\.weights.*backbone weights file not found"):
        weights_file(tmp_path / "missing.ckpt", WHERE)
