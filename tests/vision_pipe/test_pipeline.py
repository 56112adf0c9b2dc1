"""The Python API end to end on tiny data: real Lightning runs, run directory, predict, load, resume, hooks."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
import yaml

from vision_pipe import ClassificationPrediction, DataError, Pipeline, VisionPipeError, hookimpl
from vision_pipe.cache import cache_dir
from vision_pipe.plugins import PluginManager


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny pipeline trained for 2 epochs and tested (shared by the tests of this module)."""
    import copy

    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["output_dir"] = str(tmp_path_factory.mktemp("runs"))
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    metrics = pipe.test()
    return pipe, metrics


def test_fit_and_test_write_a_complete_run_directory(trained):
    pipe, metrics = trained
    run = pipe.run_dir
    assert run.parent.name == "tiny"
    for path in [
        "config.yaml", "splits.json", "metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
        "logs/csv/metrics.csv", "logs/tensorboard", "plots/curves.png", "plots/mean_image.png",
        "plots/test/confusion_matrix.csv", "plots/test/confusion_matrix.png",
    ]:  # fmt: skip
        assert (run / path).exists(), path
    assert set(metrics) >= {"test/acc", "test/acc_top5", "test/loss", "test/error"}
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/acc_top5"] == 1.0  # 3 classes: top-5 is all
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert "val/loss" in saved and "train/loss" in saved
    # the confusion matrix counts every test image once
    rows = (run / "plots/test/confusion_matrix.csv").read_text().strip().splitlines()[1:]
    assert sum(int(v) for row in rows for v in row.split(",")[1:]) == len(pipe.splits["test"]) == 12
    assert json.loads((run / "splits.json").read_text())["sizes"] == {"train": 36, "val": 12, "test": 12}


def test_saved_config_repeats_the_run_exactly(trained, tmp_path):
    pipe, metrics = trained
    config = yaml.safe_load((pipe.run_dir / "config.yaml").read_text())
    assert config == pipe.resolved
    config["output_dir"] = str(tmp_path / "again")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    again = Pipeline.from_yaml(tmp_path / "config.yaml")
    again.fit()
    assert again.test() == pytest.approx(metrics)


def test_predict_paths_and_arrays(trained, tmp_path):
    import cv2

    pipe, _ = trained
    images = [pipe.splits["test"][i]["image"] for i in range(3)]
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    preds = pipe.predict([path, images[1], images[2]])
    assert [type(p) for p in preds] == [ClassificationPrediction] * 3
    assert preds[0].id == str(path) and preds[1].id == "array:1"
    for p in preds:
        assert p.scores.shape == (3,) and p.scores.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.class_name == pipe.class_names[p.label] and p.score == pytest.approx(p.scores.max())
    # the same image as a file and as an array gives the same prediction
    assert np.allclose(pipe.predict([images[0]])[0].scores, preds[0].scores, atol=1e-6)
    with pytest.raises(DataError, match="missing"):
        pipe.predict([tmp_path / "nope.png"])


def test_load_from_checkpoint_predicts_without_training_data(trained):
    pipe, _ = trained
    loaded = Pipeline.load(pipe.best_checkpoint)
    assert loaded.datamodule is None and loaded.class_names == pipe.class_names
    images = [pipe.splits["test"][i]["image"] for i in range(4)]
    pipe.module.load_state_dict(torch.load(pipe.best_checkpoint, weights_only=False)["state_dict"])
    expected = [p.scores for p in pipe.predict(images)]
    assert all(np.allclose(a.scores, b, atol=1e-6) for a, b in zip(loaded.predict(images), expected, strict=True))
    with pytest.raises(VisionPipeError, match="without its training data"):
        loaded.fit()


def test_resume_continues_from_the_last_checkpoint(trained, tiny_config):
    pipe, _ = trained
    tiny_config["trainer"]["max_epochs"] = 3
    tiny_config["output_dir"] = pipe.config.output_dir
    resumed = Pipeline.from_dict(tiny_config)
    resumed.fit(resume=pipe.run_dir / "checkpoints" / "last.ckpt")
    assert resumed.trainer.current_epoch == 3
    assert resumed.run_dir == pipe.run_dir  # the run continues in its own directory
    with pytest.raises(VisionPipeError, match="not found"):
        resumed.fit(resume="missing.ckpt")


