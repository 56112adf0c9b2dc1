"""``vision-pipe runs`` / ``compare`` on run folders written by hand (known values), and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml

from vision_pipe import VisionPipeError, find_runs
from vision_pipe.cli import main
from vision_pipe.run_table import config_differences, flatten, format_duration


def _config(lr: float, monitor: str = "val/loss", mode: str = "min") -> dict[str, Any]:
    return {
        "name": "shapes",
        "task": "classification",
        "output_dir": "somewhere",
        "optimizer": {"name": "adam", "lr": lr},
        "data": {"augmentation": [{"name": "HorizontalFlip", "p": 0.5}]},
        "checkpoint": {"monitor": monitor, "mode": mode},
    }


def _run(
    root: Path,
    stamp: str,
    config: dict[str, Any],
    curve: dict[str, list[float]],
    metrics: dict[str, float],
    status: dict[str, Any] | None = None,
) -> Path:
    """A run folder: config.yaml, metrics.json, logs/csv/metrics.csv (one row per epoch), run.json when given."""
    run = root / "shapes" / stamp
    (run / "logs" / "csv").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    keys = sorted(curve)
    rows = ["epoch,step," + ",".join(keys)]
    for epoch in range(len(curve[keys[0]])):
        rows.append(f"{epoch},{epoch * 3}," + ",".join(str(curve[k][epoch]) for k in keys))
    (run / "logs" / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status is not None:
        (run / "run.json").write_text(json.dumps(status))
    return run


@pytest.fixture
def three_runs(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "runs"
    a = _run(
        root,
        "20261101-100000",
        _config(0.01),
        {"val/loss": [0.9, 0.7, 0.8], "train/loss": [1.0, 0.8, 0.6], "val/acc": [0.5, 0.6, 0.7]},
        {"test/acc": 0.75, "test/loss": 0.5},
        {"started": "2026-11-01T10:00:00", "status": "finished", "seconds": 125.0},
    )
    b = _run(
        root,
        "20261031-080000",
        _config(0.002, "val/acc", "max"),
        {"val/loss": [1.0, 0.9], "train/loss": [1.1, 1.0], "val/acc": [0.5, 0.6]},
        {},
        {"started": "2026-10-31T08:00:00", "status": "failed", "seconds": 30.0, "error": "RuntimeError: boom"},
    )
    c = _run(root, "20261102-090000", _config(0.01), {"val/loss": [0.4], "train/loss": [0.5], "val/acc": [0.9]}, {})
    os.utime(c / "config.yaml", (1000, 1000))
    os.utime(c / "logs" / "csv" / "metrics.csv", (1042, 1042))
    (root / "shapes" / "not-a-run").mkdir()
    (root / "shapes" / "not-a-run" / "config.yaml").write_text("name: x\n")  # no metrics.json, no checkpoints
    return root, [a, b, c]


def test_runs_are_sorted_by_start_with_status_duration_best_value_and_differences(three_runs):
    root, (a, b, c) = three_runs
    runs = find_runs(root)
    assert [r.path for r in runs] == ["shapes/20261031-080000", "shapes/20261101-100000", "shapes/20261102-090000"]
    rb, ra, rc = runs
    assert (ra.status, ra.seconds, ra.monitor, ra.best_val) == ("finished", 125.0, "val/loss", 0.7)
    assert ra.test == {"test/acc": 0.75}
    assert (rb.status, rb.error, rb.monitor, rb.best_val, rb.test) == (
        "failed",
        "RuntimeError: boom",
        "val/acc",
        0.6,
        {},
    )
    # no run.json: the start from the folder's name, the duration from config.yaml to the last log write
    assert (rc.status, rc.started, rc.seconds) == ("unknown", "2026-11-02T09:00:00", 42.0)
    assert list(ra.differences) == ["optimizer.lr", "checkpoint.mode", "checkpoint.monitor"]
    assert ra.differences == {"optimizer.lr": 0.01, "checkpoint.mode": "min", "checkpoint.monitor": "val/loss"}


def test_runs_prints_a_table_and_json(three_runs, capsys):
    root, _ = three_runs
    assert main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "started", "task", "status", "duration", "best", "val", "test", "differences"]
    assert len(lines) == 4
    assert lines[1].startswith("shapes/20261031-080000  2026-10-31 08:00:00  classification  failed")
    for part in ["finished", "2 min 05 s", "val/loss 0.7 ", "acc=0.75", "optimizer.lr=0.01 checkpoint.mode=min"]:
        assert part in lines[2]
    assert "unknown" in lines[3] and "42 s" in lines[3]
    assert main(["runs", str(root), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in records] == ["failed", "finished", "unknown"]
    assert records[1]["config"]["data.augmentation.0.p"] == 0.5 and records[1]["best_val"] == 0.7


def test_compare_prints_the_differences_and_writes_the_curves(three_runs, tmp_path, capsys):
    _, (a, b, _) = three_runs
    out = tmp_path / "cmp" / "compare.png"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("config differences\n")
    assert [line.split()[1:] for line in printed.splitlines() if line.startswith("optimizer.lr")] == [["0.002", "0.01"]]
    assert f"curves: {out}" in printed
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0] > 100


@pytest.mark.parametrize("make", [False, True])
def test_a_missing_or_empty_folder_is_one_clear_message(tmp_path, capsys, make):
    folder = tmp_path / "nothing"
    if make:
        folder.mkdir()
    with pytest.raises(VisionPipeError, match="no runs found" if make else "no such folder"):
        find_runs(folder)
    assert main(["runs", str(folder)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder}: ")


def test_flatten_and_differences_and_durations():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}], "f": {}}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d.0.e": 3,
        "f": {},
    }
    assert [format_duration(s) for s in (None, 4.4, 65, 7620)] == ["-", "4 s", "1 min 05 s", "2 h 07 min"]
    assert config_differences([]) == []


def test_a_run_whose_config_cannot_be_read_is_named(three_runs, capsys):
    root, (a, _, _) = three_runs
    (a / "config.yaml").write_text("name: [unclosed\n")
    assert main(["runs", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {a / 'config.yaml'}: cannot read the run's config")
