"""Quality and time of the default job: fit + test pipelines/shapes_classification.yaml.

Target (issue: the spine): test top-1 accuracy >= 0.98 in <= 5 minutes on a 2-core CPU.

    .venv/bin/python bench/shapes_classification.py [key=value ...]

Prints the test accuracy, the wall-clock time of fit + test, the training
throughput (images/s) and the device.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from vision_pipe import Pipeline

ROOT = Path(__file__).resolve().parent.parent


def main(overrides: list[str]) -> None:
    start = time.perf_counter()
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "shapes_classification.yaml", overrides)
    fit_start = time.perf_counter()
    fit = pipe.fit()
    fit_seconds = time.perf_counter() - fit_start
    test = pipe.test()
    total = time.perf_counter() - start
    epochs = int(fit["fit/epochs"])
    images = epochs * len(pipe.splits["train"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print()
    print(f"device:              {device}")
    print(f"epochs:              {epochs}")
    print(f"test/acc:            {test['test/acc']:.4f}   (target >= 0.98)")
    print(f"test/acc_top5:       {test['test/acc_top5']:.4f}")
    print(f"fit + test time:     {total:.1f} s   (target <= 300 s on a 2-core CPU)")
    print(f"training throughput: {images / fit_seconds:.0f} images/s (fit incl. validation)")
    print(f"run directory:       {pipe.run_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
