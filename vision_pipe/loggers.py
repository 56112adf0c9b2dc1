"""Experiment trackers: the Lightning loggers named by the YAML's ``loggers:`` and what they are sent.

Owns :func:`make_loggers` (``csv``, ``tensorboard``, ``mlflow``, ``wandb`` — Lightning's
``CSVLogger``, ``TensorBoardLogger``, ``MLFlowLogger``, ``WandbLogger``), the check of
their options (:func:`check_loggers`: unknown options, missing packages, before any
work starts) and :class:`TrackerArtifacts`, the callback that sends the trackers the
resolved config as parameters (flattened: ``data.batch_size``) at the start of a fit
or test, and at its end the run's ``metrics.json``, ``plots/`` and, with
``log_checkpoint: true``, the best checkpoint as artifacts (mlflow, wandb).

- ``csv`` is always on (the run's curves are drawn from it): added when a YAML leaves it out.
- ``mlflow``: ``tracking_uri`` (default: a file store in the run directory,
  ``<run>/mlruns``; recent mlflow refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE``
  is set, which this default sets for the process), ``experiment_name`` (default: the
  pipeline's name), ``run_name`` (default: the run directory's name), ``tags``,
  ``log_checkpoint``. A test after a fit of the same run directory logs into the same
  MLflow run (its id is kept in ``logs/mlflow_run_id``). Metric names beyond the split's
  slash use dots (``val/acc.circle``, ``test/ap_50.cat``): :func:`mlflow_key`.
- ``wandb``: ``project`` (default: the pipeline's name), ``name`` (default: the run
  directory's name), ``entity``, ``tags``, ``offline`` (default: true unless
  ``WANDB_API_KEY`` is set), ``log_checkpoint``; files under ``<run>/wandb``; the
  run id is derived from the run directory, so fit and test share one W&B run (a W&B run
  of another run directory still open in the process is finished first).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vision_pipe.config import PipelineConfig
from vision_pipe.config_files import Locations
from vision_pipe.errors import ConfigError, did_you_mean
from vision_pipe.io import atomic_write_text

#: Options each logger takes besides ``name``.
OPTIONS: dict[str, tuple[str, ...]] = {
    "csv": (),
    "tensorboard": (),
    "mlflow": ("tracking_uri", "experiment_name", "run_name", "tags", "log_checkpoint"),
    "wandb": ("project", "name", "entity", "tags", "offline", "log_checkpoint"),
}
#: The package each tracker needs, and the extra that installs it.
_PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
_MLFLOW_RUN_ID = "mlflow_run_id"


def logger_entries(config: PipelineConfig) -> list[dict[str, Any]]:
    """``config.loggers`` with ``csv`` first (always on: the run's curves are read from its files)."""
    entries = [dict(e) for e in config.loggers]
    if not any(e["name"] == "csv" for e in entries):
        entries.insert(0, {"name": "csv"})
    return entries


def check_loggers(config: PipelineConfig, locs: Locations | None = None) -> None:
    """:class:`ConfigError` naming the YAML key for an unknown option or a tracker whose package is missing."""
    for i, entry in enumerate(config.loggers):
        where = _where(locs, ("loggers", i))
        name = entry["name"]
        for option in entry:
            if option != "name" and option not in OPTIONS[name]:
                allowed = ", ".join(OPTIONS[name]) or "none"
                raise ConfigError(
                    f"{where}.{option}: logger '{name}' has no option {option!r}."
                    f"{did_you_mean(option, OPTIONS[name])} Its options: {allowed}"
                )
        if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name][0]) is None:
            raise ConfigError(
                f"{where}: logger '{name}' needs the {_PACKAGES[name][0]} package: "
                f'pip install "vision-pipe[{_PACKAGES[name][1]}]"'
            )


def _where(locs: Locations | None, loc: tuple[str | int, ...]) -> str:
    place = locs.find(loc) if locs is not None else None
    return (f"{place}: " if place else "") + ".".join(str(p) for p in loc)


