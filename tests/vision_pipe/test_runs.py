"""What a run writes and when: artifacts from Lightning callbacks (also for a fit that fails
half-way), one error boundary per public action, and no global warning state changed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from vision_pipe import Pipeline, VisionPipeError, hookimpl
from vision_pipe.plugins import PluginManager

FAILING_BACKBONE = textwrap.dedent(
    '''
    from torch import nn

    from vision_pipe import Backbone, FeatureInfo, Features, hookimpl, stage


    class FailsLater(Backbone):
        """A small conv backbone whose training forward fails at call ``fail_at`` (counting from 1)."""

        def __init__(self, fail_at: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.feature_info = [FeatureInfo("c1", 4, 2)]
            self.fail_at = fail_at
            self.calls = 0

        def forward(self, images):
            if self.training:
                self.calls += 1
                if self.calls == self.fail_at:
                    raise RuntimeError("the backbone broke in the middle of training")
            return Features(maps={"c1": self.conv(images)})


    @stage("backbone", "fails_later")
    def fails_later(fail_at: int = 5) -> Backbone:
        return FailsLater(fail_at)


    @hookimpl
    def vision_pipe_stages():
        return [fails_later]
    '''
)


def test_a_fit_that_fails_half_way_keeps_the_metrics_and_curves_of_finished_epochs(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "failing_backbone.py").write_text(FAILING_BACKBONE)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config["plugins"] = ["failing_backbone"]
    tiny_config["model"]["backbone"] = {"name": "fails_later", "fail_at": 5}  # 3 steps per epoch: fails in epoch 2
    tiny_config["trainer"]["max_epochs"] = 3
    pipe = Pipeline.from_dict(tiny_config)
    with pytest.raises(RuntimeError, match="broke in the middle"):
        pipe.fit()
    metrics = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert metrics["fit/epochs"] == 1.0 and "val/loss" in metrics and "train/loss" in metrics
    assert metrics["data/checked"] == 60.0
    assert (pipe.run_dir / "plots" / "curves.png").stat().st_size > 0
    assert list((pipe.run_dir / "plots").glob("mean_image*")), "the normalizer's artifacts"
    status = json.loads((pipe.run_dir / "run.json").read_text())
    assert status["status"] == "failed" and "broke in the middle" in status["error"]
    assert status["seconds"] > 0 and status["ended"] >= status["started"]


def test_a_successful_fit_and_test_write_their_artifacts(tiny_config):
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    fit = pipe.fit()
    test = pipe.test()
    metrics = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert metrics["fit/epochs"] == fit["fit/epochs"] == 1.0
    assert metrics["test/acc"] == pytest.approx(test["test/acc"])
    assert not any(k.startswith("test/") for k in fit)
    assert (pipe.run_dir / "plots" / "curves.png").exists()
    status = json.loads((pipe.run_dir / "run.json").read_text())
    assert status["status"] == "finished" and "error" not in status and status["seconds"] > 0
    assert (pipe.run_dir / "report.html").is_file(), "a test writes the run's report"
    assert not list(pipe.run_dir.rglob("*.tmp")), "atomic writes leave no temporary files"


def _recording_manager() -> tuple[PluginManager, list[str]]:
    calls: list[str] = []
    recorder = types.SimpleNamespace()

    @hookimpl
    def vision_pipe_on_error(pipeline, action, error):
        calls.append(f"{action}:{type(error).__name__}")

    recorder.vision_pipe_on_error = vision_pipe_on_error
    manager = PluginManager()
    manager.register(recorder, name="recorder")
    return manager, calls


def test_every_failing_action_fires_the_error_hook_exactly_once(tiny_config, tmp_path: Path):
    tiny_config["trainer"]["max_epochs"] = 1
    manager, calls = _recording_manager()
    pipe = Pipeline.from_dict(tiny_config, manager=manager)
    failures = [
        ("fit", lambda: pipe.fit(resume=tmp_path / "missing.ckpt"), VisionPipeError),
        ("validate", lambda: pipe.validate(), VisionPipeError),  # nothing to validate before a fit
        ("test", lambda: pipe.test(ckpt=tmp_path / "missing.ckpt"), VisionPipeError),
        ("predict", lambda: pipe.predict([np.zeros((4, 4), np.float32)]), VisionPipeError),
        ("predict", lambda: pipe.predict([tmp_path / "x.png"], ckpt=tmp_path / "missing.ckpt"), VisionPipeError),
    ]
    for action, call, error in failures:
        calls.clear()
        with pytest.raises(error):
            call()
        assert len(calls) == 1 and calls[0].startswith(f"{action}:"), (action, calls)


def test_a_run_directory_that_cannot_be_made_fires_the_error_hook(tiny_config, tmp_path: Path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the runs should go")
    tiny_config["output_dir"] = str(blocker)
    manager, calls = _recording_manager()
    pipe = Pipeline.from_dict(tiny_config, manager=manager)
    with pytest.raises(OSError):
        pipe.fit()
    assert len(calls) == 1 and calls[0].startswith("fit:")


def test_importing_vision_pipe_leaves_warning_and_logging_state_alone():
    code = textwrap.dedent(
        """
        import logging, warnings
        import pytorch_lightning
        before = list(warnings.filters)
        import vision_pipe, vision_pipe.pipeline, vision_pipe.cli, vision_pipe.trainer, vision_pipe.runs
        assert warnings.filters == before, "warning filters changed"
        assert not logging.getLogger("pytorch_lightning.utilities.rank_zero").filters, "logging filter installed"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_lightning_filters_are_scoped_to_the_trainer(tiny_config):
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    pipe.fit()
    assert not logging.getLogger("pytorch_lightning.utilities.rank_zero").filters
