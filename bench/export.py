"""Exported models vs PyTorch eager on the CPU: per-image latency at batch 1 and throughput at batch 32.

For each shipped shapes pipeline (classification, segmentation, detection) the model
is built (untrained: the timing does not depend on the weights), exported with a
dynamic batch to ONNX and to TorchScript, and the same work — uint8 NHWC images in,
normalization, model and the head's export-time decoding — is timed in torch eager
(``ExportModel`` under ``inference_mode``), in the loaded TorchScript module (under
``inference_mode``, after the warm-up runs its profiling executor needs: 10 per figure) and in ONNX
Runtime, all with the same number of threads. The speed-ups are eager's time over each.

Usage: ``.venv/bin/python bench/export.py [--threads N] [--runs N] [--batch N]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vision_pipe import Pipeline
from vision_pipe.export import ExportModel
from vision_pipe.torchscript_predict import load_torchscript

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ("shapes_classification", "shapes_segmentation", "shapes_detection")


def _time(run: Callable[[], object], runs: int) -> float:
    """Median seconds of ``run`` over ``runs`` calls, after 10 warm-up calls (TorchScript's profiling executor
    optimizes a graph for a shape only after its first few runs of it)."""
    for _ in range(10):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, threads: int, runs: int, big_batch: int, out: Path) -> list[str]:
    overrides = ["data.loader.num_images=20", "data.num_workers=0", f"output_dir={out / 'runs'}"]
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / f"{name}.yaml", overrides)
    path = pipe.export(out / name, dynamic_batch=True)
    scripted = load_torchscript(pipe.export(out / f"{name}_ts", format="torchscript", dynamic_batch=True))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = ExportModel(pipe.module.eval().inference_model()).eval()
    height, width = pipe.config.data.input_size
    rows = []
    for batch in (1, big_batch):
        images = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        tensor = torch.from_numpy(images)

        def eager(tensor: torch.Tensor = tensor) -> object:
            with torch.inference_mode():
                return model(tensor)

        def torchscript(tensor: torch.Tensor = tensor) -> object:
            with torch.inference_mode():
                return scripted(tensor)

        def onnx(images: np.ndarray = images) -> object:
            return session.run(None, {"images": images})

        times = [_time(run, runs) for run in (eager, torchscript, onnx)]
        if batch == 1:
            cells = [f"{t * 1e3:.2f} ms" for t in times]
            measure = "latency, batch 1"
        else:
            cells = [f"{batch / t:.0f} images/s" for t in times]
            measure = f"throughput, batch {batch}"
        speedups = [f"{times[0] / t:.2f}×" for t in times[1:]]
        rows.append(f"| {name} | {measure} | {' | '.join(cells)} | {' | '.join(speedups)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of both (default: all cores)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per figure (median)")
    parser.add_argument("--batch", type=int, default=32, help="the batch of the throughput figures (default: 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}, torch {torch.__version__}, onnxruntime {ort.__version__}\n")
    print(
        "| pipeline | measure | torch eager | TorchScript | ONNX Runtime | speed-up TorchScript | speed-up ONNX |\n"
        "|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in PIPELINES:
            for row in bench(name, args.threads, args.runs, args.batch, Path(tmp)):
                print(row, flush=True)


if __name__ == "__main__":
    main()
