"""A run's report page: ``<run>/report.html``, one self-contained file (no network, no external CSS or
script; pictures embedded as base64 PNG data URIs).

It shows the run (status, start, duration from ``run.json``), every metric of ``metrics.json``, the data
(split sizes, class balance per split and the samples the pre-flight skipped, from ``splits.json`` and
``preflight.json``), the training curves (``plots/curves.png``), the per-class table and pictures of the test
(the task's :attr:`~vision_pipe.tasks.Task.per_class_metrics` and :attr:`~vision_pipe.tasks.Task.report_plots`),
a grid of the best and worst test predictions (graded by :meth:`~vision_pipe.tasks.Task.grade`, drawn by
:meth:`~vision_pipe.tasks.Task.draw`) and the resolved config. What depends on the task comes from its
:class:`~vision_pipe.tasks.Task`; this module only lays the page out. Every user string is escaped.

:func:`write_report` writes it for a pipeline that has just been tested (``Pipeline.test`` calls it);
:func:`rebuild_report` from a run folder and its best checkpoint (``vision-pipe report RUN``).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from vision_pipe.errors import DataError, VisionPipeError
from vision_pipe.io import atomic_write_text, encode_png, read_json_object
from vision_pipe.run_table import format_duration, is_run_dir
from vision_pipe.tasks import Graded, Task, get_task

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline
    from vision_pipe.plugins import PluginManager

#: How many test samples are predicted for the grid (the first ones of the test split).
GRADED_SAMPLES = 256
#: How many best and how many worst predictions the grid shows.
EXAMPLES = 6
#: The longest side of a picture in the grid, in pixels.
_THUMB_SIDE = 320

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}pre{background:#f6f6f6;padding:1em;overflow:auto}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:330px}figcaption{font-size:.85em}
img{max-width:100%}.muted{color:#777}
"""


def write_report(pipeline: Pipeline, run_dir: str | Path | None = None, *, predictions: bool = True) -> Path:
    """Write ``report.html`` into ``run_dir`` (default: the pipeline's run) and return its path.

    ``predictions``: grade the pipeline's model on the first :data:`GRADED_SAMPLES` test samples for the
    grid of best and worst predictions (the model's weights as they are: the tested ones).
    """
    folder = Path(run_dir) if run_dir is not None else pipeline.run_dir
    if folder is None:
        raise VisionPipeError("no run to report on: fit or test the pipeline first, or name a run folder")
    task = get_task(pipeline.config.task)
    grid = _prediction_grid(pipeline, task) if predictions and "test" in pipeline.splits else ""
    page = render_page(folder, task, pipeline.class_names, grid)
    path = folder / "report.html"
    atomic_write_text(path, page)
    return path


def rebuild_report(
    run_dir: str | Path, *, trust: bool = False, manager: PluginManager | None = None, predictions: bool = True
) -> Path:
    """Write ``report.html`` of a run folder again: its pipeline from ``config.yaml``, the model from
    ``checkpoints/best.ckpt`` (else ``last.ckpt``; read as weights only unless ``trust``) for the prediction
    grid (none without a checkpoint). A folder that is no run is a :class:`VisionPipeError`."""
    from vision_pipe.pipeline import Pipeline

    folder = Path(run_dir)
    if not is_run_dir(folder):
        raise VisionPipeError(f"{folder}: not a run folder (it should hold config.yaml and metrics.json)")
    pipe = Pipeline.from_yaml(folder / "config.yaml", manager=manager, trust=trust)
    checkpoints = [folder / "checkpoints" / name for name in ("best.ckpt", "last.ckpt")]
    checkpoint = next((c for c in checkpoints if c.is_file()), None)
    if checkpoint is not None:
        pipe.load_checkpoint(checkpoint, trust=trust)
    return write_report(pipe, folder, predictions=predictions and checkpoint is not None)


# ----------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------


def render_page(run_dir: Path, task: Task, class_names: Sequence[str], grid: str = "") -> str:
    """The report's HTML from the files of ``run_dir``; ``grid`` the prediction grid's HTML (may be empty)."""
    metrics = read_json_object(run_dir / "metrics.json")
    status = read_json_object(run_dir / "run.json")
    name = run_dir.parent.name + "/" + run_dir.name
    facts = [
        ("folder", str(run_dir)),
        ("task", task.name),
        ("status", str(status.get("status", "unknown")) + (f": {status['error']}" if status.get("error") else "")),
        ("started", str(status.get("started", "-"))),
        ("duration", format_duration(status.get("seconds"))),
    ]
    plots = run_dir / "plots"
    parts = [
        f"<h1>{_e(name)}</h1>",
        _table(None, [[_e(k), _e(v)] for k, v in facts]),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<h2>Data</h2>",
        _data_summary(run_dir, class_names),
        "<h2>Training curves</h2>",
        _image_file(plots / "curves.png", "training curves"),
        "<h2>Per class (test)</h2>",
        _per_class_table(metrics, task, class_names),
        *(_image_file(_plot(plots, p), p) for p in task.report_plots),
        "<h2>Test predictions</h2>",
        grid or '<p class="muted">no prediction grid (no checkpoint or no test split)</p>',
        "<h2>Config</h2>",
        f"<pre>{_e(_read_text(run_dir / 'config.yaml'))}</pre>",
    ]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(name)} report</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    """Every metric but the per-class ones (``split/name``), a cell per value marked ``data-metric``."""
    keys = [k for k in sorted(metrics) if k.count("/") == 1]
    return _table(["metric", "value"], [[_e(k), _number_cell(k, metrics[k])] for k in keys])


