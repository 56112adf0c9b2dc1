"""A crash or a kill loses at most one epoch: last.ckpt after every epoch, kill -9 and resume to the
same result, resume errors naming the file and what differs, and a stopped run writes nothing."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from vision_pipe import Pipeline, VisionPipeError, hookimpl


def _read(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _runs(config: dict[str, Any]) -> list[Path]:
    root = Path(config["output_dir"]) / config["name"]
    return sorted(root.iterdir()) if root.exists() else []


def test_last_checkpoint_is_the_last_finished_epoch_even_when_the_monitor_never_improves(tiny_config, monkeypatch):
    synced = _record_fsync(monkeypatch)
    tiny_config["trainer"]["max_epochs"] = 4
    # top-5 accuracy of 3 classes is always 1.0: best.ckpt stays at the first epoch
    tiny_config["checkpoint"] = {"monitor": "val/acc_top5", "mode": "max"}
    pipe = Pipeline.from_dict(tiny_config)
    pipe.fit()
    checkpoints = pipe.run_dir / "checkpoints"
    last, best = _read(checkpoints / "last.ckpt"), _read(checkpoints / "best.ckpt")
    assert (last["epoch"], last["global_step"]) == (3, 12)  # the 4th epoch (0-based 3), 3 steps each
    assert best["epoch"] == 0
    assert {p.name for p in checkpoints.iterdir()} == {"best.ckpt", "last.ckpt"}
    assert set(last["callbacks"]) >= {"RandomState"}, "the random state travels with the checkpoint"
    # Lightning's checkpoint files go through the one atomic writer: temporary file fsynced, then the folder
    assert any(Path(p).name.startswith(".last.ckpt.") and p.endswith(".tmp") for p in synced), synced
    assert str(checkpoints) in synced


def _record_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths ``os.fsync`` is called on from now on (through /proc: Linux only)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the files fsync is called on")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_the_atomic_writer_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    from vision_pipe.io import atomic_write_text

    synced = _record_fsync(monkeypatch)
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}")
    assert len(synced) == 2 and Path(synced[0]).name.startswith(".metrics.json.") and synced[1] == str(tmp_path)
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# The killed run: a subprocess that trains the config in argv[1] and stops (sleeps) at the second batch of
# epoch KILL_EPOCH, after touching argv[2], so that the test kills it in the middle of that epoch.
KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import pytorch_lightning as pl

    from vision_pipe import Pipeline, hookimpl
    from vision_pipe.plugins import PluginManager

    config, marker, kill_epoch = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


    class StopsHere(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == kill_epoch and batch_idx == 1:
                marker.write_text("in epoch %d" % kill_epoch)
                time.sleep(120)


    class Harness:
        @hookimpl
        def vision_pipe_before_fit(self, pipeline, run_dir):
            pipeline.trainer.callbacks.append(StopsHere())


    manager = PluginManager()
    manager.register(Harness(), name="harness")
    Pipeline.from_dict(config, manager=manager).fit()
    """
)


def _deterministic(config: dict[str, Any]) -> dict[str, Any]:
    config["trainer"].update(max_epochs=4, deterministic=True)
    config["scheduler"] = {"name": "plateau", "patience": 0}  # the rate halves when val/loss does not improve
    config["early_stopping"] = {"patience": 10}
    return config


def test_a_run_killed_in_epoch_k_resumes_at_epoch_k_and_ends_as_an_uninterrupted_run(tiny_config, tmp_path):
    config = _deterministic(tiny_config)
    kill_epoch = 2  # 0-based: the third epoch; epochs 0 and 1 are finished
    marker = tmp_path / "marker"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    log = tmp_path / "killed_run.log"
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(config), str(marker), str(kill_epoch)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the killed run never reached its epoch"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (run_dir,) = _runs(config)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert _read(last)["epoch"] == kill_epoch - 1, "last.ckpt is the last finished epoch"
    assert not list(run_dir.rglob("*.tmp")), "no half-written file left behind"

    resumed = Pipeline.from_dict(copy.deepcopy(config))
    started: list[int] = []
    resumed.manager.register(_EpochRecorder(started), name="epochs")
    resumed_metrics = resumed.fit(resume=last)
    assert resumed.run_dir == run_dir and started[0] == kill_epoch, started

    config["output_dir"] = str(tmp_path / "uninterrupted")
    whole = Pipeline.from_dict(config)
    whole_metrics = whole.fit()
    assert whole_metrics["fit/epochs"] == resumed_metrics["fit/epochs"] == 4.0
    assert resumed_metrics == pytest.approx(whole_metrics, rel=1e-6, abs=1e-7)
    for name in ("last.ckpt", "best.ckpt"):
        a, b = _read(run_dir / "checkpoints" / name), _read(whole.run_dir / "checkpoints" / name)
        assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
        for key, value in b["state_dict"].items():
            assert torch.allclose(a["state_dict"][key].float(), value.float(), atol=1e-6), key
        assert a["lr_schedulers"] == b["lr_schedulers"]
    es = [v for k, v in _read(whole.run_dir / "checkpoints" / "last.ckpt")["callbacks"].items() if "EarlyStopping" in k]
    es_resumed = [v for k, v in _read(last)["callbacks"].items() if "EarlyStopping" in k]
    assert es and es[0]["wait_count"] == es_resumed[0]["wait_count"]


