"""Fine-tuning: loading weights into a backbone, freezing parameters and the batch-norm
statistics of frozen layers, unfreezing them later.

Files are read by :mod:`vision_pipe.checkpoints` (weights only unless trusted). Owns
the ``model.backbone`` keys ``weights`` / ``strict`` (loading with a
:class:`WeightsReport`), ``freeze`` (:func:`apply_weights_and_freeze`, with
:class:`FrozenBatchNorm1d` / :class:`FrozenBatchNorm2d`) and ``unfreeze_at_epoch``
(:class:`UnfreezeBackbone`), and freezes what the model never uses (:func:`freeze_unused`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from vision_pipe.checkpoints import load_torch_file
from vision_pipe.errors import ConfigError, StageError, VisionPipeError
from vision_pipe.tasks import get_task

if TYPE_CHECKING:
    from vision_pipe.module import PipelineModule

log = logging.getLogger("vision_pipe")

SHOWN_KEYS = 5


def _some(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


@dataclass
class WeightsReport:
    """What loading a weights file into a backbone did: tensors loaded, keys missing / unexpected / of
    another shape (``key: file shape vs backbone shape``). ``as_dict()`` is the run's ``weights.json``."""

    file: str
    strict: bool
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """One line: ``loaded 12 tensors from f; missing: ...; unexpected: ...; shapes differ: ...``."""
        parts = [f"loaded {self.loaded} tensor(s) from {self.file}"]
        for what, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shapes differ", self.shape_mismatch),
        ):
            if keys:
                parts.append(f"{len(keys)} {what} ({_some(keys)})")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _backbone_state(state: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    """The backbone's part of what a weights file holds: a checkpoint's ``backbone.*`` entries, or a plain
    state dict (our stage's keys, or timm/torchvision-style keys; a ``module.`` prefix of DDP is dropped)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise StageError(f"{where}: weights {path} hold no state dict (a mapping of parameter names to tensors)")
    for prefix in ("backbone.", "module."):
        if any(k.startswith(prefix) for k in state) and (
            prefix == "backbone." or all(k.startswith(prefix) for k in state)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


#: The checkpoints of a run folder that ``model.backbone.weights`` may name, in order of preference.
RUN_CHECKPOINTS = ("best.ckpt", "last.ckpt")


def weights_file(path: Path, where: str) -> Path:
    """The file ``model.backbone.weights`` names: ``path`` itself, or for a folder the checkpoint of a run
    (``<run>/checkpoints/best.ckpt``, else ``last.ckpt``) or of the newest run of a pipeline's runs folder
    (``runs/<name>/``: its run folders sorted by name, which is their start time). The run may be of another
    task (e.g. an autoencoder's): only its backbone tensors are read. :class:`ConfigError` when there is none."""
    location = where.split(": ")[0]
    if path.is_file():
        return path
    if path.is_dir():
        runs = [path, *sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)]
        for run in runs:
            for name in RUN_CHECKPOINTS:
                if (run / "checkpoints" / name).is_file():
                    return run / "checkpoints" / name
        raise ConfigError(
            f"backbone weights folder {path} holds no run checkpoint (checkpoints/{' or '.join(RUN_CHECKPOINTS)} "
            "in it or in one of its run folders): name a weights file, a run folder or a runs/<pipeline> folder",
            location=location,
            key="model.backbone.weights",
        )
    raise ConfigError(f"backbone weights file not found: {path}", location=location, key="model.backbone.weights")


def load_weights(
    backbone: nn.Module, weights: str | Path, where: str, *, trust: bool = False, strict: bool = True
) -> WeightsReport:
    """Load a state dict (``.safetensors`` or torch), or the ``backbone.*`` part of a vision-pipe/Lightning
    checkpoint of any task (``weights`` may name a run folder: :func:`weights_file`), into ``backbone``; read
    as weights only unless ``trust`` (see :func:`load_torch_file`).

    ``strict``: every backbone tensor must come from the file and every file tensor must fit, otherwise a
    :class:`StageError` names the keys and the fix (``strict: false``). Not ``strict``: the tensors whose
    name and shape match are loaded, the rest keep their initialization. Either way, a file of which no
    tensor fits is an error. Returns the :class:`WeightsReport`.
    """
    path = weights_file(Path(weights), where)
    try:
        raw = load_torch_file(path, trust=trust, what="weights file")
    except VisionPipeError as exc:
        raise StageError(f"{where}: model.backbone.weights: {exc}") from None
    except Exception as exc:
        raise StageError(f"{where}: cannot read backbone weights {path}: {exc}") from exc
    state = _backbone_state(raw, path, where)
    own = backbone.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = WeightsReport(
        file=str(path),
        strict=strict,
        loaded=len(fits),
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
        shape_mismatch=[
            f"{k}: {list(v.shape)} vs {list(own[k].shape)}" for k, v in state.items() if k in own and k not in fits
        ],
    )
    if not fits:
        raise StageError(
            f"{where}: weights {path} do not fit the backbone: none of its {len(state)} tensor(s) matches a "
            f"backbone tensor by name and shape (file: {_some(list(state))}; backbone: {_some(list(own))})"
        )
    if strict and not report.complete:
        raise StageError(
            f"{where}: weights {path} do not fit the backbone exactly: {report.summary().split('; ', 1)[1]}. "
            f"To load the {len(fits)} matching tensor(s) and keep the rest as initialized, set "
            "model.backbone.strict: false"
        )
    backbone.load_state_dict(fits, strict=False)
    log.info("%s: backbone weights: %s", where, report.summary())
    return report


def _matching(names: Sequence[str], prefix: str) -> set[str]:
    return {
        n for n in names if n == prefix or n.startswith(prefix + ".") or (prefix.endswith(".") and n.startswith(prefix))
    }


def freeze(backbone: nn.Module, prefixes: str | Sequence[str], where: str) -> list[str]:
    """Stop training the parameters under each dotted prefix (``"stem"``, ``"layer1.0"``);
    batch-norm layers left without trainable parameters keep their running statistics.
    Returns the names of the frozen parameters."""
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    names = [n for n, _ in backbone.named_parameters()]
    frozen: set[str] = set()
    for prefix in prefixes:
        matched = _matching(names, prefix)
        if not matched:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"freeze prefix '{prefix}' matches no backbone parameter; top-level modules: {', '.join(tops)}",
                location=where.split(": ")[0],
                key="model.backbone.freeze",
            )
        frozen |= matched
    for n, p in backbone.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    freeze_batch_norm_statistics(backbone)
    return [n for n in names if n in frozen]


