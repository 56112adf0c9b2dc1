"""The first GPU run (issues #16 section 4, #17): every GPU figure of one device call, printed and as JSON.

    PYTHONUNBUFFERED=1 bash bench/gpu_setup.sh python3 bench/gpu_check.py --out "$OUT"
    python3 bench/gpu_check.py [--out DIR] [--warmup 20] [--steps 100] [--budget 420] [--quick]
                               [--parts ssd,loader,...] [--allow-cpu]

BENCHMARKS.md ("First GPU run: how") says how to prepare and pass it to the device tool. The parts, in the
order they run (``--parts`` picks some; the time guard skips a part that would end past ``--budget``
seconds from the start, and each part's failure is recorded and the next one runs):

- ``env``: torch / CUDA / cuDNN / package versions, the GPU, nvidia-smi's clocks, CPU cores and the
  DataLoader workers of ``num_workers: auto``, and an 8192³ bf16 matrix product (TFLOP/s; is the card well).
- ``syncs``: ``bench/ssd_step.py``'s :func:`measure` on CUDA: milliseconds of the SSD loss (+ backward) and
  detection per batch of 32, and the host synchronizations of each (``set_sync_debug_mode("warn")``).
- ``ssd``: ``pipelines/ssd300_gpu.yaml`` as written (bf16-mixed, channels_last, compile, cuDNN benchmark)
  fitted for ``--warmup`` + ``--steps`` training steps (no validation, no scheduler, no early stopping):
  training images/s over the ``--steps`` steps after the warm-up (a callback synchronizes at both ends of
  the window), the first step's seconds (compilation), peak GPU memory (``max_memory_allocated``), GPU
  utilization / SM clock / power sampled by ``nvidia-smi -lms 200`` over the window, and the host
  synchronizations of one whole training step (the one before the window).
- ``loader``: the same pipeline's training DataLoader alone (``pipe.datamodule.train_dataloader()``,
  as ``bench/data.py`` iterates it): images/s after its first batches, against ``ssd``'s training images/s.
- ``ssd_cached``: ``ssd`` with one loader batch repeated instead of the loader (still copied to the GPU
  each step): the model's own rate, which ``ssd`` reaches only when the loader keeps up.
- ``segmentation``: ``pipelines/shapes_segmentation.yaml`` scaled up (256 px, VGG-16-BN width 64, five
  stages, FCN-8s skips) with ``upsample: unpool`` in bf16-mixed, channels_last, cuDNN benchmark, no
  compile: training images/s and peak memory.
- ``ssd_all_off``: ``ssd`` in fp32 (``32-true``), no channels_last, no compile, no cuDNN benchmark.
- ``ssd_no_compile``, ``ssd_no_benchmark``, ``ssd_no_channels_last``, ``ssd_no_bf16``: ``ssd`` with one
  switch off each; then ``segmentation_transposed`` (``segmentation`` with transposed convolutions).
- ``shapes_<task>_fp32`` / ``shapes_<task>_bf16``: the three shapes pipelines at their own sizes in fp32
  and in bf16-mixed + channels_last + cuDNN benchmark (no compile: small models).
- ``overhead``: ``bench/overhead.py --task classification`` on this device (a subprocess): its ratio.

Every fitted part also reports the forward GFLOPs per image (torch's FLOP counter), the training TFLOP/s
they imply (3 × forward × images/s) and their fraction of the card's dense bf16 peak.

Everything goes to ``DIR/gpu_check.json`` (``--out``, default ``$OUT`` or ``.``), rewritten after each
part, so a run stopped by the device tool's limit still returns what it measured; a table ends the output.
``--quick``: 5 + 10 steps, fewer parts (a smoke run on the GPU). Without CUDA the script stops with exit
code 2, unless ``--allow-cpu`` (or ``--dry-run``, the same tiny runs on any device: the test suite's): tiny images, batches and step counts, no compile, no DataLoader workers
(a smoke test of the script itself, a few seconds per part). Exit code 1 when a part failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vision_pipe import Pipeline, hookimpl
from vision_pipe.plugins import PluginManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssd_step  # noqa: E402  (bench/ssd_step.py, next to this file)

ROOT = Path(__file__).resolve().parent.parent
SWITCHES = ("bf16", "channels_last", "compile", "benchmark")
ALL_ON = dict.fromkeys(SWITCHES, True)  #: pipelines/ssd300_gpu.yaml as written
SPLIT = "data.split=[0.9,0.05,0.05]"  #: most images in the training split (fewer to check and to fit)
PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "torchmetrics",
    "albumentations",
    "albucore",
    "opencv-python-headless",
    "pydantic",
    "pycocotools",
    "timm",
    "numpy",
    "vision-pipe",
)


# ----------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------


class GpuSampler:
    """``nvidia-smi -lms 200`` in the background: utilization (%), SM clock (MHz), power (W) between
    :meth:`start` and :meth:`stop`; nothing where nvidia-smi is missing."""

    FIELDS = ("utilization.gpu", "clocks.sm", "power.draw", "memory.used")

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        query = ["nvidia-smi", f"--query-gpu={','.join(self.FIELDS)}", "--format=csv,noheader,nounits", "-lms", "200"]
        self._proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            values = []
            for field in line.split(","):
                try:
                    values.append(float(field))
                except ValueError:
                    values.append(math.nan)
            if len(values) == len(self.FIELDS):
                self.rows.append(values)

    def stop(self) -> dict[str, Any] | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        out: dict[str, Any] = {"samples": len(self.rows), "period_ms": 200}
        for i, name in enumerate(self.FIELDS):
            column = [r[i] for r in self.rows if not math.isnan(r[i])]
            if column:
                out[name] = {
                    "mean": statistics.fmean(column),
                    "median": statistics.median(column),
                    "min": min(column),
                    "max": max(column),
                }
        return out


def cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Times training steps ``warmup`` .. ``warmup + steps - 1`` (synchronized at both ends), samples the
    GPU over them, and counts the host synchronizations of step ``warmup - 1`` (on CUDA, ``warmup >= 2``)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.step = 0
        self.images = 0
        self.marks: dict[str, float] = {}
        self.sampler = GpuSampler()
        self.gpu: dict[str, Any] | None = None
        self.peak_allocated = self.peak_reserved = 0
        self.syncs: int | None = None
        self._counting: ExitStack | None = None
        self._count: list[int] = []
        self.batch_size = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks["train_start"] = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.step == 0:
            self.marks["first_start"] = time.perf_counter()
        if self.step == self.warmup - 1 and self.warmup >= 2 and torch.cuda.is_available():
            self._counting = ExitStack()
            self._count = self._counting.enter_context(ssd_step.counting_syncs())
        if self.step == self.warmup:
            cuda_sync()
            self.marks["window_start"] = time.perf_counter()
            self.sampler.start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._counting is not None:
            self._counting.close()
            self._counting = None
            self.syncs = self._count[0] if self._count else None
        if self.step == 0:
            cuda_sync()
            self.marks["first_end"] = time.perf_counter()
        if self.warmup <= self.step < self.warmup + self.steps:
            self.batch_size = int(batch["image"].shape[0])
            self.images += self.batch_size
        if self.step == self.warmup + self.steps - 1:
            cuda_sync()
            self.marks["window_end"] = time.perf_counter()
            self.gpu = self.sampler.stop()
            if torch.cuda.is_available():
                self.peak_allocated = torch.cuda.max_memory_allocated()
                self.peak_reserved = torch.cuda.max_memory_reserved()
        self.step += 1

    def result(self) -> dict[str, Any]:
        m = self.marks
        if "window_end" not in m:
            raise RuntimeError(f"training ran {self.step} steps, fewer than warm-up {self.warmup} + {self.steps}")
        seconds = m["window_end"] - m["window_start"]
        return {
            "images_per_s": self.images / seconds,
            "ms_per_step": 1000 * seconds / self.steps,
            "batch_size": self.batch_size,
            "window_steps": self.steps,
            "window_s": seconds,
            "warmup_steps": self.warmup,
            "first_step_s": m["first_end"] - m["first_start"],
            "train_start_to_window_s": m["window_start"] - m["train_start"],
            "peak_allocated_gib": self.peak_allocated / 2**30,
            "peak_reserved_gib": self.peak_reserved / 2**30,
            "syncs_per_training_step": self.syncs,
            "gpu": self.gpu,
        }


class _AddCallback:
    """A vision-pipe plugin that adds a callback to the fit's trainer (as bench/overhead.py does)."""

    def __init__(self, callback: pl.Callback) -> None:
        self.callback = callback

    @hookimpl
    def vision_pipe_before_fit(self, pipeline: Pipeline, run_dir: Path) -> None:
        assert pipeline.trainer is not None
        pipeline.trainer.callbacks.append(self.callback)