def make_loggers(config: PipelineConfig, run_dir: Path, prefix: str, fresh_name: Any) -> list[Any]:
    """The Lightning loggers of ``config.loggers`` for one Trainer writing into ``run_dir``; ``prefix``
    (``""`` for a fit, ``"test-"`` ...) and ``fresh_name(folder, base)`` name the csv/tensorboard folders."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    check_loggers(config)
    logs = run_dir / "logs"
    loggers: list[Any] = []
    for entry in logger_entries(config):
        name = entry["name"]
        if name == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="logs", version=fresh_name(logs, f"{prefix}csv")))
        elif name == "tensorboard":
            version = fresh_name(logs, f"{prefix}tensorboard")
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="logs", version=version, default_hp_metric=False))
        elif name == "mlflow":
            loggers.append(_mlflow(config, run_dir, entry))
        else:
            loggers.append(_wandb(config, run_dir, entry))
    return loggers


def mlflow_key(key: str) -> str:
    """A metric name MLflow's file store can hold beside the others: ``val/acc/circle`` → ``val/acc.circle``
    (a metric is a file there, so ``val/acc`` and ``val/acc/circle`` cannot both be); characters MLflow
    refuses become ``_``."""
    split, _, rest = key.partition("/")
    name = f"{split}/{rest.replace('/', '.')}" if rest else split
    return re.sub(r"[^\w\-. /]", "_", name)


def _mlflow(config: PipelineConfig, run_dir: Path, entry: Mapping[str, Any]) -> Any:
    from pytorch_lightning.loggers import MLFlowLogger

    class _MLFlowLogger(MLFlowLogger):
        """Lightning's MLFlowLogger with the metric names of :func:`mlflow_key`."""

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)

    uri = entry.get("tracking_uri")
    if uri is None:
        uri = (run_dir / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.7 asks for it for a file store
    kept = run_dir / "logs" / _MLFLOW_RUN_ID
    run_id = kept.read_text(encoding="utf-8").strip() if kept.is_file() else None
    logger = _MLFlowLogger(
        experiment_name=entry.get("experiment_name") or config.name,
        run_name=entry.get("run_name") or run_dir.name,
        tracking_uri=uri,
        tags=entry.get("tags"),
        run_id=run_id or None,
    )
    logger.vision_pipe_kept_id = kept  # type: ignore[attr-defined]  # where TrackerArtifacts keeps the run id
    return logger


def _wandb(config: PipelineConfig, run_dir: Path, entry: Mapping[str, Any]) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    offline = entry.get("offline")
    offline = not os.environ.get("WANDB_API_KEY") if offline is None else bool(offline)
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{config.name}-{run_dir.name}")[:64]
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None and wandb.run.id != run_id:
        wandb.finish()  # another run's, still open in this process: WandbLogger would log into it
    return WandbLogger(
        name=entry.get("name") or run_dir.name,
        project=entry.get("project") or config.name,
        entity=entry.get("entity"),
        tags=entry.get("tags"),
        save_dir=str(run_dir),
        offline=offline,
        id=run_id,
        resume="allow",
    )


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"batch_size": 4}}`` → ``{"data.batch_size": 4}``; lists and None as their text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _tracker(logger: Any) -> str | None:
    """``mlflow`` / ``wandb`` for those loggers, else None."""
    names = {cls.__name__ for cls in type(logger).__mro__}  # no import of a tracker that is not used
    return "mlflow" if "MLFlowLogger" in names else "wandb" if "WandbLogger" in names else None


class TrackerArtifacts(pl.Callback):
    """Sends the trackers (mlflow, wandb) the resolved config as parameters at the start of a fit or test and
    the run's files at its end: ``metrics.json``, ``plots/`` and, where ``log_checkpoint`` is set, the best
    checkpoint. Runs after :class:`vision_pipe.runs.RunArtifacts` (it is added after it), on rank 0 only."""

    def __init__(self, run_dir: Path, resolved: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> None:
        self.run_dir = run_dir
        self.params = flatten(resolved)
        self.log_checkpoint = {e["name"] for e in entries if e.get("log_checkpoint")}

    def _start(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        loggers: list[Any] = list(trainer.loggers)
        for logger in loggers:
            kind = _tracker(logger)
            if kind is None:
                continue
            logger.log_hyperparams(self.params)
            kept = getattr(logger, "vision_pipe_kept_id", None)
            if kind == "mlflow" and kept is not None and logger.run_id:
                kept.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(kept, logger.run_id)

    def _end(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        files = [self.run_dir / "metrics.json", *sorted(p for p in (self.run_dir / "plots").rglob("*") if p.is_file())]
        files = [f for f in files if f.is_file()]
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        loggers: list[Any] = list(trainer.loggers)
        for logger in loggers:
            kind = _tracker(logger)
            if kind is None:
                continue
            sent = files + ([Path(best)] if best and kind in self.log_checkpoint and Path(best).is_file() else [])
            for path in sent:
                folder = str(path.parent.relative_to(self.run_dir))
                if kind == "mlflow":
                    logger.experiment.log_artifact(logger.run_id, str(path), None if folder == "." else folder)
                else:
                    logger.experiment.save(str(path), base_path=str(self.run_dir), policy="now")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer)


__all__ = ["OPTIONS", "TrackerArtifacts", "check_loggers", "flatten", "logger_entries", "make_loggers"]
