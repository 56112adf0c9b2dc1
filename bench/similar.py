"""k-NN of ``vision_pipe.similar.knn`` over a random index: milliseconds per query and memory, on the CPU.

    .venv/bin/python bench/similar.py [--rows 100000] [--dim 512] [--queries 64] [--k 8] [--repeat 3]

Random float32 embeddings (N, C) stand in for an index of N images; a batch of Q queries is
searched exactly (chunks of 8192 rows, one matrix product and torch.topk each), for both metrics.
Prints the median ms per query, the index's size and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from vision_pipe.similar import knn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    index = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    print(
        f"index {args.rows} x {args.dim} float32 ({index.nbytes / 2**20:.0f} MiB), {args.queries} queries, k={args.k}, "
        f"{torch.get_num_threads()} torch threads"
    )
    for metric in ("euclidean", "cosine"):
        knn(queries[:2], index, args.k, metric)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            knn(queries, index, args.k, metric)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1000 / args.queries
        print(f"{metric:<9}  {ms:.2f} ms/query  (batch of {args.queries}: {statistics.median(times) * 1000:.0f} ms)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
