"""Quality and time of the detection job: fit + test pipelines/shapes_detection.yaml.

Target (issue #4, SSD): test mAP@0.5 >= 0.90 in <= 15 minutes on a 2-core CPU.

    .venv/bin/python bench/shapes_detection.py [key=value ...]

Prints the test mAP@0.5 and COCO mAP@[.5:.95] (with AP@0.5 per class), the
wall-clock time of fit + test, the training throughput (images/s) and the device.

On a CPU the model gets the cores the DataLoader workers leave (on 2 cores: one
thread for the model, one worker for the data). PyTorch's default of one thread
per core oversubscribes the CPU next to the workers, and on a CPU shared with other
jobs its threads wait on each other: a training step measured about 10× slower
with 2 threads than with 1 while other jobs loaded the 2 cores (load average ~5).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from vision_pipe import Pipeline
from vision_pipe.data import default_num_workers

ROOT = Path(__file__).resolve().parent.parent


def main(overrides: list[str]) -> None:
    start = time.perf_counter()
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "shapes_detection.yaml", overrides)
    if not torch.cuda.is_available():
        workers = pipe.config.data.num_workers
        workers = default_num_workers() if workers == "auto" else int(workers)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    fit_start = time.perf_counter()
    fit = pipe.fit()
    fit_seconds = time.perf_counter() - fit_start
    test = pipe.test()
    total = time.perf_counter() - start
    epochs = int(fit["fit/epochs"])
    images = epochs * len(pipe.splits["train"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
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
