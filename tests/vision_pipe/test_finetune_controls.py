"""Fine-tuning controls (issue #12 §4): gradual unfreezing, the backbone's own learning rate under every
schedule, and the report (or error) of loading backbone weights, strict or not."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
import torch

from vision_pipe import Pipeline, VisionPipeError
from vision_pipe.config import OptimizerConfig, SchedulerConfig
from vision_pipe.finetune import FrozenBatchNorm2d, UnfreezeBackbone
from vision_pipe.module import make_optimizer, make_scheduler


def _stage(pipe: Pipeline, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pipe.stages["backbone"].named_parameters() if n.startswith(prefix)}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


def _record_epochs(pipe: Pipeline) -> list[dict[str, Any]]:
    """After each training epoch: stage1's and stage2's weights, stage1's BN statistics and the optimizer's groups."""
    seen: list[dict[str, Any]] = []
    module = pipe.module
    original = module.on_train_epoch_end
    bn = pipe.stages["backbone"].get_submodule("stage1.convs.1")
    assert isinstance(bn, torch.nn.BatchNorm2d)

    def record() -> None:
        original()
        groups = module.trainer.optimizers[0].param_groups
        seen.append(
            {
                "stage1": _stage(pipe, "stage1."),
                "stage2": _stage(pipe, "stage2."),
                "bn_mean": bn.running_mean.clone(),
                "bn_frozen": isinstance(bn, FrozenBatchNorm2d),
                "groups": {g["name"]: (g["lr"], len(g["params"])) for g in groups},
            }
        )

    module.on_train_epoch_end = record  # type: ignore[method-assign]
    return seen


def test_unfreeze_at_epoch_trains_the_frozen_layers_from_that_epoch(tiny_config):
    tiny_config["model"]["backbone"].update(freeze=["stage1"], unfreeze_at_epoch=1)
    tiny_config["optimizer"].update(lr=0.01, backbone_lr=0.002)
    tiny_config["scheduler"] = {"name": "none"}
    pipe = Pipeline.from_dict(tiny_config)
    start = {"stage1": _stage(pipe, "stage1."), "stage2": _stage(pipe, "stage2.")}
    bn_start = pipe.stages["backbone"].get_submodule("stage1.convs.1").running_mean.clone()
    n_backbone = len(list(pipe.stages["backbone"].parameters()))
    seen = _record_epochs(pipe)
    pipe.fit()
    assert len(seen) == 2
    first, second = seen
    # epoch 0: stage1 (frozen) and its batch-norm statistics untouched, stage2 trained
    assert not _changed(start["stage1"], first["stage1"]) and _changed(start["stage2"], first["stage2"])
    assert torch.equal(first["bn_mean"], bn_start) and first["bn_frozen"]
    # the optimizer's backbone group holds every backbone parameter, at backbone_lr, from the start
    assert first["groups"]["backbone"] == (0.002, n_backbone) and first["groups"]["head"][0] == 0.01
    # epoch 1: stage1 trains, its batch norm updates its statistics again
    assert _changed(first["stage1"], second["stage1"])
    assert not torch.equal(second["bn_mean"], first["bn_mean"]) and not second["bn_frozen"]
    assert all(p.requires_grad for p in pipe.stages["backbone"].parameters())


def test_a_run_resumed_after_the_unfreezing_epoch_keeps_its_groups(tiny_config):
    tiny_config["model"]["backbone"].update(freeze=["stage1"], unfreeze_at_epoch=1)
    tiny_config["optimizer"]["backbone_lr"] = 0.002
    tiny_config["trainer"]["max_epochs"] = 1
    first = Pipeline.from_dict(tiny_config)
    before = _stage(first, "stage1.")
    first.fit()
    assert not _changed(before, _stage(first, "stage1."))  # epoch 0 only: still frozen
    tiny_config["trainer"]["max_epochs"] = 2
    resumed = Pipeline.from_dict(tiny_config)
    resumed.fit(resume=first.run_dir / "checkpoints" / "last.ckpt")  # the optimizer state fits the groups
    assert resumed.trainer.current_epoch == 2
    assert _changed(before, _stage(resumed, "stage1."))
    names = [g["name"] for g in resumed.trainer.optimizers[0].param_groups]
    assert names == ["backbone", "head"]


def _groups(backbone_lr: float | None = 0.001, lr: float = 0.01) -> torch.optim.Optimizer:
    backbone, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    groups = [
        {"name": "backbone", "params": list(backbone.parameters()), "lr": backbone_lr or lr},
        {"name": "head", "params": list(head.parameters()), "lr": lr},
    ]
    return make_optimizer(groups, OptimizerConfig(name="sgd", lr=lr, backbone_lr=backbone_lr))


def _rates(optimizer: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in optimizer.param_groups]


def test_every_schedule_scales_both_groups():
    opt = _groups()
    assert _rates(opt) == [0.001, 0.01]
    step = make_scheduler(opt, SchedulerConfig(name="step", step_size=1, gamma=0.5), 5)
    opt.step()
    step.step()
    assert _rates(opt) == pytest.approx([0.0005, 0.005])

    opt = _groups()
    plateau = make_scheduler(opt, SchedulerConfig(name="plateau", patience=0, factor=0.5), 5)
    plateau.step(1.0)
    plateau.step(2.0)  # no improvement: halve both
    assert _rates(opt) == pytest.approx([0.0005, 0.005])

    # cosine with warm-up: the same factor for both groups; the floor min_lr is a rate, per group
    opt = _groups()
    cosine = make_scheduler(opt, SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.0001), 3)
    assert _rates(opt) == pytest.approx([0.0005, 0.005])  # warm-up epoch 0: half
    rates = []
    for _ in range(3):
        opt.step()
        cosine.step()
        rates.append(_rates(opt))
    assert rates[0] == pytest.approx([0.001, 0.01])  # warm-up done: the full rates
    assert rates[-1] == pytest.approx([0.0001, 0.0001])  # both end at min_lr (not 0.1 × it for the backbone)


def test_backbone_lr_in_a_run_is_logged_per_group(tiny_config):
    tiny_config["optimizer"].update(lr=0.01, backbone_lr=0.001)
    tiny_config["scheduler"] = {"name": "step", "step_size": 1, "gamma": 0.5}
    pipe = Pipeline.from_dict(tiny_config)
    assert [(g["name"], g["lr"]) for g in pipe.module.param_groups()] == [("backbone", 0.001), ("head", 0.01)]
    pipe.fit()
    metrics = json.loads((pipe.run_dir / "metrics.json").read_text())
    # the rates of the last epoch (epoch 1: one step of 0.5)
    assert metrics["lr-Adam/backbone"] == pytest.approx(0.0005)
    assert metrics["lr-Adam/head"] == pytest.approx(0.005)


def test_without_backbone_lr_the_optimizer_keeps_one_group(tiny_config):
    pipe = Pipeline.from_dict(tiny_config)
    groups = pipe.module.param_groups()
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(pipe.module.parameters()))


def _mismatched(pipe: Pipeline, tmp_path) -> Any:
    """The backbone's state dict (+ 1: unlike a fresh one) less one tensor, with one of another shape
    and 7 of a classifier."""
    state = {k: v + 1 if v.is_floating_point() else v for k, v in pipe.stages["backbone"].state_dict().items()}
    dropped = "stage2.convs.0.weight"
    del state[dropped]
    state["stage1.convs.1.bias"] = torch.zeros(99)
    state.update({f"classifier.{i}.weight": torch.zeros(1000, 8) for i in range(7)})
    path = tmp_path / "mismatched.pt"
    torch.save(state, path)
    return path


def test_strict_loading_names_the_mismatch_and_the_fix(tiny_config, tmp_path):
    path = _mismatched(Pipeline.from_dict(tiny_config), tmp_path)
    tiny_config["model"]["backbone"]["weights"] = str(path)
    with pytest.raises(VisionPipeError) as info:
        Pipeline.from_dict(tiny_config)
    message = str(info.value)
    assert "1 missing (stage2.convs.0.weight)" in message
    assert "7 unexpected (classifier.0.weight" in message and "and 2 more" in message
    assert "1 shapes differ (stage1.convs.1.bias: [99] vs [4])" in message
    assert "model.backbone.strict: false" in message


def test_non_strict_loading_loads_what_fits_and_reports_it(tiny_config, tmp_path):
    path = _mismatched(Pipeline.from_dict(tiny_config), tmp_path)
    expected = torch.load(path)
    tiny_config["model"]["backbone"].update(weights=str(path), strict=False)
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    state = pipe.stages["backbone"].state_dict()
    loaded = {k for k in state if k in expected and torch.equal(state[k], expected[k])}
    assert loaded == set(state) - {"stage2.convs.0.weight", "stage1.convs.1.bias"}
    report = pipe.module.weights_report
    assert report is not None and report.loaded == len(state) - 2
    assert report.missing == ["stage2.convs.0.weight"] and len(report.unexpected) == 7
    pipe.fit()
    written = json.loads((pipe.run_dir / "weights.json").read_text())
    assert written["loaded"] == report.loaded and written["shape_mismatch"] == ["stage1.convs.1.bias: [99] vs [4]"]


def test_weights_of_which_nothing_fits_are_an_error_even_non_strict(tiny_config, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    tiny_config["model"]["backbone"].update(weights=str(path), strict=False)
    with pytest.raises(VisionPipeError, match=r"none of its 1 tensor\(s\) matches.*conv1\.weight"):
        Pipeline.from_dict(tiny_config)


def test_a_ddp_prefixed_state_dict_loads(tiny_config, tmp_path):
    source = Pipeline.from_dict(tiny_config, ["seed=1"])
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.stages["backbone"].state_dict().items()}, path)
    tiny_config["model"]["backbone"]["weights"] = str(path)
    pipe = Pipeline.from_dict(tiny_config)
    for k, v in source.stages["backbone"].state_dict().items():
        assert torch.equal(pipe.stages["backbone"].state_dict()[k], v), k


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"strict": "sometimes"}, r"model\.backbone\.strict: .*valid boolean"),
        ({"freeze": ["stage1"], "unfreeze_at_epoch": 0}, r"model\.backbone\.unfreeze_at_epoch: .*greater than or"),
        ({"unfreeze_at_epoch": 1}, r"model\.backbone\.unfreeze_at_epoch: .*freezes none"),
    ],
)
def test_backbone_entry_keys_are_checked(tiny_config, entry, message):
    tiny_config["model"]["backbone"].update(entry)
    with pytest.raises(VisionPipeError, match=message):
        Pipeline.from_dict(tiny_config)


def test_unfreezing_is_refused_with_several_processes():
    callback = UnfreezeBackbone(1, ["stage1.convs.0.weight"])
    trainer = types.SimpleNamespace(world_size=2)
    with pytest.raises(VisionPipeError, match=r"model\.backbone\.unfreeze_at_epoch: .*2 processes"):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    callback.setup(types.SimpleNamespace(world_size=1), None, "fit")  # type: ignore[arg-type]


def test_parameters_no_output_uses_are_frozen_and_never_unfrozen(tiny_config):
    """A head on the first map leaves the backbone's second stage without any use: frozen at build,
    also when ``freeze`` had already frozen it, and left out of what ``unfreeze_at_epoch`` brings back."""
    tiny_config["model"]["head"]["feature"] = "stage1"
    tiny_config["model"]["backbone"].update(freeze=["stage1", "stage2"], unfreeze_at_epoch=1)
    pipe = Pipeline.from_dict(tiny_config)
    module = pipe.module
    stage2 = sorted(n for n, _ in module.named_parameters() if n.startswith("backbone.stage2."))
    assert stage2 and sorted(module.unused_parameters) == stage2
    _, names = module.unfreeze_plan
    assert names and all(n.startswith("stage1.") for n in names)
    assert not any(p.requires_grad for n, p in module.named_parameters() if n in stage2)
    assert all(p.requires_grad for n, p in module.named_parameters() if n.startswith("head."))


def test_reduce_on_plateau_steps_once_per_validation_when_epochs_are_skipped(tiny_config):
    """``trainer.check_val_every_n_epoch: 2``: the run is not stopped by Lightning for the epochs without a
    val/loss, and the schedule steps after each validation only (a stale value would count twice)."""
    tiny_config["trainer"].update(max_epochs=4, check_val_every_n_epoch=2)
    tiny_config["scheduler"] = {"name": "plateau", "patience": 0}
    pipe = Pipeline.from_dict(tiny_config)
    pipe.fit()
    (config,) = pipe.trainer.lr_scheduler_configs
    assert config.scheduler.last_epoch == 2  # validations after epochs 2 and 4
    assert pipe.best_checkpoint is not None
