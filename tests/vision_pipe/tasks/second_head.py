"""Shared by the task tests (imported, not collected): a real short Lightning run of a pipeline whose
head is defined in a test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vision_pipe import Pipeline, hookimpl
from vision_pipe.plugins import PluginManager
from vision_pipe.testing import BoringPlugin


def second_head_pipeline(factory: Callable[..., Any], task: str, output_dir: Path) -> Pipeline:
    """A pipeline of ``task``: 24 synthetic 32×32 images, the boring backbone and the head ``factory``
    (a stage registered by a plugin of this test), 1 epoch on the CPU."""

    class SecondHeadPlugin:
        @hookimpl
        def vision_pipe_stages(self) -> list[Any]:
            return [factory]

    manager = PluginManager()
    manager.register(BoringPlugin(), name="boring")
    manager.register(SecondHeadPlugin(), name="second_head")
    config = {
        "name": f"second_{task}_head",
        "task": task,
        "seed": 0,
        "data": {
            "loader": {"name": "synthetic_shapes", "num_images": 24, "size": 32, "seed": 0},
            "input_size": [32, 32],
            "batch_size": 8,
            "num_workers": 0,
            "normalization": {"name": "mean_image"},
        },
        "model": {"backbone": {"name": "boring", "width": 4, "stages": 3}, "head": {"name": "second"}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
        },
        "output_dir": str(output_dir),
    }
    return Pipeline.from_dict(config, manager=manager)


def run_second_head(factory: Callable[..., Any], task: str, tmp_path: Path) -> tuple[Pipeline, dict[str, float]]:
    """Fit and test :func:`second_head_pipeline` (runs under ``tmp_path``); the pipeline and its test metrics."""
    pipe = second_head_pipeline(factory, task, tmp_path / "runs")
    pipe.fit()
    return pipe, pipe.test()
