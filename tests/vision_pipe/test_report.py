"""``report.html`` of real tiny runs of each task, read back with the standard library's HTML parser."""

from __future__ import annotations

import base64
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vision_pipe import Pipeline
from vision_pipe.cli import main
from vision_pipe.report import EXAMPLES, render_page
from vision_pipe.tasks import get_task

HEADS = {
    "classification": {"name": "classification", "dropout": 0.1},
    "segmentation": {"name": "fcn", "upsample": "bilinear", "skips": "none"},
    "detection": {"name": "ssd", "extra_channels": 8},
}


class Page(HTMLParser):
    """The images (``src``, ``alt``), the metric cells (``data-metric`` → text) and every tag of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []
        self.metrics: dict[str, str] = {}
        self.tags: set[str] = set()
        self.links: list[str] = []
        self._metric: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append((found.get("src") or "", found.get("alt") or ""))
        self.links += [v or "" for k, v in attrs if k in ("href", "src") and tag != "img"]
        self._metric = found.get("data-metric")

    def handle_data(self, data: str) -> None:
        if self._metric is not None:
            self.metrics[self._metric] = data
            self._metric = None


def _png(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.size > 0
    return image


def check_report(run_dir: Path, task: str) -> Page:
    """Every picture a valid embedded PNG, none missing, no external resource; the metrics shown = metrics.json's."""
    page = Page((run_dir / "report.html").read_text(encoding="utf-8"))
    assert "script" not in page.tags and "link" not in page.tags and page.links == []
    for src, _ in page.images:
        _png(src)
    alts = [alt for _, alt in page.images]
    test_size = json.loads((run_dir / "splits.json").read_text())["sizes"]["test"]
    grid = min(EXAMPLES, test_size) + min(EXAMPLES, max(0, test_size - EXAMPLES))
    plots = get_task(task).report_plots
    assert alts[: 1 + len(plots)] == ["training curves", *plots]
    assert len(alts) == 1 + len(plots) + grid
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_class = {k for k in metrics if k.count("/") == 2 and k.split("/")[1] in get_task(task).per_class_metrics}
    shown = {k for k in metrics if k.count("/") == 1} | {k for k in per_class if k.startswith("test/")}
    assert set(page.metrics) == shown and f"test/{get_task(task).main_metrics[0]}" in shown
    for key, text in page.metrics.items():
        value = metrics[key]
        if value is None or math.isnan(value):
            assert text in ("n/a", "nan"), (key, text)
        else:
            assert float(text) == pytest.approx(value, abs=5e-5), key
    return page


@pytest.mark.parametrize("task", list(HEADS))
def test_a_fit_and_test_write_a_self_contained_report(task, tiny_config, capsys):
    tiny_config["task"] = task
    tiny_config["model"]["head"] = HEADS[task]
    tiny_config["trainer"]["max_epochs"] = 1
    if task != "classification":
        tiny_config["data"]["input_size"] = [32, 32]
        tiny_config["data"]["loader"].update(size=32, num_images=40)
    pipe = Pipeline.from_dict(tiny_config)
    pipe.fit()
    pipe.test()
    assert pipe.run_dir is not None
    first = check_report(pipe.run_dir, task)
    if task == "classification":  # rebuilt from the run folder and its best checkpoint: the same page
        (pipe.run_dir / "report.html").unlink()
        assert main(["report", str(pipe.run_dir)]) == 0
        assert capsys.readouterr().out.strip() == f"report: {pipe.run_dir / 'report.html'}"
        again = check_report(pipe.run_dir, task)
        assert again.metrics == first.metrics and [a for _, a in again.images] == [a for _, a in first.images]


def test_every_user_string_is_escaped(tmp_path: Path):
    run = tmp_path / "runs" / "x" / "20261201-120000"
    (run / "plots").mkdir(parents=True)
    evil = "<script>alert(1)</script>"
    (run / "config.yaml").write_text(f"name: '{evil}'\n")
    metrics: dict[str, Any] = {f"test/acc/{evil}": 0.5, "test/acc": 0.25}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "preflight.json").write_text(
        json.dumps({"checked": {"test": 2}, "bad": [{"split": "test", "index": 1, "reason": evil}], "class_counts": {}})
    )
    page_text = render_page(run, get_task("classification"), [evil, "ok"])
    assert "<script" not in page_text and page_text.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4
    page = Page(page_text)
    assert page.metrics == {"test/acc": "0.2500", f"test/acc/{evil}": "0.5000", "test/acc/ok": "n/a"}
    assert page.images == []  # no curves or plots written: notes instead of broken pictures