class _EpochRecorder:
    """A plugin that records the epoch each training epoch of the fit starts at."""

    def __init__(self, started: list[int]) -> None:
        self.started = started

    @hookimpl
    def vision_pipe_before_fit(self, pipeline, run_dir):
        import pytorch_lightning as pl

        started = self.started

        class Record(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                started.append(trainer.current_epoch)

        pipeline.trainer.callbacks.append(Record())


# ----------------------------------------------------------------------------
# Resume errors: one message naming the file and what differs, nothing written
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny pipeline trained for one epoch: (its config, its last.ckpt)."""
    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["output_dir"] = str(tmp_path_factory.mktemp("runs"))
    config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    return config, pipe.run_dir / "checkpoints" / "last.ckpt"


def _refused(config: dict[str, Any], checkpoint: Path, *patterns: str) -> str:
    """Resume ``config`` from ``checkpoint``: our error naming the file and each pattern; no run directory made."""
    config = copy.deepcopy(config)
    before = _runs(config)
    pipe = Pipeline.from_dict(config)
    with pytest.raises(VisionPipeError) as error:
        pipe.fit(resume=checkpoint)
    message = str(error.value)
    assert str(checkpoint) in message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    assert _runs(config) == before and pipe.run_dir is None, "a refused resume writes nothing"
    return message


def test_resume_from_a_truncated_checkpoint_is_refused(finished, tmp_path):
    config, last = finished
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    _refused(config, truncated, "not a complete checkpoint", "truncated")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _refused(config, empty, "not a complete checkpoint")


def test_resume_from_another_pipelines_checkpoint_names_what_differs(finished, tmp_path):
    config, last = finished
    wider = copy.deepcopy(config)
    wider["model"]["backbone"]["width"] = 8
    _refused(wider, last, "another pipeline", r"model\.backbone\.width: 4 in the checkpoint, 8 here")
    two_shapes = copy.deepcopy(config)
    two_shapes["data"]["loader"]["shapes"] = ["circle", "square"]
    _refused(
        two_shapes, last, "another pipeline", r"class names: \[.*\] in the checkpoint, \['circle', 'square'\] here"
    )
    sgd = copy.deepcopy(config)
    sgd["optimizer"] = {"name": "sgd", "lr": 0.01}
    _refused(sgd, last, r"optimizer\.name: 'adam' in the checkpoint, 'sgd' here")


def test_resume_with_mismatched_shapes_or_weights_only_is_refused(finished, tmp_path):
    config, last = finished
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("head.") and v.ndim == 2)
    ckpt["state_dict"][key] = torch.zeros(7, 5)
    reshaped = tmp_path / "reshaped.ckpt"
    torch.save(ckpt, reshaped)
    _refused(config, reshaped, "do not fit this pipeline's model", rf"{re.escape(key)} is \(7, 5\) in the checkpoint")
    weights_only = tmp_path / "weights.ckpt"
    torch.save({"state_dict": ckpt["state_dict"], "vision_pipe": ckpt["vision_pipe"]}, weights_only)
    _refused(config, weights_only, "weights only", "optimizer_states")


# ----------------------------------------------------------------------------
# A stopped run writes nothing
# ----------------------------------------------------------------------------

BROKEN_STAGES = textwrap.dedent(
    """
    from torch import nn

    from vision_pipe import Backbone, FeatureInfo, Features, Normalizer, StageError, hookimpl, stage


    class CannotFit(Normalizer):
        def fit(self, images):
            raise StageError("cannot_fit: this normalization refuses every training set")

        def forward(self, images):
            return images / 255.0


    class FailsFirstStep(Backbone):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.feature_info = [FeatureInfo("c1", 4, 2)]

        def forward(self, images):
            if self.training:
                raise RuntimeError("the first training step broke")
            return Features(maps={"c1": self.conv(images)})


    @stage("normalization", "cannot_fit")
    def cannot_fit() -> Normalizer:
        return CannotFit()


    @stage("backbone", "fails_first_step")
    def fails_first_step() -> Backbone:
        return FailsFirstStep()


    @hookimpl
    def vision_pipe_stages():
        return [cannot_fit, fails_first_step]
    """
)


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"normalization": {"name": "cannot_fit"}}},
        {"model": {"backbone": {"name": "fails_first_step"}}},
        {"trainer": {"strategy": "no_such_strategy"}},
        {"trainer": {"max_epochs": "three"}},
    ],
    ids=["normalization", "first-step", "trainer-strategy", "trainer-max-epochs"],
)
def test_a_run_stopped_before_its_first_training_step_writes_nothing(
    change, tiny_config, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "broken_stages.py").write_text(BROKEN_STAGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_config["plugins"] = ["broken_stages"]
    for section, values in change.items():
        tiny_config[section].update(values)
    # the error is ours or Lightning's (trainer values are checked by `check`): the point is what is left
    with pytest.raises(Exception) as error:  # noqa: PT011
        Pipeline.from_dict(tiny_config).fit()
    assert not Path(tiny_config["output_dir"], "tiny").exists(), f"{type(error.value).__name__}: {error.value}"


def test_cli_resume_from_a_truncated_checkpoint_is_one_message(finished, write_yaml, tmp_path, capsys):
    from vision_pipe.cli import main

    config, last = finished
    config = copy.deepcopy(config)
    config["output_dir"] = str(tmp_path / "runs")
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(last.read_bytes()[:1000])
    assert main(["fit", str(write_yaml("p.yaml", config)), "--resume", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert str(truncated) in err and "not a complete checkpoint" in err and "Traceback" not in err
    assert _runs(config) == []