class _Repeat:
    """An iterable of one batch ``n`` times (any iterable is a Lightning training loader)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        return (self.batch for _ in range(self.n))


# ----------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------


class Check:
    """The settings of one invocation and the overrides of its runs."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.cpu = not torch.cuda.is_available()
        self.tiny = self.cpu or bool(getattr(args, "dry_run", False))  #: tiny sizes and steps (a smoke run)
        self.work = work
        self.warmup, self.steps = args.warmup, args.steps

    def common(self, batch_size: int, split_train: float = 0.9) -> tuple[list[str], int]:
        """Overrides every fit shares, and the number of images that gives enough training batches."""
        needed = (self.warmup + self.steps + 2) * batch_size
        images = math.ceil(needed / split_train) + batch_size
        out = self.work / "runs"
        overrides = [
            SPLIT,
            f"data.loader.num_images={images}",
            f"trainer.max_steps={self.warmup + self.steps}",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.devices=1",
            f"trainer.accelerator={'cpu' if self.cpu else 'gpu'}",
            "scheduler.name=none",
            "early_stopping.enabled=false",
            f"output_dir={out}",
        ]
        if self.tiny:
            overrides.append("data.num_workers=0")
        return overrides, images

    def switch_overrides(self, switches: dict[str, bool]) -> list[str]:
        on = {**ALL_ON, **switches}
        compile_on = on["compile"] and not self.tiny  # no compiling in a smoke run
        return [
            f"trainer.precision={'bf16-mixed' if on['bf16'] else '32-true'}",
            f"model.channels_last={str(on['channels_last']).lower()}",
            f"model.compile={str(compile_on).lower()}",
            f"trainer.benchmark={str(on['benchmark']).lower()}",
        ]

    def ssd_overrides(self, switches: dict[str, bool]) -> list[str]:
        batch = 4 if self.tiny else 32
        common, _ = self.common(batch)
        tiny = [  # 128 px: five maps (16² .. 1²), so one aspect-ratio list fewer
            "data.loader.size=128",
            "data.input_size=[128,128]",
            "model.backbone.width=8",
            f"data.batch_size={batch}",
            "model.head.num_maps=5",
            "model.head.aspect_ratios=[[2],[2,3],[2,3],[2],[2]]",
        ]
        return common + self.switch_overrides(switches) + (tiny if self.tiny else [])

    def segmentation_overrides(self, upsample: str) -> list[str]:
        batch, size, width = (4, 64, 8) if self.tiny else (32, 256, 64)
        common, _ = self.common(batch)
        return (
            common
            + self.switch_overrides({"compile": False})
            + [
                f"data.loader.size={size}",
                f"data.input_size=[{size},{size}]",
                f"data.batch_size={batch}",
                f"model.backbone={{name: vgg, depth: 16, width: {width}, stages: 5, batch_norm: true}}",
                f"model.head.upsample={upsample}",
            ]
        )

    def shapes_overrides(self, task: str, fast: bool) -> list[str]:
        """``pipelines/shapes_<task>.yaml`` at its own sizes and batch, for warm-up + steps: ``fast`` is
        bf16-mixed + channels_last + cuDNN benchmark (no compile: these models are small), else fp32."""
        batch = 4 if self.tiny else {"classification": 128, "segmentation": 32, "detection": 32}[task]
        common, _ = self.common(batch)
        switches = {"bf16": fast, "channels_last": fast, "benchmark": fast, "compile": False}
        return [*common, *self.switch_overrides(switches), f"data.batch_size={batch}"]

    def fit(self, yaml: str, overrides: list[str], *, cached: bool = False) -> dict[str, Any]:
        """Fit ``pipelines/<yaml>`` with ``overrides`` for warm-up + steps; the :class:`StepTimer` figures."""
        timer = StepTimer(self.warmup, self.steps)
        manager = PluginManager()
        manager.register(_AddCallback(timer), name="gpu-check-timer")
        pipe = Pipeline.from_yaml(ROOT / "pipelines" / yaml, overrides, manager=manager)
        assert pipe.datamodule is not None
        if cached:
            loader = pipe.datamodule.train_dataloader()
            batch = next(iter(loader))
            del loader
            pipe.datamodule.train_dataloader = lambda: _Repeat(batch, self.warmup + self.steps)  # type: ignore[method-assign]
        flops = forward_flops(pipe)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipe.fit()
        result = {"fit_s": time.perf_counter() - start, **timer.result(), "overrides": overrides}
        result.update(achieved_flops(flops, result["images_per_s"]))
        result["loss"] = _float(pipe.trainer.callback_metrics.get("train/loss")) if pipe.trainer else None
        return result

    def overhead(self) -> dict[str, Any]:
        """``bench/overhead.py`` (classification) on this device, in a subprocess: the pipeline's seconds per
        epoch over a plain PyTorch loop's, and whether the losses are equal."""
        accelerator = "cpu" if self.cpu else "gpu"
        size = ["--epochs", "2", "--images", "64", "--rounds", "1"] if self.tiny else ["--epochs", "4", "--rounds", "1"]
        cmd = [sys.executable, str(ROOT / "bench" / "overhead.py"), "--task", "classification", *size]
        cmd += ["--accelerator", accelerator, f"output_dir={self.work / 'overhead'}"]
        if self.tiny:
            cmd += ["trainer.enable_progress_bar=false"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        lines = [line for line in proc.stdout.splitlines() if "ratio" in line or "losses equal" in line]
        if proc.returncode != 0:
            raise RuntimeError(f"bench/overhead.py exited {proc.returncode}: {proc.stderr[-2000:]}")
        ratios = [float(line.split("ratio")[1].split()[0]) for line in lines if "ratio" in line]
        return {
            "lines": lines,
            "ratio_wall": ratios[0] if ratios else None,
            "ratio_cpu": ratios[1] if len(ratios) > 1 else None,
        }

    def loader(self) -> dict[str, Any]:
        """images/s of the ``ssd`` pipeline's training DataLoader alone."""
        pipe = Pipeline.from_yaml(ROOT / "pipelines" / "ssd300_gpu.yaml", self.ssd_overrides({}))
        assert pipe.datamodule is not None
        loader = pipe.datamodule.train_dataloader()
        warm = min(self.warmup, 10)
        start = time.perf_counter()
        batches = iter(loader)
        for _ in range(warm):
            next(batches)
        t0 = time.perf_counter()
        images = 0
        for _ in range(self.steps):
            images += int(next(batches)["image"].shape[0])
        seconds = time.perf_counter() - t0
        result = {
            "images_per_s": images / seconds,
            "window_batches": self.steps,
            "first_batches": warm,
            "first_batches_s": t0 - start,
            "workers": loader.num_workers,
            "pin_memory": loader.pin_memory,
            "batch_size": loader.batch_size,
        }
        del batches, loader
        return result


def environment() -> dict[str, Any]:
    from importlib import metadata

    from vision_pipe.data import cpu_count, default_num_workers

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": cpu_count(),
        "num_workers_auto": default_num_workers(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "packages": {},
    }
    for name in PACKAGES:
        try:
            env["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["packages"][name] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
            "memory_gib": p.total_memory / 2**30,
        }
        env["matmul_bf16_tflops"] = _matmul_tflops()
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu,utilization.gpu"
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True, timeout=30
        )
        env["nvidia_smi"] = smi.stdout.strip()
    return env


