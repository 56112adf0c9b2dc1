"""Quality and time of the detection job: fit + test pipelines/shapes_detection.yaml.

Target (issue #16): test mAP@0.5 >= 0.97 with the default settings in <= 10 minutes on a 2-core CPU
(issue #4's was >= 0.90 in <= 15 minutes).

    .venv/bin/python bench/shapes_detection.py [key=value ...]

Prints the test mAP@0.5 and COCO mAP@[.5:.95] (with AP@0.5 per class), the
wall-clock time of fit + test, the training throughput (images/s) and the device.

On a CPU the pipeline gives the model the cores the DataLoader workers leave
(see ``vision_pipe.trainer.cpu_threads``).
"""

from __future__ import annotations

import sys

from _job import device_name, run_job


def main(overrides: list[str]) -> None:
    job = run_job("shapes_detection", overrides)
    test = job.test
    print()
    print(f"device:              {device_name()}")
    print(f"epochs:              {job.epochs}")
    print(f"test/map_50:         {test['test/map_50']:.4f}   (target >= 0.97)")
    print(f"test/map:            {test['test/map']:.4f}   (COCO mAP@[.5:.95])")
    for name in job.pipe.class_names:
        print(f"test/ap_50/{name + ':':<9}{test[f'test/ap_50/{name}']:.4f}")
    print(f"fit + test time:     {job.seconds:.1f} s   (target <= 600 s on a 2-core CPU)")
    print(f"training throughput: {job.images_per_second:.0f} images/s (fit incl. validation)")
    print(f"run directory:       {job.pipe.run_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
