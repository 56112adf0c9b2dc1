"""A diverging run stops and says so (issue #11, section 4): real tiny runs, no mocks."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from vision_pipe import Pipeline, StageContext, TrainingError, hookimpl, stage
from vision_pipe.cli import main
from vision_pipe.plugins import PluginManager


class _InfGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose update makes the weights non-finite."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * float("inf")


def _manager_with_inf_head(at: set[int], *, gradient: bool = False) -> PluginManager:
    """A manager with head ``inf_at``: the classification head whose training loss (or, with ``gradient``,
    only its gradient) is inf at the steps in ``at``."""

    @stage("head", "inf_at")
    def inf_at(context: StageContext) -> torch.nn.Module:
        """The classification head, with an infinite training loss at chosen steps (0-based)."""
        head = PluginManager().registry.get("head", "classification").build({}, context)
        calls = {"n": 0}
        loss = head.loss

        def poisoned(outputs, batch):  # type: ignore[no-untyped-def]
            losses = loss(outputs, batch)
            if head.training:
                if calls["n"] in at:
                    poisoned_loss = _InfGradient.apply(losses["loss"]) if gradient else losses["loss"] * float("inf")
                    losses = {**losses, "loss": poisoned_loss}
                calls["n"] += 1
            return losses

        head.loss = poisoned
        return head

    module = types.ModuleType("inf_head_plugin")
    module.vision_pipe_stages = hookimpl(lambda: [inf_at])  # type: ignore[attr-defined]
    manager = PluginManager()
    manager.register(module, name="inf_head_plugin")
    return manager


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs").rglob("*.ckpt"))


def test_a_learning_rate_that_diverges_stops_the_fit_with_exit_status_2(tiny_config, write_yaml, tmp_path, capsys):
    tiny_config["optimizer"] = {"name": "sgd", "lr": 1e30}
    tiny_config["trainer"]["max_epochs"] = 3
    code = main(["fit", str(write_yaml("p.yaml", tiny_config)), "--no-test"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training diverged: the loss became non-finite" in err
    assert "epoch 0, step" in err and "optimizer.lr" in err and "trainer.precision" in err
    assert "Traceback" not in err
    assert _checkpoints(tmp_path) == []  # no checkpoint of NaN weights, least of all a best one
    assert "fit finished" not in capsys.readouterr().out


def test_an_inf_loss_at_a_later_step_stops_within_that_step(tiny_config, tmp_path):
    tiny_config["model"]["head"] = {"name": "inf_at"}
    tiny_config["trainer"]["max_epochs"] = 3
    pipe = Pipeline.from_dict(tiny_config, manager=_manager_with_inf_head({5}))
    with pytest.raises(TrainingError, match=r"at epoch 1, step 6, batch 2 of the epoch"):
        pipe.fit()
    # epoch 0 finished with finite weights: its checkpoints may exist, and they are finite
    assert pipe.trainer is not None and pipe.trainer.global_step == 6
    for ckpt in _checkpoints(tmp_path):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt
        assert torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] == 0


def test_weights_made_non_finite_by_a_finite_loss_stop_before_any_checkpoint(tiny_config, tmp_path):
    tiny_config["model"]["head"] = {"name": "inf_at"}
    # the last step of epoch 0 (3 batches) has a finite loss and an infinite gradient: the weights become NaN
    pipe = Pipeline.from_dict(tiny_config, manager=_manager_with_inf_head({2}, gradient=True))
    with pytest.raises(TrainingError, match=r"the weights became non-finite \(NaN or inf\) at epoch 0, step 3"):
        pipe.fit()
    assert _checkpoints(tmp_path) == []


def test_skip_batch_skips_the_step_and_counts_it(tiny_config, tmp_path):
    tiny_config["model"]["head"] = {"name": "inf_at"}
    tiny_config["guard"] = {"on_nonfinite": "skip_batch"}
    pipe = Pipeline.from_dict(tiny_config, manager=_manager_with_inf_head({1, 4}))
    metrics = pipe.fit()
    assert metrics["train/skipped_batches"] == 2
    assert pipe.run_dir is not None
    recorded = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert recorded["train/skipped_batches"] == 2
    assert recorded["train/loss"] is not None and recorded["train/loss"] == recorded["train/loss"]


def test_a_skipped_batch_changes_no_weight(tiny_config):
    tiny_config["model"]["head"] = {"name": "inf_at"}
    tiny_config["guard"] = {"on_nonfinite": "skip_batch"}
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config, manager=_manager_with_inf_head({0, 1, 2}))  # every step of the epoch
    before = {k: v.clone() for k, v in pipe.module.named_parameters()}
    assert pipe.fit()["train/skipped_batches"] == 3
    for name, value in pipe.module.named_parameters():
        assert torch.equal(value.detach().cpu(), before[name].cpu()), name


def test_guard_option_is_validated(tiny_config):
    from vision_pipe import ConfigError

    tiny_config["guard"] = {"on_nonfinite": "ignore"}
    with pytest.raises(ConfigError, match="guard.on_nonfinite"):
        Pipeline.from_dict(tiny_config)


# ----------------------------------------------------------------------------
# a class left without samples after on_bad_sample: skip
# ----------------------------------------------------------------------------


def _folders(root: Path) -> None:
    """``root/{train,val,test}/{cat,dog}/``; the only training 'dog' image is a broken file."""
    import cv2
    import numpy as np

    for split in ("train", "val", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8, 3), 40 + 100 * i, np.uint8))
    for png in (root / "train" / "dog").glob("*.png"):
        png.write_bytes(b"not a png")


def test_a_class_left_without_training_samples_is_a_warning_and_counted(tiny_config, write_yaml, tmp_path, capsys):
    _folders(tmp_path / "data")
    tiny_config["data"].update(loader={"name": "image_folder", "root": str(tmp_path / "data")}, on_bad_sample="skip")
    tiny_config["data"]["input_size"] = [8, 8]
    tiny_config["model"]["backbone"]["stages"] = 1
    tiny_config["trainer"]["max_epochs"] = 1
    code = main(["fit", str(write_yaml("p.yaml", tiny_config)), "--no-test"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: pre-flight: 1 class(es) have no sample in the train split: 'dog'; the model never sees them" in err
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["data/empty_classes"] == 1.0
    assert json.loads((run_dir / "preflight.json").read_text())["empty_classes"] == {"train": ["dog"]}


def test_every_class_present_means_no_warning(tiny_config, tmp_path, caplog):
    pipe = Pipeline.from_dict(tiny_config)
    report = pipe.preflight()
    assert report.empty_classes(pipe.class_names) == {}
    assert sum(report.class_counts["train"]) == report.checked["train"]  # one label per classification sample
    assert "no sample" not in caplog.text