def apply_weights_and_freeze(
    backbone: nn.Module, spec: dict[str, Any], where: str, *, trust: bool = False, weights: bool = True
) -> tuple[WeightsReport | None, list[str]]:
    """Apply a backbone entry's ``weights`` (a file, loaded ``strict`` or not; skipped when not ``weights``)
    and ``freeze`` (prefixes) to the built backbone; ``trust`` as in :func:`load_torch_file`.
    Returns the weights report (``None`` without weights) and the frozen parameters' names."""
    report = None
    if weights and spec.get("weights"):
        report = load_weights(backbone, spec["weights"], where, trust=trust, strict=spec.get("strict", True))
    return report, freeze(backbone, spec.get("freeze") or [], where)


_M = TypeVar("_M", bound=nn.Module)


class _FrozenStatistics(nn.Module):
    """Mixin for a batch-norm layer whose parameters are frozen: it stays in eval mode, so it
    normalizes with (and keeps) its running statistics instead of updating them from batches."""

    def train(self: _M, mode: bool = True) -> _M:
        return super().train(False)


class FrozenBatchNorm1d(_FrozenStatistics, nn.BatchNorm1d):
    """A frozen :class:`torch.nn.BatchNorm1d` (see :func:`freeze_batch_norm_statistics`)."""


class FrozenBatchNorm2d(_FrozenStatistics, nn.BatchNorm2d):
    """A frozen :class:`torch.nn.BatchNorm2d` (see :func:`freeze_batch_norm_statistics`)."""


_FROZEN_BN: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
}


