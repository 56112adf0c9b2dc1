"""What the quality benches share: fit + test one ready pipeline and time it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vision_pipe import Pipeline

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    """One fit + test of ``pipelines/<name>.yaml``: its metrics and timings (seconds)."""

    pipe: Pipeline
    fit: dict[str, float]
    test: dict[str, float]
    seconds: float  #: build + fit + test
    fit_seconds: float

    @property
    def epochs(self) -> int:
        return int(self.fit["fit/epochs"])

    @property
    def images_per_second(self) -> float:
        """Training throughput over the fit, validation included."""
        return self.epochs * len(self.pipe.splits["train"]) / self.fit_seconds


def run_job(name: str, overrides: list[str]) -> Job:
    """Build ``pipelines/<name>.yaml`` with ``overrides``, fit it, test its best checkpoint."""
    start = time.perf_counter()
    pipe = Pipeline.from_yaml(ROOT / "pipelines" / f"{name}.yaml", overrides)
    fit_start = time.perf_counter()
    fit = pipe.fit()
    fit_seconds = time.perf_counter() - fit_start
    test = pipe.test()
    return Job(pipe, fit, test, time.perf_counter() - start, fit_seconds)


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
