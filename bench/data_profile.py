"""Data path, per sample: where the pipeline's training loader spends time that the raw loop does not.

    .venv/bin/python bench/data_profile.py [--images 1024] [--size 96] [--input-size 64] [--rounds 9] [--top 15]

In this process, without DataLoader workers (so a profiler sees everything), both
sides of ``bench/data.py`` fetch and collate the same JPEGs in batches of 64 with
one thread: the pipeline's training dataset (``__getitems__``, what its
DataLoader calls) + its collate, against the raw ``cv2.imread`` → ``cvtColor`` →
``Compose`` dataset + torch's ``default_collate``. Rounds alternate the two sides;
the script prints the median and the fastest round of each in µs per sample, and
their ratio (raw / pipeline: the in-process form of ``bench/data.py``'s ratio).

Then one pass of each side under cProfile: the functions whose own time (tottime)
differs the most between the sides, in µs per sample — positive is the
pipeline's extra cost. cProfile inflates Python-level calls several times over,
so read its column for where the time goes, the timed rounds for how much.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import pipeline_for, raw_loader, write_images  # noqa: E402

BATCH = 64


def sides(root: Path, args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """One pass over every image for each side: fetch in batches of 64, then collate."""
    files = write_images(root, args.images, args.size, "jpg")
    config = argparse.Namespace(input_size=args.input_size, batch_size=BATCH, workers=0, cache="none")
    pipe = pipeline_for(root, config)
    dataset, collate = pipe.datamodule.dataset("train"), pipe.datamodule.train_dataloader().collate_fn
    raw = raw_loader(files, config).dataset
    batches = [list(range(s, min(args.images, s + BATCH))) for s in range(0, args.images, BATCH)]

    def pipeline() -> None:
        for indices in batches:
            collate(dataset.__getitems__(indices))

    def raw_side() -> None:
        for indices in batches:
            default_collate([raw[i] for i in indices])

    return {"pipeline": pipeline, "raw": raw_side}


def own_times(run: Callable[[], None]) -> dict[tuple[str, str], float]:
    """Seconds of own time (tottime) per (file name, function) over one call of ``run``."""
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return {(Path(key[0]).name, key[2]): value[2] for key, value in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=96, help="side of the image files")
    parser.add_argument("--input-size", type=int, default=64, help="side the images are resized to")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--top", type=int, default=15, help="functions listed from the profile")
    args = parser.parse_args()
    cv2.setNumThreads(0)  # as in a DataLoader worker
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = sides(Path(tmp) / "images", args)
        per_sample: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.rounds):
            for name in runs if round_ % 2 else reversed(list(runs)):
                start = time.perf_counter()
                runs[name]()
                per_sample[name].append((time.perf_counter() - start) / args.images * 1e6)
        profiles = {name: own_times(run) for name, run in runs.items()}
    print(
        f"{args.images} JPEGs {args.size}px -> {args.input_size}px, batches of {BATCH}, one thread, no workers; "
        f"{args.rounds} alternating rounds"
    )
    for name, values in per_sample.items():
        print(f"{name:>9}: median {statistics.median(values):7.1f} µs/sample, fastest round {min(values):7.1f}")
    pipe, raw = per_sample["pipeline"], per_sample["raw"]
    print(
        f"ratio raw/pipeline: median {statistics.median(raw) / statistics.median(pipe):.3f}, "
        f"fastest rounds {min(raw) / min(pipe):.3f}"
    )
    keys = set(profiles["pipeline"]) | set(profiles["raw"])
    scale = 1e6 / args.images
    diffs = sorted(((profiles["pipeline"].get(k, 0.0) - profiles["raw"].get(k, 0.0)) * scale, k) for k in keys)
    print(
        f"\ncProfile, own time pipeline - raw (µs/sample; profiled totals: pipeline "
        f"{sum(profiles['pipeline'].values()) * scale:.0f}, raw {sum(profiles['raw'].values()) * scale:.0f})"
    )
    for diff, (file, function) in [*reversed(diffs[-args.top :]), *diffs[: min(5, args.top)]]:
        print(f"{diff:+9.2f}  {function}  ({file})")


if __name__ == "__main__":
    main()