def _matmul_tflops(n: int = 8192, repeat: int = 10) -> float:
    """bf16 n×n×n matrix products on random data, timed with CUDA events after 3 warm-ups."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeat
    del a, b
    return 2 * n**3 / seconds / 1e12


#: Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) of the cards the device tool lends.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def forward_flops(pipe: Pipeline) -> float | None:
    """FLOPs of one forward pass of ``pipe``'s model on one image at its input size (torch's FLOP counter,
    on a CPU copy of the input), or ``None`` where the counter fails."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = pipe.config.data.input_size
    module = pipe.module
    images = torch.zeros(1, 3, h, w, dtype=torch.uint8, device=next(module.parameters()).device)
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(images)
        return float(counter.get_total_flops())
    except Exception:  # a model the counter cannot follow: no FLOP figure, the rest stands
        return None
    finally:
        module.train(was_training)


def achieved_flops(forward: float | None, images_per_s: float) -> dict[str, Any]:
    """Training FLOP/s estimated as 3 × forward FLOPs (forward + backward) × images/s, and its fraction
    of the device's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`; ``None`` for another device)."""
    if forward is None:
        return {"forward_gflops_per_image": None, "achieved_tflops": None, "fraction_of_bf16_peak": None}
    achieved = 3 * forward * images_per_s / 1e12
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return {
        "forward_gflops_per_image": forward / 1e9,
        "achieved_tflops": achieved,
        "bf16_peak_tflops": peak,
        "fraction_of_bf16_peak": achieved / peak if peak else None,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

COMPILING = {"ssd", "ssd_cached", "ssd_no_benchmark", "ssd_no_channels_last", "ssd_no_bf16"}
QUICK_PARTS = ("env", "syncs", "ssd", "loader", "segmentation", "ssd_all_off", "shapes_detection_bf16")
CPU_PARTS = (
    "env",
    "syncs",
    "ssd",
    "loader",
    "ssd_cached",
    "segmentation",
    "ssd_all_off",
    "shapes_classification_fp32",
    "shapes_segmentation_bf16",
    "shapes_detection_fp32",
    "overhead",
)


def parts_of(check: Check) -> dict[str, Callable[[], dict[str, Any]]]:
    tiny = check.tiny
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "env": environment,
        "syncs": lambda: ssd_step.measure(
            batch=2 if tiny else 32, repeat=1 if tiny else 10, device="cpu" if check.cpu else "cuda"
        ),
        "ssd": lambda: check.fit("ssd300_gpu.yaml", check.ssd_overrides({})),
        "loader": check.loader,
        "ssd_cached": lambda: check.fit("ssd300_gpu.yaml", check.ssd_overrides({}), cached=True),
        "segmentation": lambda: check.fit("shapes_segmentation.yaml", check.segmentation_overrides("unpool")),
        "ssd_all_off": lambda: check.fit("ssd300_gpu.yaml", check.ssd_overrides(dict.fromkeys(SWITCHES, False))),
    }
    for switch in ("compile", "benchmark", "channels_last", "bf16"):
        parts[f"ssd_no_{switch}"] = lambda s=switch: check.fit("ssd300_gpu.yaml", check.ssd_overrides({s: False}))
    parts["segmentation_transposed"] = lambda: check.fit(
        "shapes_segmentation.yaml", check.segmentation_overrides("transposed")
    )
    for task in ("classification", "segmentation", "detection"):
        for fast in (False, True):
            parts[f"shapes_{task}_{'bf16' if fast else 'fp32'}"] = lambda t=task, f=fast: check.fit(
                f"shapes_{t}.yaml", check.shapes_overrides(t, f)
            )
    parts["overhead"] = check.overhead
    return parts


