"""Quality and time of pipelines/shapes_segmentation.yaml, and its three upsampling modes side by side.

Target (issue #16): test mIoU >= 0.92 with the default settings in <= 10 minutes on a 2-core CPU
(the FCN issue's was >= 0.85).

    .venv/bin/python bench/shapes_segmentation.py [--modes transposed,unpool,bilinear] [key=value ...]

First fits and tests the pipeline as shipped (its ``upsample`` is the default
mode); then fits and tests it again with each other mode of ``--modes``
(``--modes ""`` skips them), everything else equal (same data, split, seed,
epochs and overrides). Prints mIoU, pixel accuracy and wall time per mode.
"""

from __future__ import annotations

import argparse

import yaml
from _job import ROOT, device_name, run_job

PIPELINE = ROOT / "pipelines" / "shapes_segmentation.yaml"


def run(overrides: list[str]) -> dict[str, float]:
    job = run_job("shapes_segmentation", overrides)
    return {
        "miou": job.test["test/miou"],
        "pixel_acc": job.test["test/pixel_acc"],
        "epochs": job.epochs,
        "seconds": job.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="transposed,unpool,bilinear", help="upsampling modes to compare")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    default_mode = yaml.safe_load(PIPELINE.read_text())["model"]["head"]["upsample"]
    results = {f"{default_mode} (default)": run(args.overrides)}
    for mode in [m for m in args.modes.split(",") if m and m != default_mode]:
        results[mode] = run([*args.overrides, f"model.head.upsample={mode}"])

    print(f"\ndevice: {device_name()}    pipeline: {PIPELINE.relative_to(ROOT)} {' '.join(args.overrides)}")
    print(f"{'upsample':<22} {'test/miou':>9} {'pixel_acc':>9} {'epochs':>6} {'fit+test':>9}")
    for mode, r in results.items():
        print(f"{mode:<22} {r['miou']:>9.4f} {r['pixel_acc']:>9.4f} {int(r['epochs']):>6} {r['seconds']:>8.1f}s")
    print("target: test/miou >= 0.92 with the default settings in <= 600 s on a 2-core CPU")


if __name__ == "__main__":
    main()
