"""Shared fixtures: a tiny pipeline (16×16 synthetic shapes, a 2-stage VGG) that trains in seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "task": "classification",
    "seed": 0,
    "data": {
        "loader": {"name": "synthetic_shapes", "num_images": 60, "size": 16, "seed": 0},
        "input_size": [16, 16],
        "batch_size": 16,
        "num_workers": 0,
        "normalization": {"name": "mean_image"},
        "augmentation": [{"name": "HorizontalFlip", "p": 0.5}],
    },
    "model": {
        "backbone": {"name": "vgg", "depth": 8, "width": 4, "stages": 2},
        "head": {"name": "classification", "dropout": 0.1},
    },
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {
        "max_epochs": 2,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    },
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own normalization cache."""
    monkeypatch.setenv("VISION_PIPE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict[str, Any]:
    """A fresh copy of the tiny pipeline config whose runs go under ``tmp_path/runs``."""
    config = copy.deepcopy(TINY)
    config["output_dir"] = str(tmp_path / "runs")
    return config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of the tiny pipeline fitted for one epoch, once per test module."""
    from vision_pipe import Pipeline

    config = copy.deepcopy(TINY)
    config["output_dir"] = str(tmp_path_factory.mktemp("runs"))
    config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    assert pipe.run_dir is not None
    return pipe.run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture
def write_yaml(tmp_path: Path):
    """``write_yaml(name, data_or_text) -> Path`` writes a YAML file under ``tmp_path``."""

    def write(name: str, content: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write