def estimate(name: str, report: dict[str, Any]) -> float:
    """Seconds a part should take: the measured time of a like part, else a guess (H200, 16 cores)."""
    done = report["parts"]
    if name in ("env", "syncs", "loader"):
        return 20.0
    if name.startswith("shapes_"):
        return 40.0
    if name == "overhead":
        return 90.0
    like = "ssd" if name in COMPILING else ("ssd_all_off" if name.startswith("ssd") else "segmentation")
    if like in done and done[like].get("status") == "ok":
        return float(done[like]["seconds"])
    return 150.0 if name in COMPILING else 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder of gpu_check.json (default $OUT)")
    parser.add_argument("--warmup", type=int, default=None, help="training steps before the timed window (20)")
    parser.add_argument("--steps", type=int, default=None, help="training steps timed (100)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds: no part starts that would end later")
    parser.add_argument("--quick", action="store_true", help="5 + 10 steps, fewer parts")
    parser.add_argument("--parts", default=None, help="comma-separated part names (default: all)")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA: tiny runs that smoke-test the script")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes and steps on whatever device there is (the test suite's run)"
    )
    args = parser.parse_args()
    args.allow_cpu = args.allow_cpu or args.dry_run
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
            "run it on the GPU machine, or pass --allow-cpu for a tiny smoke run",
            file=sys.stderr,
        )
        return 2
    cpu = not torch.cuda.is_available() or args.dry_run  # tiny: sizes, steps and parts of a smoke run
    small = args.quick or cpu
    args.warmup = args.warmup if args.warmup is not None else (2 if cpu else 5 if args.quick else 20)
    args.steps = args.steps if args.steps is not None else (3 if cpu else 10 if args.quick else 100)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gpu_check.json"
    start = time.perf_counter()
    faulthandler.dump_traceback_later(args.budget + 120, exit=False)  # where a stuck run is, in the log

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.environ.setdefault("VISION_PIPE_CACHE", str(work / "cache"))
    check = Check(args, work)
    parts = parts_of(check)
    names = args.parts.split(",") if args.parts else list(CPU_PARTS if cpu else QUICK_PARTS if small else parts)
    unknown = [n for n in names if n not in parts]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(parts)}")
    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if not cpu else f"CPU ({os.cpu_count()} cores), --allow-cpu",
        "args": vars(args),
        "parts": {},
    }
    for name in names:
        if time.perf_counter() - start + estimate(name, report) > args.budget:
            report["parts"][name] = {"status": "skipped", "reason": f"would end past --budget {args.budget:.0f} s"}
            print(f"== {name}: skipped (time guard)", flush=True)
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any]
        try:
            entry = {"status": "ok", "result": parts[name]()}
        except Exception as exc:  # one part's failure must not lose the others
            entry = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - t0
        report["parts"][name] = entry
        print(json.dumps(entry.get("result", entry.get("error")), default=str), flush=True)
        _tidy(work)
        report["elapsed_s"] = time.perf_counter() - start
        json_path.write_text(json.dumps(report, indent=1, default=str))
    faulthandler.cancel_dump_traceback_later()
    shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    print(f"written: {json_path}")
    return 1 if any(p["status"] == "error" for p in report["parts"].values()) else 0


