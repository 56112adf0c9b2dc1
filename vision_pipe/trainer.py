"""The Lightning Trainer of a run: its callbacks, its loggers, the CPU threads it
may use, and the Lightning chatter kept off the console while it runs.

Owns :func:`make_trainer` (the non-finite guard of :mod:`vision_pipe.guards`,
checkpointing — best.ckpt by the monitored metric, last.ckpt after every epoch —,
early stopping, learning-rate monitor, the loggers of the YAML's ``loggers:``
(:mod:`vision_pipe.loggers`; CSV and TensorBoard in directories of their own), plus the callbacks the caller adds, e.g.
:class:`vision_pipe.runs.RunArtifacts`), :class:`AtomicCheckpointIO` (every
checkpoint written through :mod:`vision_pipe.io`'s atomic writer),
:func:`running` (the context every ``trainer.fit/validate/test`` call runs in),
:func:`torch_flags_kept` (torch's global flags restored after a run) and
:func:`check_trainer` (the Trainer arguments checked by making a Trainer,
as ``vision-pipe check`` and a fit do first). Warning and logging filters are
scoped to those calls: importing vision-pipe changes no process-wide warning
or logging state.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO, TorchCheckpointIO

from vision_pipe.config import PipelineConfig
from vision_pipe.config_files import Locations
from vision_pipe.data import cpu_count
from vision_pipe.errors import ConfigError
from vision_pipe.guards import NonFiniteGuard
from vision_pipe.io import atomic_torch_save
from vision_pipe.loggers import TrackerArtifacts, check_loggers, make_loggers

#: Warnings Lightning gives for what vision-pipe does on purpose.
_QUIET_WARNINGS = (
    # evaluation trainers restore a checkpoint without the training callbacks on purpose
    r"Be aware that when using `ckpt_path`",
    r".*isinstance\(treespec, LeafSpec\)",
    # guard.on_nonfinite: skip_batch skips a batch by returning None from training_step on purpose
    r"`training_step` returned `None`",
    # a test after a fit logs into the fit's W&B run on purpose (vision_pipe.loggers finishes any other run)
    r"There is a wandb run already in progress",
)
_LIGHTNING_LOGGER = "pytorch_lightning.utilities.rank_zero"


class _DropLightningTips(logging.Filter):
    """Lightning advertises optional cloud services at every Trainer start; keep the console for our output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block: Lightning's tips and the warnings in ``_QUIET_WARNINGS`` are not shown."""
    logger = logging.getLogger(_LIGHTNING_LOGGER)
    tips = _DropLightningTips()
    logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        logger.removeFilter(tips)


