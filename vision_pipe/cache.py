"""Caches on disk and the fingerprints that key them.

Owns where caches live (:func:`cache_dir`: ``$VISION_PIPE_CACHE`` or
``~/.cache/vision-pipe``), the fingerprint of a fitted normalizer
(:func:`normalization_fingerprint`: the data, the resize and the stage with its
parameters), the streaming pass over resized training images a normalizer is
fitted on (:func:`iter_resized_images`), and the cached fit itself
(:func:`fit_normalizer`). The pre-flight pass keeps its own cache file under
:func:`cache_dir` (see :mod:`vision_pipe.preflight`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vision_pipe.data import _worker_init
from vision_pipe.distributed import wait_for_rank_zero
from vision_pipe.io import atomic_torch_save
from vision_pipe.samples import check_image
from vision_pipe.stages import Normalizer, SampleSource


def cache_dir() -> Path:
    """Where fitted statistics are cached: ``$VISION_PIPE_CACHE`` or ``~/.cache/vision-pipe``."""
    return Path(os.environ.get("VISION_PIPE_CACHE", Path.home() / ".cache" / "vision-pipe"))


def normalization_fingerprint(source: SampleSource, input_size: tuple[int, int], stage: dict[str, Any]) -> str:
    """Key of a fitted normalizer's cache: the data, the resize and the stage with its parameters."""
    payload = json.dumps(
        {"data": source.fingerprint(), "input_size": list(input_size), "resize": "INTER_LINEAR", "stage": stage},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class _ResizedImages(Dataset):
    def __init__(self, source: SampleSource, input_size: tuple[int, int]) -> None:
        self.source = source
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        sample = self.source[index]
        image = check_image(sample.get("image"), str(sample.get("id", "?")))
        h, w = self.input_size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)  # as A.Resize does
        return image


def iter_resized_images(source: SampleSource, input_size: tuple[int, int], num_workers: int) -> Iterator[np.ndarray]:
    """Yield every image of ``source`` resized to ``input_size``, one at a time."""
    loader = DataLoader(
        _ResizedImages(source, input_size),
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
    )
    for image in loader:
        yield image.numpy() if isinstance(image, torch.Tensor) else image


def normalizer_cache_path(train: SampleSource, input_size: tuple[int, int], stage_spec: dict[str, Any]) -> Path:
    """The cache file of ``stage_spec`` (resolved, with every parameter) fitted on ``train``."""
    key = normalization_fingerprint(train, input_size, stage_spec)
    return cache_dir() / "normalization" / f"{stage_spec['name']}-{key}.pt"


def fit_normalizer(
    normalizer: Normalizer,
    train: SampleSource,
    input_size: tuple[int, int],
    stage_spec: dict[str, Any],
    num_workers: int,
) -> bool:
    """Fit ``normalizer`` on ``train`` (one streaming pass), or load the cached fit; True on a cache hit.

    In a multi-process run rank 0 fits and the other processes wait and read its file.
    """
    path = normalizer_cache_path(train, input_size, stage_spec)
    wait_for_rank_zero(path, "fitted normalization")
    if path.exists():
        try:
            normalizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return True
        except Exception:
            pass  # a stale or broken cache file is refitted and replaced below
    normalizer.fit(iter_resized_images(train, input_size, num_workers))
    atomic_torch_save(normalizer.state_dict(), path)
    return False


__all__ = ["cache_dir", "fit_normalizer", "iter_resized_images", "normalization_fingerprint", "normalizer_cache_path"]
