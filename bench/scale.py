"""Scaling of the data side: time per 1k images and peak memory at 1k / 10k / 100k images.

Target (issue #16): time per epoch grows linearly with the number of images (s/1k images flat) and
memory stays flat.

    .venv/bin/python bench/scale.py [--counts 1000 10000 100000] [--size 64] [--input-size 48]
                                    [--workers W] [--batch-size 64] [--cache none|ram]

For each count, ``count`` JPEG images of one shape each are written into a temporary ``root/<class>/``
folder (bench/data.py's generator), then a fresh process builds a classification pipeline on it
(``image_folder`` loader, every image in the training split) and times, as a user's first run sees them:

- index: ``Pipeline.from_dict`` (listing the folder, the splits);
- pre-flight: reading and checking every image once (``Pipeline.preflight``; its cache is off);
- epoch: one epoch of the training loader (decode, augmentation, collation; ``--cache ram``: the
  decode-once cache is filled first and timed as ``cache``, then the epoch reads it).

Printed per count: seconds per 1k images of each phase and the peak resident memory of the main process
and of its DataLoader workers (``ru_maxrss``), in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data import pipeline_for, write_images

from vision_pipe.data import default_num_workers


def measure(root: Path, args: argparse.Namespace) -> dict[str, float]:
    """One run on the images under ``root`` (in this process): seconds per phase and peak RSS in MiB."""
    os.environ["VISION_PIPE_CACHE"] = str(root.parent / "cache")  # nothing cached from an earlier count
    start = time.perf_counter()
    pipe = pipeline_for(root, args)  # bench/data.py's pipeline: image_folder, every image in train
    times = {"index": time.perf_counter() - start}
    start = time.perf_counter()
    pipe.preflight()
    times["preflight"] = time.perf_counter() - start
    if args.cache != "none":
        start = time.perf_counter()
        pipe.cache_images()
        times["cache"] = time.perf_counter() - start
    loader = pipe.datamodule.train_dataloader()
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += int(batch["image"].shape[0])
    times["epoch"] = time.perf_counter() - start
    del loader  # the workers exit: their peak memory is counted in RUSAGE_CHILDREN
    return {
        **times,
        "images": count,
        "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--size", type=int, default=64, help="side of the image files")
    parser.add_argument("--input-size", type=int, default=48)
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache", choices=["none", "ram"], default="none")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one run in a fresh process
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args)))
        return
    rows = []
    for n in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "images"
            start = time.perf_counter()
            write_images(root, n, args.size, "jpg")
            written = time.perf_counter() - start
            argv = [sys.executable, __file__, "--measure", str(root), *sys.argv[1:]]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
        rows.append((n, result))
        per_k = {k: 1000 * v / n for k, v in result.items() if k in ("index", "preflight", "cache", "epoch")}
        print(f"{n:>7} images (written in {written:.0f} s): "
              + ", ".join(f"{k} {v:.3f} s/1k" for k, v in per_k.items())
              + f"; peak RSS main {result['rss_main_mib']:.0f} MiB, workers {result['rss_workers_mib']:.0f} MiB",
              flush=True)  # fmt: skip
    print(f"\n{args.size} px JPEG -> {args.input_size} px, batch {args.batch_size}, {args.workers} workers, "
          f"data.cache {args.cache}")
    first_n, first = rows[0]
    for n, result in rows[1:]:
        growth = (result["epoch"] / n) / (first["epoch"] / first_n)
        print(f"epoch s/1k at {n} vs {first_n}: {growth:.2f}x   (linear: 1.0); peak RSS main "
              f"{result['rss_main_mib'] / first['rss_main_mib']:.2f}x")


if __name__ == "__main__":
    main()
