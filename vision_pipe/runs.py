"""The run directory and what a run writes into it.

Owns the layout of ``<output_dir>/<name>/<timestamp>/``: :func:`open_run_dir`
makes it (``config.yaml``, ``splits.json``, ``plots/``) or reuses the run a
checkpoint belongs to, and :func:`discard_run_dir` removes a new one whose
run stopped before its first training step; :func:`record_preflight` writes ``preflight.json``; and
:class:`RunArtifacts`, a Lightning callback, writes ``metrics.json`` (merged,
strict JSON), ``run.json`` (the fit's status, start, end and duration: :func:`record_run_status`), ``weights.json`` (what loading the backbone's weights did), ``plots/curves.png`` (from the CSV logs),
``plots/filters.png`` (the first convolution's filters, :mod:`vision_pipe.inspect`) and the normalizer's
artifacts from the Trainer's hooks — at the end of a fit, a test, and also when
a run fails half-way, so the finished epochs keep their metrics and curves.
Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

from vision_pipe.config import PipelineConfig
from vision_pipe.data import SubsetSource
from vision_pipe.distributed import check_shared_run_dir, is_secondary_process, private_run_dir
from vision_pipe.errors import StageError
from vision_pipe.inspect import save_filter_grid
from vision_pipe.io import atomic_write_bytes, atomic_write_text, read_json_object
from vision_pipe.preflight import PreflightReport
from vision_pipe.stages import Normalizer, SampleSource


def new_run_dir(config: PipelineConfig, resolved: dict[str, Any], splits: dict[str, SampleSource]) -> Path:
    """A fresh ``<output_dir>/<name>/<timestamp>[-i]/`` with ``config.yaml``, ``splits.json`` and ``plots/``."""
    root = Path(config.output_dir) / config.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    i = 1
    while run_dir.exists():
        run_dir = root / f"{stamp}-{i}"
        i += 1
    (run_dir / "plots").mkdir(parents=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    if splits:
        record = {
            "seed": config.seed,
            "fractions": list(config.data.split),
            "sizes": {k: len(v) for k, v in splits.items()},
            # indices into the loader's samples, for splits the pipeline made
            "indices": {k: v.indices.tolist() for k, v in splits.items() if isinstance(v, SubsetSource)},
        }
        atomic_write_text(run_dir / "splits.json", json.dumps(record, indent=2))
    return run_dir


def open_run_dir(
    config: PipelineConfig,
    resolved: dict[str, Any],
    splits: dict[str, SampleSource],
    checkpoint: str | Path | None = None,
) -> Path:
    """The run directory for a new action: the run ``checkpoint`` belongs to, else a new one.

    In a multi-process run only rank 0 writes the run directory; the others get a private one.
    """
    if is_secondary_process():
        return private_run_dir()
    existing = run_dir_of(checkpoint)
    if existing is not None:
        (existing / "plots").mkdir(exist_ok=True)
        return existing
    return new_run_dir(config, resolved, splits)


def run_dir_of(checkpoint: str | Path | None) -> Path | None:
    """The run directory ``checkpoint`` belongs to (``<run>/checkpoints/x.ckpt``), if it is one."""
    if checkpoint is None:
        return None
    ckpt = Path(checkpoint).resolve()
    candidate = ckpt.parent.parent
    return candidate if (candidate / "config.yaml").exists() and ckpt.parent.name == "checkpoints" else None


def discard_run_dir(run_dir: Path) -> None:
    """Remove a run directory made for a run that stopped before its first training step.

    A stopped run writes nothing: its config, splits and pre-flight report are
    repeated by the next attempt. In a multi-process run only rank 0 removes it.
    """
    import shutil

    if not is_secondary_process():
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            run_dir.parent.rmdir()  # <output_dir>/<name>/, when this run was its only one
        except OSError:
            pass


def record_preflight(
    run_dir: Path, report: PreflightReport, on_bad_sample: str, class_names: Sequence[str] = ()
) -> None:
    """``preflight.json`` and the ``data/checked`` / ``data/skipped`` / ``data/empty_classes`` counts in
    ``metrics.json`` (``data/empty_classes``: how many classes some split holds no sample of; which ones,
    per split, are in ``preflight.json``'s ``empty_classes``)."""
    empty = report.empty_classes(class_names)
    record = {"on_bad_sample": on_bad_sample, **report.to_dict(), "empty_classes": empty}
    atomic_write_text(run_dir / "preflight.json", json.dumps(record, indent=2))
    update_metrics_file(
        run_dir / "metrics.json",
        {
            "data/checked": float(sum(report.checked.values())),
            "data/skipped": float(len(report.bad)),
            "data/empty_classes": float(len({name for names in empty.values() for name in names})),
        },
    )


# ----------------------------------------------------------------------------
# What a run writes while it runs
# ----------------------------------------------------------------------------


class RunArtifacts(pl.Callback):
    """Writes a run's artifacts from the Trainer's hooks.

    - end of a fit, or a fit that fails: the last logged metrics (and
      ``fit/epochs``) merged into ``metrics.json``, ``plots/curves.png`` from
      the CSV logs of every fit of the run, ``plots/filters.png`` (the first
      convolution's filters), the normalizer's artifacts;
    - start of a fit whose backbone was loaded from ``model.backbone.weights``: ``weights.json``,
      what the loading did (:class:`vision_pipe.finetune.WeightsReport`);
    - end of a test: the test metrics (the head's summary and the logged
      ``test/...``) merged into ``metrics.json``.

    ``metrics`` holds what was written last (what ``Pipeline.fit/test`` return).
    """

    def __init__(self, run_dir: Path, normalizer: Normalizer | None = None) -> None:
        self.run_dir = run_dir
        self.normalizer = normalizer
        self.metrics: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_shared_run_dir(trainer, self.run_dir)
        if trainer.is_global_zero:
            record_run_status(self.run_dir, "running")
        report = getattr(pl_module, "weights_report", None)
        if report is not None and trainer.is_global_zero:
            atomic_write_text(self.run_dir / "weights.json", json.dumps(report.as_dict(), indent=2))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_fit(trainer, pl_module)
        if trainer.is_global_zero:
            record_run_status(self.run_dir, "finished")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = dict(getattr(pl_module, "test_metrics", {}))
        metrics.update({k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")})
        self.metrics = metrics
        update_metrics_file(self.run_dir / "metrics.json", metrics)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit":
            return
        for logger in trainer.loggers:
            logger.save()  # the rows of the finished steps, before the curves are drawn from them
        self._write_fit(trainer, pl_module)
        if trainer.is_global_zero:
            record_run_status(self.run_dir, "failed", f"{type(exception).__name__}: {exception}")

    def _write_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = scalars(trainer.callback_metrics)
        metrics["fit/epochs"] = float(trainer.current_epoch)
        self.metrics = metrics
        if self.normalizer is not None:
            self.normalizer.save_artifacts(self.run_dir / "plots")
        backbone = getattr(pl_module, "backbone", None)
        with contextlib.suppress(StageError):  # a backbone without a convolution on the image: no filters
            if isinstance(backbone, torch.nn.Module):
                save_filter_grid(backbone, self.run_dir / "plots" / "filters.png")
        plot_curves(fit_logs(self.run_dir), self.run_dir / "plots" / "curves.png")
        update_metrics_file(
            self.run_dir / "metrics.json", {k: v for k, v in metrics.items() if not k.startswith("test/")}
        )


def record_run_status(run_dir: Path, status: str, error: str | None = None) -> None:
    """``run.json``: the fit's ``status`` (``running`` / ``finished`` / ``failed``), ``started`` (of the run's
    first fit) and ``ended`` (ISO 8601 local times), ``seconds`` (the fits' time, summed over resumes) and ``error``."""
    path = run_dir / "run.json"
    record = read_json_object(path)
    now = time.time()
    if status == "running":
        record.setdefault("started", _iso(now))
        record["fit_started_at"] = now
        record.pop("ended", None)
        record.pop("error", None)
    else:
        record["ended"] = _iso(now)
        start = record.pop("fit_started_at", now)
        record["seconds"] = round(record.get("seconds", 0.0) + now - float(start), 2)
        if error is not None:
            record["error"] = error
    record["status"] = status
    atomic_write_text(path, json.dumps(record, indent=2))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of a metrics dict (tensors of one element, ints, floats) as floats."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def update_metrics_file(path: Path, metrics: dict[str, float]) -> None:
    """Merge ``metrics`` into the JSON file at ``path`` (NaN written as null: strict JSON)."""
    current = read_json_object(path)
    current.update(metrics)
    # NaN (e.g. the accuracy of a class absent from a split) is written as null: strict JSON.
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in sorted(current.items())}
    atomic_write_text(path, json.dumps(clean, indent=2))


def read_curves(csv_paths: Sequence[Path]) -> dict[str, dict[int, float]]:
    """Per-epoch series from the CSV logs of a run, in order: ``{"val/loss": {epoch: value}, ...}``
    (keys with one ``/``; a later log's value for an epoch replaces an earlier one's)."""
    rows: list[dict[str, str]] = []
    for csv_path in csv_paths:
        if csv_path.is_file():
            with csv_path.open(newline="") as f:
                rows += list(csv.DictReader(f))
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not epoch:
            continue
        for key, value in row.items():
            if key in ("epoch", "step") or not value or "/" not in key or key.count("/") > 1:
                continue
            series.setdefault(key, {})[int(float(epoch))] = float(value)
    return series


def fit_logs(run_dir: Path) -> list[Path]:
    """The CSV logs of every fit of a run, in order (``logs/csv``, ``logs/csv-2`` after a resume ...)."""
    return sorted((run_dir / "logs").glob("csv*/metrics.csv"), key=lambda p: (len(p.parent.name), p.parent.name))


def plot_curves(csv_paths: Sequence[Path], out: Path) -> None:
    """Training curves (loss and validation metrics per epoch) from the CSV logs of a run, in order."""
    csv_paths = [p for p in csv_paths if p.is_file()]
    if not csv_paths:
        return
    from matplotlib.figure import Figure

    series = read_curves(csv_paths)
    losses = {k: v for k, v in series.items() if k.endswith("/loss")}
    others = {k: v for k, v in series.items() if k.startswith("val/") and not k.endswith("loss")}
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for key, values in sorted(losses.items()):
        ax1.plot(list(values), list(values.values()), marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    if losses:
        ax1.legend()
    for key, values in sorted(others.items()):
        ax2.plot(list(values), list(values.values()), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation metric")
    if others:
        ax2.legend(fontsize="small")
    fig.tight_layout()
    atomic_write_bytes(out, figure_png(fig))


def figure_png(fig: Any) -> bytes:
    """A matplotlib ``Figure`` as PNG bytes at 100 dpi."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    return png.getvalue()


__all__ = [
    "RunArtifacts",
    "discard_run_dir",
    "figure_png",
    "fit_logs",
    "new_run_dir",
    "open_run_dir",
    "plot_curves",
    "read_curves",
    "record_run_status",
    "record_preflight",
    "run_dir_of",
    "scalars",
    "update_metrics_file",
]
