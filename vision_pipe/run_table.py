"""Runs side by side: finding run folders, what each one was and found, and how they differ.

A run folder (:mod:`vision_pipe.runs`) holds ``config.yaml`` (the resolved config) and, once it trained or was
tested, ``metrics.json`` and ``checkpoints/``. :func:`find_runs` finds them under a folder (recursively),
:func:`load_run` reads one into a :class:`RunSummary`: name, start, task, status and duration (``run.json``),
the best value of the monitored validation metric (from the CSV logs, read by
:func:`vision_pipe.runs.read_curves`) and the task's main test metrics (``metrics.json``).
:func:`config_differences` lists the resolved config values (flattened dotted keys) that differ among runs;
:func:`format_runs` is the table ``vision-pipe runs`` prints and :func:`plot_comparison` the overlaid training
curves ``vision-pipe compare`` writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vision_pipe.errors import VisionPipeError
from vision_pipe.io import atomic_write_bytes, read_json_object
from vision_pipe.tasks import TASKS, get_task

#: Keys left out of the differences: where runs go says nothing about them.
_NOT_COMPARED = ("output_dir", "name")
#: The order in which differing keys are shown, most telling first (by prefix); then the rest, sorted.
_RELEVANCE = ("optimizer.", "scheduler.", "model.", "data.augmentation", "trainer.max_epochs", "data.", "seed")
#: How many differing keys the table shows per run (``--json`` and ``compare`` show them all).
SHOWN_DIFFERENCES = 3


@dataclass
class RunSummary:
    """One run folder as ``vision-pipe runs`` shows it.

    ``started``: ISO 8601 local time; ``seconds``: the fits' duration (None when unknown); ``status``:
    ``finished``, ``failed``, ``running`` or ``unknown`` (a run from before ``run.json``); ``monitor`` /
    ``best_val``: the monitored metric and its best logged value; ``test``: the task's main test metrics
    (``test/acc`` ...); ``config``: the resolved config, flattened to dotted keys; ``path``: the folder as
    shown (relative to the folder searched), ``run_dir`` where it is.
    """

    path: str
    run_dir: str
    name: str
    task: str
    started: str
    status: str
    seconds: float | None
    monitor: str
    best_val: float | None
    test: dict[str, float | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    differences: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (NaN as None)."""
        return _clean(asdict(self))


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run folder: ``config.yaml`` and ``metrics.json`` or ``checkpoints/``."""
    return (path / "config.yaml").is_file() and ((path / "metrics.json").is_file() or (path / "checkpoints").is_dir())


def find_runs(root: str | Path = "runs") -> list[RunSummary]:
    """Every run folder under ``root`` (recursively), sorted by start time, with :attr:`RunSummary.differences`
    filled in. A missing folder, or one without runs, is a :class:`VisionPipeError` saying so."""
    root = Path(root)
    if not root.is_dir():
        raise VisionPipeError(f"{root}: no such folder; runs are written to the pipeline's output_dir (default runs/)")
    dirs = sorted(p.parent for p in root.rglob("config.yaml") if is_run_dir(p.parent))
    if not dirs:
        raise VisionPipeError(f"{root}: no runs found (a run folder holds config.yaml and metrics.json)")
    return summarize_runs(dirs, root)


def summarize_runs(dirs: Sequence[str | Path], root: str | Path | None = None) -> list[RunSummary]:
    """:func:`load_run` of each of ``dirs`` (named relative to ``root`` when given), sorted by start time,
    with their :func:`config_differences`."""
    runs = sorted((load_run(d, root) for d in dirs), key=lambda r: (r.started, r.path))
    keys = config_differences(runs)
    for run in runs:
        run.differences = {k: run.config.get(k) for k in keys}
    return runs


def load_run(run_dir: str | Path, root: str | Path | None = None) -> RunSummary:
    """One run folder as a :class:`RunSummary` (a folder that is no run is a :class:`VisionPipeError`)."""
    from vision_pipe.runs import fit_logs, read_curves

    path = Path(run_dir)
    if not is_run_dir(path):
        raise VisionPipeError(f"{path}: not a run folder (it should hold config.yaml and metrics.json)")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise VisionPipeError(f"{path / 'config.yaml'}: cannot read the run's config: {exc}") from None
    if not isinstance(config, dict):
        raise VisionPipeError(f"{path / 'config.yaml'}: not a pipeline config (a mapping)")
    metrics = read_json_object(path / "metrics.json")
    status = read_json_object(path / "run.json")
    task = str(config.get("task", "?"))
    checkpoint = config.get("checkpoint") or {}
    monitor = str(checkpoint.get("monitor", "val/loss"))
    values = list(read_curves(fit_logs(path)).get(monitor, {}).values())
    best = (max if checkpoint.get("mode") == "max" else min)(values) if values else None
    main = get_task(task).main_metrics if task in TASKS else ()
    return RunSummary(
        path=str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path),
        run_dir=str(path),
        name=str(config.get("name", path.parent.name)),
        task=task,
        started=str(status.get("started") or _started_from_files(path)),
        status=str(status.get("status", "unknown")),
        seconds=status.get("seconds", _seconds_from_files(path)),
        monitor=monitor,
        best_val=best,
        test={f"test/{m}": _number(metrics.get(f"test/{m}")) for m in main if f"test/{m}" in metrics},
        config=flatten(config),
        error=status.get("error"),
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: ``{"optimizer": {"lr": 0.01}}`` → ``{"optimizer.lr": 0.01}``;
    list items get their index (``data.augmentation.0.p``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and any(isinstance(v, (Mapping, list)) for v in value):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}."))
        else:
            out[name] = value
    return out


def config_differences(runs: Sequence[RunSummary]) -> list[str]:
    """The flattened config keys whose values differ among ``runs`` (missing in some counts), most relevant
    first (optimizer, scheduler, model, augmentation, epochs, data, seed, then the rest)."""
    keys = {k for run in runs for k in run.config}
    differing = [
        k
        for k in keys
        if not k.startswith(_NOT_COMPARED) and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
    ]
    return sorted(differing, key=_relevance)


def _relevance(key: str) -> tuple[int, str]:
    rank = next((i for i, prefix in enumerate(_RELEVANCE) if key.startswith(prefix)), len(_RELEVANCE))
    return rank, key


def describe_differences(run: RunSummary, limit: int | None = None) -> str:
    """``optimizer.lr=0.002 model.head.dropout=0.3`` (the first ``limit`` of :attr:`RunSummary.differences`)."""
    items = list(run.differences.items())
    shown = " ".join(f"{k}={_value(v)}" for k, v in items[:limit])
    return shown + (f" (+{len(items) - limit})" if limit is not None and len(items) > limit else "")


def format_runs(runs: Sequence[RunSummary]) -> str:
    """The table ``vision-pipe runs`` prints: one line per run, sorted by start time."""
    header = ["run", "started", "task", "status", "duration", "best val", "test", "differences"]
    rows = [
        [
            run.path,
            run.started.replace("T", " "),
            run.task,
            run.status,
            format_duration(run.seconds),
            f"{run.monitor} {_value(run.best_val)}" if run.best_val is not None else "-",
            " ".join(f"{k.removeprefix('test/')}={_value(math.nan if v is None else v)}" for k, v in run.test.items())
            or "-",
            describe_differences(run, SHOWN_DIFFERENCES) or "-",
        ]
        for run in runs
    ]
    return format_table(header, rows)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, with a header line."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def format_differences(runs: Sequence[RunSummary]) -> str:
    """Each differing config key with every run's value (``vision-pipe compare``); a line when none differs."""
    keys = list(runs[0].differences) if runs else []
    if not keys:
        return "the runs' configs do not differ (besides name and output_dir)"
    return format_table(
        ["key", *(r.path for r in runs)], [[k, *(_value(r.differences.get(k)) for r in runs)] for k in keys]
    )


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plot_comparison(runs: Sequence[RunSummary], out: str | Path) -> Path:
    """One PNG at ``out``: train loss, validation loss and the task's main validation metric per epoch, one colour
    per run, the legend naming each run by its config differences (its folder when none differ)."""
    from matplotlib.figure import Figure

    from vision_pipe.runs import figure_png, fit_logs, read_curves

    main = {get_task(r.task).main_metrics[0] for r in runs if r.task in TASKS and get_task(r.task).main_metrics}
    panels = ["train/loss", "val/loss", *(f"val/{m}" for m in sorted(main))]
    fig = Figure(figsize=(5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours, strict=True):
        series = read_curves(fit_logs(Path(run.run_dir)))
        label = describe_differences(run) or run.path
        for ax, key in zip(axes, panels, strict=True):
            values = series.get(key, {})
            ax.plot(list(values), list(values.values()), marker="o", color=colour, label=label)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    if out.parent != Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, figure_png(fig))
    return out


def _started_from_files(path: Path) -> str:
    """The start of a run without ``run.json``: its folder's timestamp name, else ``config.yaml``'s time."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.strptime(path.name[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((path / "config.yaml").stat().st_mtime))


def _seconds_from_files(path: Path) -> float | None:
    """From ``config.yaml`` to the last CSV log's last write (None without logs)."""
    logs = list((path / "logs").glob("*/metrics.csv"))
    if not logs:
        return None
    return max(p.stat().st_mtime for p in logs) - (path / "config.yaml").stat().st_mtime


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


__all__ = [
    "SHOWN_DIFFERENCES",
    "RunSummary",
    "config_differences",
    "describe_differences",
    "find_runs",
    "flatten",
    "format_differences",
    "format_duration",
    "format_runs",
    "format_table",
    "is_run_dir",
    "load_run",
    "plot_comparison",
    "summarize_runs",
]
