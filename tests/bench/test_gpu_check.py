"""bench/gpu_check.py --dry-run on the CPU: every part of the first GPU run runs, so it cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_part_of_the_gpu_check_runs_at_tiny_sizes(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)]
    env = {**os.environ, "VISION_PIPE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    expected = {"env", "syncs", "ssd", "loader", "ssd_cached", "segmentation", "ssd_all_off", "overhead"}
    expected |= {"shapes_classification_fp32", "shapes_segmentation_bf16", "shapes_detection_fp32"}
    assert set(parts) == expected and all(p["status"] == "ok" for p in parts.values()), parts
    for name in ("ssd", "segmentation", "shapes_classification_fp32"):
        result = parts[name]["result"]
        assert result["images_per_s"] > 0 and result["window_steps"] == 3
        assert result["forward_gflops_per_image"] > 0 and result["achieved_tflops"] > 0
    assert parts["loader"]["result"]["images_per_s"] > 0
    assert parts["syncs"]["result"]["detection_ms"] > 0
    assert parts["overhead"]["result"]["ratio_wall"] > 0
    assert "written:" in proc.stdout