def freeze_batch_norm_statistics(backbone: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen stop updating their running statistics.

    Fine-tuning with frozen layers means the layers do not change; a batch-norm
    layer in train mode would still move its running mean/var to the new data
    (and normalize with batch statistics). Its class is switched to a subclass
    that stays in eval mode; its state_dict is unchanged.
    """
    for module in backbone.modules():
        frozen_class = _FROZEN_BN.get(type(module))
        params = list(module.parameters(recurse=False))
        if frozen_class is not None and params and not any(p.requires_grad for p in params):
            module.__class__ = frozen_class
            module.eval()


_UNFROZEN_BN: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _FROZEN_BN.items()}


def unfreeze_batch_norm_statistics(backbone: nn.Module) -> None:
    """Frozen batch-norm layers with trainable parameters again update their running statistics
    (the undoing of :func:`freeze_batch_norm_statistics`); they follow ``backbone``'s train/eval mode."""
    for module in backbone.modules():
        plain_class = _UNFROZEN_BN.get(type(module))
        if plain_class is not None and any(p.requires_grad for p in module.parameters(recurse=False)):
            module.__class__ = plain_class
            module.train(backbone.training)


class UnfreezeBackbone(pl.Callback):
    """Gradual unfreezing (``model.backbone.unfreeze_at_epoch``): from ``epoch`` on (0-based), the
    backbone parameters ``names`` (those ``freeze`` froze) are trained and their batch-norm layers
    update their statistics again.

    The parameters are in the optimizer's ``backbone`` group from the start (see
    :meth:`vision_pipe.module.PipelineModule.param_groups`): without a gradient they are not updated
    until then, the schedules scale that group from the first epoch like any other, and a resumed run's
    optimizer state has the same groups whichever side of ``epoch`` it stopped on. Not with several
    processes: DDP only synchronizes the gradients of parameters trainable when it starts.
    """

    def __init__(self, epoch: int, names: Sequence[str]) -> None:
        self.epoch = epoch
        self.names = list(names)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            raise ConfigError(
                f"gradual unfreezing does not work with {trainer.world_size} processes (DDP synchronizes only "
                "the parameters trainable when it starts); train on one device or remove unfreeze_at_epoch",
                key="model.backbone.unfreeze_at_epoch",
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch < self.epoch:
            return
        backbone = pl_module.backbone
        assert isinstance(backbone, nn.Module)
        params = dict(backbone.named_parameters())
        waiting = [n for n in self.names if not params[n].requires_grad]
        if not waiting:
            return
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        absent = [n for n in waiting if id(params[n]) not in in_optimizer]
        if absent:
            raise VisionPipeError(
                f"model.backbone.unfreeze_at_epoch: the optimizer does not hold the parameters to unfreeze "
                f"({_some(absent)}); the module's configure_optimizers must use PipelineModule.param_groups()"
            )
        for n in waiting:
            params[n].requires_grad_(True)
        unfreeze_batch_norm_statistics(backbone)
        log.info("epoch %d: %d frozen backbone parameter(s) now train", trainer.current_epoch, len(waiting))


__all__ = [
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "UnfreezeBackbone",
    "WeightsReport",
    "apply_weights_and_freeze",
    "freeze",
    "freeze_batch_norm_statistics",
    "load_weights",
    "unfreeze_batch_norm_statistics",
]


# ----------------------------------------------------------------------------
# Parameters the model never uses
# ----------------------------------------------------------------------------


def _output_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a head's raw outputs (a tensor, a dataclass, a mapping or a sequence of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if is_dataclass(value) and not isinstance(value, type):
        return [t for f in fields(value) for t in _output_tensors(getattr(value, f.name))]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _output_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _output_tensors(v)]
    return []


def freeze_unused(module: PipelineModule, input_size: tuple[int, int], task: str) -> list[str]:
    """Freeze the parameters that neither the model's outputs nor its loss depend on; return their names.

    One forward of a batch of two random (3, H, W) images at ``input_size`` with random ``task``
    targets, in eval mode: a parameter with no path to any output tensor or to the head's loss (a
    backbone stage after the map a head uses, a fallback layer that is never taken) gets no
    gradient, and DDP would wait for it forever ("Expected to have finished reduction ..."), so it
    stops requiring one (the optimizer skips it, and ``unfreeze_at_epoch`` must not bring it
    back). Frozen parameters are probed too; the caller's random state is left alone.
    """
    params = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
    if not params:
        return []
    flags = [p.requires_grad for _, p in params]
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        for _, p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            rng = np.random.default_rng(0)
            images = torch.from_numpy(rng.integers(0, 256, (2, 3, *input_size), dtype=np.uint8))
            batch: dict[str, Any] = {"image": images, "meta": [{"id": f"probe:{i}"} for i in range(2)]}
            batch.update(get_task(task).random_targets(rng, 2, input_size, module.head.num_classes))
            raw = module(images)
            outputs = [t for t in _output_tensors(raw) if t.requires_grad]
            try:
                outputs += [module.head.loss(raw, batch)["loss"]]  # type: ignore[arg-type]
            except Exception as exc:  # the run's first step will say it better
                log.debug("freeze_unused: the head's loss on random targets failed: %s", exc)
            grads: Sequence[torch.Tensor | None] = [None] * len(params)
            if outputs:
                total = torch.stack([t.float().sum() for t in outputs]).sum()
                grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    finally:
        for (_, p), flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.train(mode)
    if not outputs:
        return []
    unused = [name for (name, p), g in zip(params, grads, strict=True) if g is None]
    for name, p in params:
        if name in unused:
            p.requires_grad_(False)
    if unused:
        log.info("%d parameter tensors the outputs do not depend on are frozen: %s", len(unused), _some(unused))
    return unused