def _per_class_table(metrics: Mapping[str, Any], task: Task, class_names: Sequence[str]) -> str:
    """One row per class, a column per :attr:`Task.per_class_metrics` (``test/<metric>/<class>``)."""
    columns = [m for m in task.per_class_metrics if any(f"test/{m}/{c}" in metrics for c in class_names)]
    if not columns:
        return '<p class="muted">no per-class test metrics in metrics.json (the run was not tested)</p>'
    rows = [
        [_e(c), *(_number_cell(f"test/{m}/{c}", metrics.get(f"test/{m}/{c}")) for m in columns)] for c in class_names
    ]
    return _table(["class", *columns], rows)


def _data_summary(run_dir: Path, class_names: Sequence[str]) -> str:
    """Split sizes, class balance per split and the skipped samples (``splits.json``, ``preflight.json``)."""
    splits = read_json_object(run_dir / "splits.json")
    preflight = read_json_object(run_dir / "preflight.json")
    sizes = splits.get("sizes") or preflight.get("checked") or {}
    if not sizes:
        return '<p class="muted">no splits.json or preflight.json in the run folder</p>'
    names = list(sizes)
    out = [_table(["split", "samples"], [[_e(s), f'<td class="n">{int(n)}</td>'] for s, n in sizes.items()])]
    counts = preflight.get("class_counts") or {}
    if counts:
        rows = [[_e(c), *(_int_cell(counts.get(s, []), i) for s in names)] for i, c in enumerate(class_names)]
        out += ["<h3>Samples holding each class</h3>", _table(["class", *names], rows)]
    bad = preflight.get("bad") or []
    skipped = f"{len(bad)} sample(s) left out by the pre-flight check (data.on_bad_sample: skip)"
    out.append(f"<h3>Pre-flight</h3><p>{_e(skipped if bad else 'no sample was skipped')}</p>")
    if bad:
        rows = [[_e(b.get("split", "")), _e(b.get("index", "")), _e(b.get("reason", ""))] for b in bad]
        out.append(_table(["split", "index", "reason"], rows))
    return "\n".join(out)


def _int_cell(counts: Sequence[int], i: int) -> str:
    return f'<td class="n">{int(counts[i]) if i < len(counts) else 0}</td>'


def _number_cell(key: str, value: Any) -> str:
    shown = "n/a" if value is None else ("nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}")
    return f'<td class="n" data-metric="{_e(key)}">{shown}</td>'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """An HTML table (no header row for ``None``); cells are escaped text, or whole ``<td>`` elements."""
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header is not None else ""
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>"


def _plot(plots: Path, name: str) -> Path:
    """A test picture: ``plots/test/<name>`` (where a test writes it), else ``plots/<name>``."""
    tested = plots / "test" / name
    return tested if tested.is_file() else plots / name


def _image_file(path: Path, alt: str) -> str:
    """``path`` as an embedded picture; a note when it is missing or no PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return f'<p class="muted">{_e(path.name)}: not written</p>'
    if not data.startswith(b"\x89PNG"):
        return f'<p class="muted">{_e(path.name)}: not a PNG</p>'
    return _img(data, alt)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


# ----------------------------------------------------------------------------
# The grid of test predictions
# ----------------------------------------------------------------------------


def _prediction_grid(pipeline: Pipeline, task: Task) -> str:
    """The best and worst :data:`EXAMPLES` of the first :data:`GRADED_SAMPLES` test samples, drawn and captioned."""
    graded = grade_test_samples(pipeline, task, GRADED_SAMPLES)
    if not graded:
        return ""
    ranked = sorted(graded, key=lambda g: g[0].score, reverse=True)
    best = ranked[:EXAMPLES]
    worst = ranked[max(EXAMPLES, len(ranked) - EXAMPLES) :][::-1]
    out = []
    for title, chosen in (("Best", best), ("Worst", worst)):
        figures = [_figure(task, g, image, sample_id, pipeline.class_colors) for g, image, sample_id in chosen]
        if figures:
            out.append(f'<h3>{title} of {len(graded)} test samples</h3><div class="grid">{"".join(figures)}</div>')
    return "\n".join(out)


def grade_test_samples(pipeline: Pipeline, task: Task, limit: int) -> list[tuple[Graded, np.ndarray, str]]:
    """The first ``limit`` test samples predicted by the pipeline's model and graded by ``task``:
    (grade, image (H, W, 3) uint8 RGB, sample id) each; samples that cannot be read are left out."""
    from vision_pipe.predict import predict_batches

    split = pipeline.splits["test"]
    samples = []
    for i in range(min(limit, len(split))):
        try:
            samples.append(split[i])
        except DataError:
            continue
    if not samples:
        return []
    images = [s["image"] for s in samples]
    config = pipeline.config
    found = predict_batches(
        pipeline.module, images, config.data.input_size, config.data.batch_size, pipeline.class_names
    )
    return [
        (task.grade(p, s, pipeline.class_names), s["image"], str(s.get("id", i)))
        for i, (p, s) in enumerate(zip(found, samples, strict=True))
    ]


def _figure(task: Task, graded: Graded, image: np.ndarray, sample_id: str, colors: Any) -> str:
    drawn = task.draw(image, graded.shown, colors)
    scale = _THUMB_SIDE / max(drawn.shape[:2])
    if scale < 1:
        drawn = cv2.resize(drawn, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    png = encode_png(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), sample_id)
    caption = f"{sample_id}: {graded.caption}"
    return f"<figure>{_img(png, sample_id)}<figcaption>{_e(caption)}</figcaption></figure>"


# ----------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


__all__ = ["EXAMPLES", "GRADED_SAMPLES", "grade_test_samples", "rebuild_report", "render_page", "write_report"]