def test_mean_image_is_fitted_once_and_cached(tiny_config):
    first = Pipeline.from_dict(tiny_config)
    first.fit_normalizer()
    files = list((cache_dir() / "normalization").glob("mean_image-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = Pipeline.from_dict(tiny_config)
    second.fit_normalizer()
    assert files[0].stat().st_mtime_ns == stamp
    assert torch.equal(first.stages["normalization"].mean, second.stages["normalization"].mean)
    # another input size is other preprocessing: a new cache entry
    third = Pipeline.from_dict(tiny_config, ["data.input_size=[12, 12]"])
    third.fit_normalizer()
    assert len(list((cache_dir() / "normalization").glob("mean_image-*.pt"))) == 2


def test_backbone_weights_and_freezing(tiny_config, tmp_path):
    source = Pipeline.from_dict(tiny_config)
    weights = tmp_path / "backbone.pt"
    torch.save(source.stages["backbone"].state_dict(), weights)
    tiny_config["model"]["backbone"].update(weights=str(weights), freeze=["stage1"])
    pipe = Pipeline.from_dict(tiny_config)
    backbone = pipe.stages["backbone"]
    for (name, a), b in zip(backbone.state_dict().items(), source.stages["backbone"].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in backbone.named_parameters() if n.startswith("stage1.")} and frozen
    tiny_config["model"]["backbone"]["freeze"] = ["stem"]
    with pytest.raises(VisionPipeError, match=r"freeze prefix 'stem' matches no backbone parameter.*stage1, stage2"):
        Pipeline.from_dict(tiny_config)


def test_frozen_batch_norm_keeps_its_running_statistics_in_training(tiny_config):
    tiny_config["model"]["backbone"]["freeze"] = ["stage1"]
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    backbone = pipe.stages["backbone"]
    bns = {n: m for n, m in backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert any(n.startswith("stage1.") for n in bns) and any(n.startswith("stage2.") for n in bns)
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    pipe.fit()
    for name, bn in bns.items():
        unchanged = torch.equal(bn.running_mean, before[name])
        assert unchanged == name.startswith("stage1."), name  # frozen: kept; trained: updated
    pipe.module.train()
    assert all(bn.training != n.startswith("stage1.") for n, bn in bns.items())
    reloaded = Pipeline.from_dict(tiny_config)
    reloaded.load_checkpoint(pipe.best_checkpoint)  # the state dict is that of a plain BatchNorm2d


def test_a_deterministic_run_leaves_torchs_global_flags_as_they_were(tiny_config):
    """Lightning sets torch's flags when a Trainer is made and never resets them; the pipeline restores
    them after each run, so a later model without deterministic kernels (max-unpooling) still runs."""
    import os

    def flags() -> tuple[bool, bool, str | None]:
        return (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    during = []
    recorder = types.SimpleNamespace(
        vision_pipe_before_fit=hookimpl(lambda pipeline, run_dir: during.append(flags())),
        vision_pipe_before_test=hookimpl(lambda pipeline, run_dir: during.append(flags())),
    )
    manager = PluginManager()
    manager.register(recorder, name="recorder")
    tiny_config["trainer"].update(max_epochs=1, deterministic=True, benchmark=False)
    before = flags()
    assert before[0] is False  # the test means something only from a non-deterministic process
    pipe = Pipeline.from_dict(tiny_config, manager=manager)
    pipe.fit()
    pipe.test()
    assert [d[:2] for d in during] == [(True, False), (True, False)]  # the runs themselves were deterministic
    assert all(d[2] is not None for d in during)
    assert flags() == before
    unpool = torch.nn.MaxUnpool2d(2)
    pooled, indices = torch.nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True)
    assert unpool(pooled, indices).shape == (1, 1, 4, 4)  # no deterministic kernel: refused while the flag stayed set


def test_lifecycle_hooks_are_called_in_order(tiny_config):
    calls = []
    recorder = types.SimpleNamespace()

    @hookimpl
    def vision_pipe_config_resolved(config):
        calls.append("config_resolved")
        config["seed"] = 7  # a hook may adjust the config before validation

    @hookimpl
    def vision_pipe_pipeline_built(pipeline):
        calls.append("pipeline_built")

    @hookimpl
    def vision_pipe_before_fit(pipeline, run_dir):
        calls.append("before_fit")
        assert (run_dir / "config.yaml").exists()

    @hookimpl
    def vision_pipe_after_fit(pipeline, run_dir, metrics):
        calls.append("after_fit")
        assert "val/loss" in metrics

    @hookimpl
    def vision_pipe_on_error(pipeline, action, error):
        calls.append(f"on_error:{action}:{type(error).__name__}")

    for name, fn in list(locals().items()):
        if name.startswith("vision_pipe_"):
            setattr(recorder, name, fn)
    manager = PluginManager()
    manager.register(recorder, name="recorder")
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config, manager=manager)
    assert pipe.config.seed == 7
    pipe.fit()
    with pytest.raises(VisionPipeError):
        pipe.test(ckpt="missing.ckpt")
    # a missing checkpoint fails inside the test action: the error hook hears of it
    assert calls == ["config_resolved", "pipeline_built", "before_fit", "after_fit", "on_error:test:VisionPipeError"]