def fresh_name(folder: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3`` ... whichever does not exist in ``folder`` yet."""
    name, i = base, 2
    while (folder / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def make_trainer(
    config: PipelineConfig,
    run_dir: Path,
    *,
    action: str,
    callbacks: Sequence[pl.Callback] = (),
    resolved: Mapping[str, Any] | None = None,
    gradients: bool = False,
) -> tuple[pl.Trainer, Any]:
    """A Trainer for ``action`` (``fit``, ``validate``, ``test``) writing into ``run_dir``, logging to the
    YAML's ``loggers:`` (:mod:`vision_pipe.loggers`; ``resolved``, the resolved config, is what trackers get
    as parameters).

    ``gradients``: evaluation runs under ``torch.no_grad`` rather than ``torch.inference_mode``, so that
    a callback may compute gradients with ``torch.enable_grad`` (an adversarial attack's).

    Returns ``(trainer, checkpoint_callback)``; the checkpoint callback is ``None``
    unless training. Each trainer logs into directories of its own
    (``logs/csv``, ``logs/csv-2`` after a resume, ``logs/test-csv`` ...):
    Lightning's CSV logger would delete an existing metrics file.
    """
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from vision_pipe.resume import RandomState

    all_callbacks: list[Any] = []
    checkpoint_cb = None
    training = action == "fit"
    if training:
        checkpoint_cb = ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor=config.checkpoint.monitor,
            mode=config.checkpoint.mode,
            save_top_k=1,
            auto_insert_metric_name=False,
        )
        # last.ckpt: the state at the end of every finished epoch, whatever the monitored metric does
        # (Lightning's save_last rides on the monitored callback: it is rewritten only when best improves).
        # Written at the end of the training epoch, after validation, early stopping and best.ckpt;
        # Lightning runs checkpoint callbacks last, in this order.
        last_cb = ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        # the guard first: it checks the weights before any checkpoint of the epoch is written
        all_callbacks += [NonFiniteGuard(config.guard.on_nonfinite), checkpoint_cb, last_cb]
        all_callbacks += [LearningRateMonitor(logging_interval="epoch"), RandomState()]
        if config.early_stopping.enabled:
            es = config.early_stopping
            all_callbacks.append(
                EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
            )
    all_callbacks += list(callbacks)
    # after the caller's callbacks (RunArtifacts writes metrics.json and the plots it sends)
    all_callbacks.append(TrackerArtifacts(run_dir, resolved or config.model_dump(mode="json"), config.loggers))
    loggers = make_loggers(config, run_dir, "" if training else f"{action}-", fresh_name)
    options = dict(config.trainer)
    if gradients:
        options["inference_mode"] = False
    plugins = options.pop("plugins", None) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):  # a user's own checkpoint IO wins
        # written in a background thread from a point-in-time copy of the tensors, so that training goes on
        # while a large model's checkpoint is serialized and fsynced (Lightning waits for it at the end)
        from pytorch_lightning.plugins.io import AsyncCheckpointIO

        plugins.append(AsyncCheckpointIO(AtomicCheckpointIO()) if training else AtomicCheckpointIO())
    with quiet_lightning():
        trainer = pl.Trainer(
            **options,
            plugins=plugins,
            callbacks=all_callbacks,
            logger=loggers,
            default_root_dir=run_dir,
            enable_checkpointing=training,
        )
    return trainer, checkpoint_cb


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files written with :func:`vision_pipe.io.atomic_torch_save`.

    Lightning's own "atomic" save writes into the system's temporary folder and
    moves the file (a copy across file systems) without an fsync: a crash can
    leave a truncated ``last.ckpt``. Here: a temporary file next to the target,
    fsync, rename, fsync of the folder.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, Path(path))


#: The Trainer argument most likely at fault when Lightning's message names none.
_MACHINE_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes", "plugins")


def check_trainer(config: PipelineConfig, locs: Locations) -> None:
    """Make (and drop) a Trainer with the config's arguments, as a fit on this machine would: a value
    Lightning refuses (``max_epochs: -5``, ``precision: '17'``, ``accelerator: gpu`` on a machine
    without one, ``devices: 0``) is a :class:`ConfigError` naming the key and where it was set.

    The ``loggers:`` options and their packages are checked too (:func:`vision_pipe.loggers.check_loggers`).
    Cheap (a few ms, no logger, no checkpointing, a temporary root); run by ``vision-pipe check``
    and before a fit makes its run directory.
    """
    import tempfile

    check_loggers(config, locs)
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning(), warnings.catch_warnings(), torch_flags_kept():
        warnings.simplefilter("ignore")
        logger = logging.getLogger(_LIGHTNING_LOGGER)
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            pl.Trainer(**config.trainer, logger=False, enable_checkpointing=False, default_root_dir=tmp)
        except Exception as exc:
            message = str(exc).strip()
            key = _key_named(message, list(config.trainer))
            where = ("trainer", key) if key else ("trainer",)
            raise ConfigError(
                f"Lightning refuses this Trainer argument: {message}",
                location=locs.find(where),
                key=".".join(where),
            ) from None
        finally:
            logger.setLevel(level)


def _key_named(message: str, keys: list[str]) -> str | None:
    """The Trainer argument a Lightning error message is about (the first named in it, else a machine key)."""
    named = []
    for key in keys:
        found = re.search(rf"\b{re.escape(key)}\b", message, flags=re.IGNORECASE)
        if found:
            named.append((found.start(), key))
    if named:
        return min(named)[1]
    return next((k for k in _MACHINE_KEYS if k in keys), None)


#: The cuBLAS setting Lightning exports for deterministic runs.
_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@contextmanager
def torch_flags_kept() -> Iterator[None]:
    """Torch's process-wide flags as they were before the block, whatever a Trainer made in it set.

    A Trainer sets them when it is made (``trainer.deterministic``: deterministic algorithms,
    ``CUBLAS_WORKSPACE_CONFIG``; ``trainer.benchmark``: cuDNN autotuning) and Lightning never undoes
    that: without this, a Python session that ran one deterministic fit would fail later on any
    operation without a deterministic kernel (max-unpooling, for one), and ``vision-pipe check`` alone
    would change the process. The flags hold for the run inside the block.
    """
    cudnn = torch.backends.cudnn
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_flags, cublas = (cudnn.benchmark, cudnn.deterministic), os.environ.get(_CUBLAS)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        cudnn.benchmark, cudnn.deterministic = cudnn_flags
        if cublas is None:
            os.environ.pop(_CUBLAS, None)
        else:
            os.environ[_CUBLAS] = cublas


@contextmanager
def running(trainer: pl.Trainer, num_workers: int) -> Iterator[None]:
    """The context of a ``trainer.fit/validate/test`` call: CPU threads (:func:`cpu_threads`), quiet Lightning."""
    with cpu_threads(trainer, num_workers), quiet_lightning():
        yield


@contextmanager
def cpu_threads(trainer: pl.Trainer, num_workers: int) -> Iterator[None]:
    """On a CPU, give the model's threads only the cores the DataLoader workers leave.

    PyTorch starts one thread per core; next to ``num_workers`` worker processes
    that oversubscribes the CPU, and OpenMP threads spin waiting for each other:
    on 2 cores with 1 worker, training measured 20-30 % slower with 2 threads
    than with 1 on an idle machine, and up to 10x slower on a loaded one. An
    explicit ``OMP_NUM_THREADS`` is left alone.
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    if not isinstance(trainer.accelerator, CPUAccelerator) or num_workers == 0 or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_count() - num_workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = [
    "AtomicCheckpointIO",
    "check_trainer",
    "cpu_threads",
    "fresh_name",
    "make_trainer",
    "quiet_lightning",
    "running",
    "torch_flags_kept",
]
