"""Adversarial training vs normal training: test accuracy under FGSM for each ε, side by side.

Trains ``pipelines/shapes_classification.yaml`` twice from the same seed, small and short (2000 images, 5 epochs),
once normally and once with ``training.adversarial: {method: fgsm, eps: EPS, fraction: 0.5}``,
then attacks both test splits with FGSM at ε = 0, 1, 2, 4, 8, 16 (/255) and prints the accuracies; writes
both curves into one PNG (``--out``, default ``adversarial_bench.png``).

    .venv/bin/python bench/adversarial.py [--eps 4] [--out FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _job import ROOT, device_name

from vision_pipe import Pipeline
from vision_pipe.attack import metric_key, plot_attack_curves

EPS = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
SMALL = [
    "data.loader.num_images=2000",
    "data.batch_size=32",
    "trainer.max_epochs=5",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~early_stopping",
]


def run(overrides: list[str]) -> tuple[dict[float, float], float]:
    """Fit + FGSM-attack one model: test accuracy per ε, and the seconds the fit took."""
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / "shapes_classification.yaml", [*SMALL, *overrides])
    start = time.perf_counter()
    pipe.fit()
    seconds = time.perf_counter() - start
    metrics = pipe.attack(eps=EPS, examples=0)
    return {e: metrics[metric_key("fgsm", e, "acc")] for e in EPS}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=4.0, help="adversarial training eps, /255 (default 4)")
    parser.add_argument("--out", type=Path, default=Path("adversarial_bench.png"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    adversarial = f"training.adversarial={{method: fgsm, eps: {args.eps:g}, fraction: 0.5}}"
    normal, normal_s = run(args.overrides)
    robust, robust_s = run([*args.overrides, adversarial])
    print(f"\ndevice: {device_name()}; fit {normal_s:.0f} s normal, {robust_s:.0f} s adversarial")
    print(f"test accuracy under FGSM (adversarial training: eps={args.eps:g}/255, fraction 0.5)")
    print(f"{'eps (/255)':>10} {'normal':>8} {'adversarial':>12}")
    for e in EPS:
        print(f"{e:>10g} {normal[e]:>8.4f} {robust[e]:>12.4f}")
    curves = {"normal training": normal, f"adversarial training (eps={args.eps:g})": robust}
    plot_attack_curves(curves, "test acc under FGSM", args.out)
    print(f"curves: {args.out}")


if __name__ == "__main__":
    main()