def _tidy(work: Path) -> None:
    """Between parts: the run folders (checkpoints), compiled graphs and cached GPU memory go."""
    shutil.rmtree(work / "runs", ignore_errors=True)
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['device']}; total {report.get('elapsed_s', 0):.0f} s")
    print(
        f"{'part':<24} {'status':<8} {'images/s':>9} {'ms/step':>8} {'peak GiB':>9} {'GPU %':>6} {'1st step s':>10} {'s':>6}"
    )
    train_rate = None
    for name, p in report["parts"].items():
        r = p.get("result") or {}
        util = ((r.get("gpu") or {}).get("utilization.gpu") or {}).get("mean")
        cells = [
            f"{r['images_per_s']:9.0f}" if "images_per_s" in r else f"{'':9}",
            f"{r['ms_per_step']:8.1f}" if "ms_per_step" in r else f"{'':8}",
            f"{r['peak_allocated_gib']:9.2f}" if "peak_allocated_gib" in r else f"{'':9}",
            f"{util:6.0f}" if util is not None else f"{'':6}",
            f"{r['first_step_s']:10.1f}" if "first_step_s" in r else f"{'':10}",
        ]
        print(f"{name:<24} {p['status']:<8} {' '.join(cells)} {p.get('seconds', 0):6.0f}")
        if name == "ssd" and "images_per_s" in r:
            train_rate = r["images_per_s"]
    parts = report["parts"]
    loader = (parts.get("loader") or {}).get("result") or {}
    if train_rate and "images_per_s" in loader:
        print(
            f"loader alone / ssd training: {loader['images_per_s']:.0f} / {train_rate:.0f} images/s "
            f"= {loader['images_per_s'] / train_rate:.2f} ({loader['workers']} workers)"
        )
    syncs = (parts.get("syncs") or {}).get("result") or {}
    if "syncs_loss_step" in syncs:
        print(
            f"host synchronizations: SSD loss step {syncs['syncs_loss_step']}, detection {syncs['syncs_detection']}, "
            f"whole ssd training step {((parts.get('ssd') or {}).get('result') or {}).get('syncs_per_training_step')}"
        )
    errors = [n for n, p in parts.items() if p["status"] == "error"]
    if errors:
        print("errors: " + "; ".join(f"{n}: {parts[n]['error']}" for n in errors))


if __name__ == "__main__":
    sys.exit(main())
