"""Quality and time of the detection job: fit + test pipelines/shapes_detection.yaml.

Target (issue #4, SSD): test mAP@0.5 >= 0.90 in <= 15 minutes on a 2-core CPU.

    .venv/bin/python bench/shapes_detection.py [key=value ...]

Prints the test mAP@0.5 and COCO mAP@[.5:.95] (with AP@0.5 per class), the
wall-clock time of fit + test, the training throughput (images/s) and the device.

On a CPU the pipeline gives the model the cores the DataLoader workers leave
(see ``vision_pipe.pipeline._cpu_threads``).
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
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "shapes_detection.yaml", overrides)
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
    print(f"test/map_50:         {test['test/map_50']:.4f}   (target >= 0.90)")
    print(f"test/map:            {test['test/map']:.4f}   (COCO mAP@[.5:.95])")
    for name in pipe.class_names:
        print(f"test/ap_50/{name + ':':<9}{test[f'test/ap_50/{name}']:.4f}")
    print(f"fit + test time:     {total:.1f} s   (target <= 900 s on a 2-core CPU)")
    print(f"training throughput: {images / fit_seconds:.0f} images/s (fit incl. validation)")
    print(f"run directory:       {pipe.run_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
