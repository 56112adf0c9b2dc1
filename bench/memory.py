"""Memory as the dataset grows: indexing + pre-flight check + mean-image fit, 1k vs 10k images.

Target (issue #6): flat — nothing holds the dataset in memory; only the index
(one path per image) grows with it.

    .venv/bin/python bench/memory.py [--sizes 1000 10000] [--size 64] [--loader image_folder|synthetic_shapes]

For each size, a fresh Python process (so that its peak is its own) builds a
pipeline over that many images (``image_folder`` over PNG files written to a
temporary folder, or the ``synthetic_shapes`` generator), then runs the
pre-flight pass (every sample read and checked) and fits the mean image (one
streaming pass), with ``num_workers: 0`` so that all the work is in that
process and with an empty cache so that nothing is skipped. It reports:

- the peak of Python/numpy allocations during that work (``tracemalloc``);
- the process's peak resident memory (``resource.getrusage``) above its
  resident memory after the imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SIZE = 32


def write_images(root: Path, count: int, size: int) -> None:
    """``count`` random PNG images in ``root/<a|b>/``."""
    rng = np.random.default_rng(0)
    import cv2

    for i in range(count):
        path = root / ("a" if i % 2 else "b") / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def config(loader: dict[str, Any], out: str) -> dict[str, Any]:
    """A small classification pipeline with the mean image, everything in this process."""
    return {
        "name": "bench_memory",
        "task": "classification",
        "data": {
            "loader": loader,
            "input_size": [INPUT_SIZE, INPUT_SIZE],
            "num_workers": 0,
            "normalization": {"name": "mean_image"},
        },
        "model": {"backbone": {"name": "vgg", "depth": 8, "width": 4, "stages": 2}, "head": {"name": "classification"}},
        "output_dir": out,
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(loader: dict[str, Any]) -> dict[str, float]:
    """In this process: peak memory of indexing + pre-flight + mean-image fit."""
    import tracemalloc

    from vision_pipe import Pipeline

    with tempfile.TemporaryDirectory() as out:
        os.environ["VISION_PIPE_CACHE"] = str(Path(out) / "cache")
        base_rss = _rss_bytes()
        tracemalloc.start()
        pipe = Pipeline.from_dict(config(loader, out))  # indexing (the loader's load) and the split
        report = pipe.preflight()
        pipe.fit_normalizer()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "samples": float(sum(report.checked.values())),
        "traced_peak_mb": peak / 2**20,
        "rss_peak_above_imports_mb": max(0, peak_rss - base_rss) / 2**20,
    }


def run_child(loader: dict[str, Any]) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import memory; "
        "print(json.dumps(memory.measure(json.loads(sys.argv[2]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), json.dumps(loader)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--size", type=int, default=64, help="side of the images")
    parser.add_argument("--loader", choices=["image_folder", "synthetic_shapes"], default="image_folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            if args.loader == "image_folder":
                root = Path(tmp) / f"images{n}"
                write_images(root, n, args.size)
                loader: dict[str, Any] = {"name": "image_folder", "root": str(root)}
            else:
                loader = {"name": "synthetic_shapes", "num_images": n, "size": args.size}
            rows.append((n, run_child(loader)))
    print(f"{args.loader}, {args.size}px images, input size {INPUT_SIZE}, indexing + pre-flight + mean-image fit:")
    print(f"{'images':>8} {'checked':>8} {'tracemalloc peak MB':>20} {'RSS peak above imports MB':>26}")
    for n, r in rows:
        print(f"{n:>8} {int(r['samples']):>8} {r['traced_peak_mb']:>20.1f} {r['rss_peak_above_imports_mb']:>26.1f}")
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        data_mb = (n1 - n0) * args.size * args.size * 3 / 2**20
        grow = b["traced_peak_mb"] - a["traced_peak_mb"]
        print(f"{n1 - n0} more images ({data_mb:.0f} MB decoded) added {grow:.1f} MB to the traced peak "
              f"({grow * 2**20 / (n1 - n0):.0f} bytes per image: the index)")


if __name__ == "__main__":
    main()
