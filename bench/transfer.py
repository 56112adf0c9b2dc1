"""Transfer learning: a pretrained backbone fine-tuned on 300 images against the same backbone from scratch.

Target (issue #12, "Evidence"): on a small labelled set, fine-tuning from a backbone
pretrained on a related task beats training the same backbone from scratch with the
same budget (epochs, learning-rate schedule).

    .venv/bin/python bench/transfer.py [--seeds 3] [--epochs 40] [--train-images 300]
                                       [--pretrain-epochs 15] [--pretrain-images 4000]
                                       [--workers W] [key=value ...]

Both tasks are ``pipelines/shapes_classification.yaml`` (VGG-11 backbone, width 16,
batch norm) with overrides:

- pretraining (once, a real ``Pipeline.fit()``): 3 classes (circle, square, triangle),
  ``--pretrain-images`` images generated from loader seed 1, split 0.8 / 0.1 / 0.1;
- fine-tuning: 5 classes (those 3 plus star and ellipse), images generated from loader
  seed 0: ``--train-images`` for training, a third of that for validation (which picks
  best.ckpt) and twice that for the test. Two arms per seed, built from the same
  overrides: (a) from scratch (He init), (b) ``model.backbone.weights`` = the
  pretraining run's best.ckpt (its ``backbone.*`` tensors, loaded strictly: the backbone
  is the same; the 5-class head is new in both arms). Each seed (``seed=0, 1, ...``:
  split, initialization, augmentation, batch order) gives both arms the same split; the
  script checks it from the runs' ``splits.json``.

Every arm: ``--epochs`` epochs, cosine schedule (no early stopping, so both train the
same number of steps), the pipeline's Adam lr 0.002 and augmentation, and an empty
statistics cache of its own (each fits its mean image and runs its pre-flight pass). Further
``key=value`` overrides apply to both fine-tuning arms. The script also checks that no
fine-tuning test image occurs among the pretraining images (by their pixels) and reads
the number of tensors loaded from the fine-tuned run's ``weights.json``. Prints each
seed's test accuracy and fit + test time per arm, then mean ± sample std and the range;
the pretraining time is paid once and is printed apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from _job import Job, device_name, run_job

from vision_pipe import SampleSource

PRETRAIN_SHAPES = ["circle", "square", "triangle"]
FINETUNE_SHAPES = ["circle", "square", "triangle", "star", "ellipse"]


def every_job(args: argparse.Namespace, out: Path) -> list[str]:
    """Overrides of every job: runs under ``out``, no progress bar or model summary, ``--workers``."""
    workers = [f"data.num_workers={args.workers}"] if args.workers is not None else []
    return ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"output_dir={out}", *workers]


def same_budget(epochs: int) -> list[str]:
    """A fixed budget: ``epochs`` epochs under a cosine schedule, no early stopping."""
    return [f"trainer.max_epochs={epochs}", "scheduler.name=cosine", "early_stopping.enabled=false"]


def pretrain_overrides(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        f"data.loader.shapes=[{','.join(PRETRAIN_SHAPES)}]",
        "data.loader.seed=1",
        f"data.loader.num_images={args.pretrain_images}",
        "data.split=[0.8,0.1,0.1]",
        *same_budget(args.pretrain_epochs),
        *every_job(args, out),
    ]


def finetune_overrides(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    """One arm's overrides for ``seed``: train / val / test = n, n/3, 2n images of loader seed 0."""
    n = args.train_images
    val, test = n // 3, 2 * n
    total = n + val + test
    return [
        f"seed={seed}",
        f"data.loader.shapes=[{','.join(FINETUNE_SHAPES)}]",
        "data.loader.seed=0",
        f"data.loader.num_images={total}",
        f"data.split=[{n / total},{val / total},{test / total}]",
        *same_budget(args.epochs),
        *every_job(args, out),
        *args.overrides,
    ]


def job(overrides: list[str], cache: Path, name: str = "shapes_classification") -> Job:
    """Fit + test ``pipelines/<name>.yaml`` with ``overrides`` and an empty statistics cache of its own, so
    that every arm does the same work (its mean image and pre-flight pass are not read from another's)."""
    previous = os.environ.get("VISION_PIPE_CACHE")
    os.environ["VISION_PIPE_CACHE"] = str(cache)
    try:
        return run_job(name, overrides)
    finally:
        if previous is None:
            del os.environ["VISION_PIPE_CACHE"]
        else:
            os.environ["VISION_PIPE_CACHE"] = previous


