"""Guards of a training run: a diverging run stops and says so.

Owns :class:`NonFiniteGuard`, the Lightning callback :func:`vision_pipe.trainer.make_trainer`
adds to every fit, and :func:`nonfinite_message`. What it does follows
``guard.on_nonfinite`` (:class:`~vision_pipe.config.GuardConfig`):

- ``stop`` (default): a non-finite (NaN or ±inf) training loss stops the run
  at the end of the step it appears in, with a :class:`~vision_pipe.errors.TrainingError`
  naming the epoch, the step and the usual suspects (learning rate, precision,
  data). The run fails (``vision-pipe fit`` exits non-zero); no checkpoint is
  written after the step, so the best checkpoint is never a non-finite one.
- ``skip_batch``: the module's ``training_step`` returns ``None`` for such a
  batch (Lightning then skips its backward pass and optimizer step) and counts
  it; the count is logged as ``train/skipped_batches`` (``metrics.json``).

In both modes the weights are checked once per epoch before any checkpoint is
written (callbacks run before Lightning's checkpoint callbacks): weights that
became non-finite in an update whose loss was still finite stop the run too.

Cost: one ``torch.isfinite`` of the loss and one host read of the result per
training step (in a multi-process run, after a sum over the processes so that
every process takes the same decision). On a CPU that is nothing. On a GPU the
read waits for the step's kernels, which removes the overlap of the next
step's Python work with the GPU's queue: expected to matter only for small,
fast steps (launch-bound models) and to vanish in GPU-bound ones; not yet
measured on a GPU (see BENCHMARKS.md for how the framework overhead is
measured). The per-epoch weight check is one reduction over the parameters.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from vision_pipe.errors import TrainingError

SUSPECTS = (
    "usual causes: a learning rate too high (optimizer.lr), a precision too low for this model "
    "(trainer.precision: 16-mixed overflows more easily than bf16-mixed or 32), or bad data "
    "(images or targets with NaN/inf, labels out of range)"
)


def nonfinite_message(what: str, epoch: int, step: int, batch_idx: int | None = None) -> str:
    """The message of a run stopped for a non-finite ``what`` (``"loss"``, ``"weights"``)."""
    batch = f", batch {batch_idx} of the epoch" if batch_idx is not None else ""
    return (
        f"training diverged: the {what} became non-finite (NaN or inf) at epoch {epoch}, step {step}{batch}; "
        f"the run was stopped and no checkpoint was written after it. {SUSPECTS}. "
        "To skip such batches instead, set guard.on_nonfinite: skip_batch"
    )


def any_nonfinite(trainer: pl.Trainer, value: Tensor) -> bool:
    """Whether ``value`` holds a NaN/inf in any process (one host read; every process gets the same answer)."""
    return any_process(trainer, (~torch.isfinite(value.detach())).any())


def any_process(trainer: pl.Trainer, flag: Tensor) -> bool:
    """Whether the boolean ``flag`` is true in any process (one host read)."""
    bad = flag.float()
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce(bad, reduce_op="sum")
    return bool(bad > 0)


class NonFiniteGuard(pl.Callback):
    """Stops a fit whose loss or weights become non-finite (see the module docstring).

    ``on_nonfinite``: ``"stop"`` or ``"skip_batch"``. It tells the module
    (``pl_module.skip_nonfinite``) whether to skip such batches itself.
    """

    def __init__(self, on_nonfinite: str = "stop") -> None:
        if on_nonfinite not in ("stop", "skip_batch"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip_batch', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.skip_nonfinite = self.on_nonfinite == "skip_batch"  # type: ignore[assignment]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.on_nonfinite == "skip_batch":
            return  # the module checked the loss already (and skipped the batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return  # a skipped batch (skip_batch): the module counted it
        if any_nonfinite(trainer, loss):
            # global_step already counts this step's optimizer step
            raise TrainingError(nonfinite_message("loss", trainer.current_epoch, trainer.global_step, batch_idx))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_weights(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        finite = [torch.isfinite(p.detach()).all() for p in pl_module.parameters() if p.is_floating_point()]
        if finite and any_process(trainer, ~torch.stack(finite).all()):
            raise TrainingError(nonfinite_message("weights", trainer.current_epoch, trainer.global_step))


__all__ = ["SUSPECTS", "NonFiniteGuard", "any_nonfinite", "any_process", "nonfinite_message"]
