"""The GPU-path switches on the CPU: ``model.channels_last`` and ``model.compile`` (config → module → Trainer)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from vision_pipe import ConfigError, Pipeline
from vision_pipe.module import PipelineModule


def _with(config: dict[str, Any], **model: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["model"].update(model)
    return config


def test_switches_are_off_by_default_and_saved_in_the_resolved_config(tiny_config) -> None:
    pipe = Pipeline.from_dict(tiny_config)
    assert pipe.resolved["model"]["channels_last"] is False and pipe.resolved["model"]["compile"] is False
    assert pipe.module.compile_mode is None and not pipe.module.channels_last
    conv = next(p for p in pipe.module.backbone.parameters() if p.ndim == 4)
    assert conv.is_contiguous()


def test_compile_accepts_a_mode_and_rejects_others(tiny_config) -> None:
    assert Pipeline.from_dict(_with(tiny_config, compile="max-autotune")).module.compile_mode == "max-autotune"
    assert Pipeline.from_dict(_with(tiny_config, compile=True)).module.compile_mode == "default"
    with pytest.raises(ConfigError, match="model.compile"):
        Pipeline.from_dict(_with(tiny_config, compile="fastest"))


def test_channels_last_changes_the_memory_format_of_weights_and_inputs(tiny_config) -> None:
    pipe = Pipeline.from_dict(_with(tiny_config, channels_last=True))
    convs = [p for p in pipe.module.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    seen: list[torch.Tensor] = []
    pipe.module.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    logits = pipe.module(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    # the same numbers as the default layout
    plain = Pipeline.from_dict(tiny_config)
    plain.module.load_state_dict(pipe.module.state_dict())
    pipe.module.eval(), plain.module.eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(pipe.module(images), plain.module(images), rtol=1e-4, atol=1e-5)
    assert logits.shape == (4, 3)


def test_channels_last_trains_and_checkpoints_load_into_the_default_layout(tiny_config) -> None:
    config = _with(tiny_config, channels_last=True)
    config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    loaded = Pipeline.load(pipe.best_checkpoint)
    assert loaded.config.model.channels_last  # the saved config carries the switch
    plain = Pipeline.from_dict(tiny_config)
    plain.load_checkpoint(pipe.best_checkpoint)  # parameter names do not depend on the layout


def test_compile_wraps_the_backbone_when_a_trainer_sets_up(tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PipelineModule, "compile_backend", "eager")  # no compiler toolchain in tests
    config = _with(tiny_config, compile=True)
    config["trainer"].update(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    pipe = Pipeline.from_dict(config)
    assert getattr(pipe.module.backbone, "_compiled_call_impl", None) is None  # not before a run
    names = [n for n, _ in pipe.module.named_parameters()]
    pipe.fit()
    assert pipe.module.backbone._compiled_call_impl is not None
    assert [n for n, _ in pipe.module.named_parameters()] == names  # checkpoints keep their keys
    assert set(pipe.test()) >= {"test/acc", "test/loss"}


def test_cpu_training_leaves_the_workers_their_cores(monkeypatch):
    import pytorch_lightning as pl

    from vision_pipe.data import cpu_count as _cpu_count
    from vision_pipe.trainer import cpu_threads as _cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    before = torch.get_num_threads()
    with _cpu_threads(trainer, 1):
        assert torch.get_num_threads() == max(1, _cpu_count() - 1)
    assert torch.get_num_threads() == before
    with _cpu_threads(trainer, 0):  # no workers: the data loads in this process, between steps
        assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice wins
    with _cpu_threads(trainer, 1):
        assert torch.get_num_threads() == before