def image_hashes(source: SampleSource) -> set[str]:
    return {hashlib.sha256(source[i]["image"].tobytes()).hexdigest() for i in range(len(source))}


def run_dir(arm: Job) -> Path:
    assert arm.pipe.run_dir is not None
    return arm.pipe.run_dir


def spread(values: Iterable[float]) -> str:
    """``mean ± sample std (min–max)``."""
    v = list(values)
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.4f} ± {std:.4f} ({min(v):.4f}–{max(v):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds 0..N-1 (both arms each)")
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs of both arms")
    parser.add_argument("--train-images", type=int, default=300, help="fine-tuning training images")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--pretrain-images", type=int, default=4000)
    parser.add_argument("--workers", type=int, help="DataLoader workers of every job (default: the YAML's, auto)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further overrides of both fine-tuning arms")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pre = job(pretrain_overrides(args, out / "pretrain"), out / "cache" / "pretrain")
        weights = pre.pipe.best_checkpoint
        assert weights is not None
        pretrain_images = set().union(*(image_hashes(source) for source in pre.pipe.splits.values()))
        rows = []
        for seed in range(args.seeds):
            base = finetune_overrides(args, seed, out / f"seed{seed}")
            scratch = job(base, out / "cache" / f"scratch{seed}")
            tuned = job([*base, f"model.backbone.weights={weights}"], out / "cache" / f"tuned{seed}")
            splits = [(run_dir(arm) / "splits.json").read_text() for arm in (scratch, tuned)]
            assert splits[0] == splits[1], f"seed {seed}: the arms' splits differ"
            report = json.loads((run_dir(tuned) / "weights.json").read_text())
            shared = len(image_hashes(tuned.pipe.splits["test"]) & pretrain_images)
            rows.append((seed, scratch, tuned, report, shared))
    sizes = {k: len(v) for k, v in rows[0][1].pipe.splits.items()}
    print()
    print(f"device: {device_name()}")
    print(
        f"pretraining: {len(PRETRAIN_SHAPES)} classes ({', '.join(PRETRAIN_SHAPES)}), "
        f"{len(pre.pipe.splits['train'])} training images, {pre.epochs} epochs: test/acc "
        f"{pre.test['test/acc']:.4f}, fit + test {pre.seconds:.1f} s (paid once)"
    )
    print(
        f"fine-tuning: {len(FINETUNE_SHAPES)} classes ({', '.join(FINETUNE_SHAPES)}), "
        f"train / val / test {sizes['train']} / {sizes['val']} / {sizes['test']} images, {args.epochs} epochs, "
        "cosine schedule, same split per seed in both arms"
    )
    print_arms(rows, "fine-tuned")



def print_arms(rows: list[tuple[Any, ...]], arm: str) -> None:
    """Per seed, the from-scratch and the ``arm`` (pretrained) runs' test accuracy, time and what the weights
    loaded, then both arms' mean ± spread and the gain; ``rows``: (seed, scratch, tuned, weights report, shared)."""
    print(f"{'seed':>4} {'scratch test/acc':>16} {arm + ' test/acc':>19} {'scratch s':>9} {arm + ' s':>12}  weights")
    for seed, scratch, tuned, report, shared in rows:
        loaded = f"{report['loaded']} tensors loaded, {len(report['missing'])} missing"
        overlap = f"test images among pretraining images: {shared}"
        print(
            f"{seed:>4} {scratch.test['test/acc']:>16.4f} {tuned.test['test/acc']:>19.4f} "
            f"{scratch.seconds:>9.1f} {tuned.seconds:>12.1f}  {loaded}; {overlap}"
        )
    print(f"scratch    test/acc: {spread(r[1].test['test/acc'] for r in rows)}")
    print(f"{arm} test/acc: {spread(r[2].test['test/acc'] for r in rows)}")
    gains = [r[2].test["test/acc"] - r[1].test["test/acc"] for r in rows]
    print(f"gain ({arm} − scratch, per seed): {spread(gains)}")

if __name__ == "__main__":
    main()
