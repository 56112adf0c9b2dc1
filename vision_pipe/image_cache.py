"""The decode-once image cache (``data.cache: none|ram|disk``).

Each sample of each split is decoded once and resized to the pipeline's input
size exactly as the first step of the training/evaluation transform does
(:func:`vision_pipe.data.input_resize`: the same ``A.Resize``, masks with
``INTER_NEAREST_EXACT``); the uint8 arrays are kept and the samples are served
from them. The transform still runs whole on every sample, every epoch: its
resize step then meets an image already at the input size, which OpenCV copies
unchanged, and the random stream of the augmentation is untouched — so a cached
run gives the same batches as an uncached one under the same seed.

- ``ram``: one array per split in shared memory (``torch`` shared storage), which
  every DataLoader worker reads without a copy;
- ``disk``: ``.npy`` files memory-mapped from ``<cache_dir>/images/<key>/``, the key
  being the split's data fingerprint, the input size and the task. The folder is
  written under a temporary name and renamed whole, so a half-written cache is
  never read; a second run reuses it; changed data changes the key. In a
  multi-process run rank 0 writes it and the others wait for it.

The bytes needed are estimated and logged before caching; ``ram`` that does not
fit in the available memory (or in ``/dev/shm``) stops with a message that
suggests ``disk``. Detection boxes are resized with the image (albumentations'
box rules, none dropped) and kept beside it.

``auto`` (the default) caches in ``ram`` when a fit starts and the estimate is
under :data:`AUTO_FRACTION` of the available memory, else not at all: a fit
reads every image once per epoch, so decoding once pays from the second epoch;
``validate``/``test``/``predict`` read each image once and are not cached unless
asked for (``disk`` then also serves later runs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vision_pipe.cache import cache_dir
from vision_pipe.data import _worker_init, input_resize
from vision_pipe.distributed import is_secondary_process, wait_for_rank_zero
from vision_pipe.errors import ConfigError, DataError
from vision_pipe.samples import check_image
from vision_pipe.stages import Sample, SampleSource

log = logging.getLogger("vision_pipe")

#: Bumped whenever what is cached (or how it is resized) changes, so old caches are not read.
CACHE_VERSION = 1
#: The share of the available memory a ``ram`` cache may take.
RAM_FRACTION = 0.8
#: ``auto`` caches in ``ram`` only when the cache takes at most this share of the available memory.
AUTO_FRACTION = 0.25
CACHED_TASKS = ("classification", "segmentation", "detection")
#: Splits up to this size are decoded in the calling process: starting workers would cost more.
IN_PROCESS_SAMPLES = 256


class CachedSource(SampleSource):
    """The samples of ``source`` served from cached, already-resized arrays (see the module doc).

    ``images`` (N, H, W, 3) and ``masks`` (N, H, W) are torch tensors (``ram``, shared) or
    numpy memory maps (``disk``); ``extras`` the other keys of each sample (id, label).
    """

    def __init__(
        self,
        source: SampleSource,
        images: torch.Tensor | np.ndarray,
        masks: torch.Tensor | np.ndarray | None,
        orig_sizes: np.ndarray,
        extras: list[dict[str, Any]],
    ) -> None:
        self.source = source
        self.images = images
        self.masks = masks
        self.orig_sizes = orig_sizes
        self.extras = extras

    def __len__(self) -> int:
        return len(self.extras)

    def __getitem__(self, index: int) -> Sample:
        sample: dict[str, Any] = dict(self.extras[index])
        sample["image"] = _numpy(self.images[index])
        if self.masks is not None:
            sample["mask"] = _numpy(self.masks[index])
        sample["orig_size"] = tuple(int(v) for v in self.orig_sizes[index])
        return sample  # type: ignore[return-value]

    def fingerprint(self) -> str:
        return self.source.fingerprint()  # the same samples: caches keyed on it (normalization) stay valid


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A private copy of one cached array: the transform may write into it, the cache stays as it is."""
    return np.array(value.numpy() if isinstance(value, torch.Tensor) else value)


class _Decode(Dataset):
    """One sample decoded, checked and resized as the transform's first step does."""

    def __init__(self, source: SampleSource, input_size: tuple[int, int], task: str) -> None:
        from vision_pipe.tasks import get_task

        self.source, self.task = source, get_task(task)
        # boxes follow the resize under the task's own box handling (clipped, none dropped)
        self.resize = self.task.compose([input_resize(input_size)])

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray | None, tuple[int, int], dict[str, Any]]:
        sample = self.source[index]
        sample_id = str(sample.get("id", "?"))
        image = check_image(sample.get("image"), sample_id)
        inputs: dict[str, Any] = {"image": image, **self.task.transform_inputs(sample)}
        if "mask" in inputs and inputs["mask"].dtype != np.uint8:
            raise DataError(f"{sample_id}: data.cache holds uint8 masks (at most 255 classes); use data.cache: none")
        out = self.resize(**inputs)
        extras = {k: _plain(v) for k, v in sample.items() if k not in ("image", "mask")}
        if "bboxes" in out:  # detection: the resized boxes, with the labels of the boxes kept
            extras["boxes"] = np.asarray(out["bboxes"], np.float32).reshape(-1, 4).tolist()
            extras["labels"] = [int(v) for v in out["labels"]]
            extras["difficult"] = [bool(v) for v in out["difficult"]]
        return index, out["image"], out.get("mask"), (int(image.shape[0]), int(image.shape[1])), extras


def _as_is(item: Any) -> Any:
    return item


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it (the disk cache keeps the extras in meta.json)."""
    if isinstance(value, np.generic):
        return value.item()
    return value.tolist() if isinstance(value, np.ndarray) else value


def cache_key(source: SampleSource, input_size: tuple[int, int], task: str) -> str:
    """The disk cache's key: the data fingerprint, the input size, the task and the resize."""
    payload = json.dumps(
        {"v": CACHE_VERSION, "data": source.fingerprint(), "input_size": list(input_size), "task": task},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_path(source: SampleSource, input_size: tuple[int, int], task: str) -> Path:
    """The folder of ``source``'s disk cache."""
    return cache_dir() / "images" / cache_key(source, input_size, task)


def bytes_needed(n: int, input_size: tuple[int, int], task: str) -> int:
    """The bytes ``n`` cached samples take: RGB uint8 images (+ uint8 masks for segmentation)."""
    h, w = input_size
    return n * h * w * (3 + (task == "segmentation"))


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def check_fits(mode: str, need: int, free: int, where: str) -> None:
    """Stop with a message when a ``mode`` cache of ``need`` bytes does not fit in ``free`` (``where``)."""
    if mode == "ram" and free and need > RAM_FRACTION * free:
        raise DataError(
            f"data.cache: ram needs {_fmt(need)} but {where} has {_fmt(free)} available "
            f"(the cache may take {RAM_FRACTION:.0%}); use data.cache: disk (memory-mapped files under "
            f"{cache_dir() / 'images'}) or data.cache: none"
        )
    if mode == "disk" and free and need > free:
        raise DataError(
            f"data.cache: disk needs {_fmt(need)} but {where} has {_fmt(free)} free; free some space, "
            "point $VISION_PIPE_CACHE elsewhere, or use data.cache: none"
        )


def _fill(
    source: SampleSource,
    input_size: tuple[int, int],
    task: str,
    num_workers: int,
    images: np.ndarray,
    masks: np.ndarray | None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Decode every sample of ``source`` into ``images`` (and ``masks``); the original sizes and the extras."""
    orig_sizes = np.zeros((len(source), 2), np.int64)
    extras: list[dict[str, Any]] = [{} for _ in range(len(source))]
    num_workers = num_workers if len(source) > IN_PROCESS_SAMPLES else 0
    loader = DataLoader(
        _Decode(source, input_size, task),
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        collate_fn=_as_is,
    )
    for index, image, mask, orig, extra in loader:
        images[index] = image
        if masks is not None:
            masks[index] = mask
        orig_sizes[index], extras[index] = orig, extra
    return orig_sizes, extras


def _ram_cache(source: SampleSource, input_size: tuple[int, int], task: str, num_workers: int) -> CachedSource:
    n, (h, w) = len(source), input_size
    images = torch.empty((n, h, w, 3), dtype=torch.uint8).share_memory_()
    masks = torch.empty((n, h, w), dtype=torch.uint8).share_memory_() if task == "segmentation" else None
    orig_sizes, extras = _fill(
        source, input_size, task, num_workers, images.numpy(), None if masks is None else masks.numpy()
    )
    return CachedSource(source, images, masks, orig_sizes, extras)


def _write_disk_cache(
    source: SampleSource, input_size: tuple[int, int], task: str, num_workers: int, path: Path
) -> None:
    """Write the cache folder under a temporary name, then rename it to ``path`` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        n, (h, w) = len(source), input_size
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        masks = None
        if task == "segmentation":
            masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, h, w))
        orig_sizes, extras = _fill(source, input_size, task, num_workers, images, masks)
        for array in (images, masks):
            if array is not None:
                array.flush()
        del images, masks
        np.save(tmp / "orig_sizes.npy", orig_sizes)
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, "extras": extras}))
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.exists():  # another process renamed its complete copy first: keep that one
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_disk_cache(source: SampleSource, path: Path) -> CachedSource:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION or len(meta["extras"]) != len(source):
        raise DataError(f"{path}: not a cache of this data")
    masks = np.load(path / "masks.npy", mmap_mode="r") if (path / "masks.npy").exists() else None
    return CachedSource(
        source, np.load(path / "images.npy", mmap_mode="r"), masks, np.load(path / "orig_sizes.npy"), meta["extras"]
    )


def cache_source(
    source: SampleSource, input_size: tuple[int, int], task: str, mode: str, num_workers: int
) -> CachedSource:
    """``source`` cached in ``mode`` (``ram`` or ``disk``; see the module doc)."""
    if mode == "ram":
        return _ram_cache(source, input_size, task, num_workers)
    path = cache_path(source, input_size, task)
    wait_for_rank_zero(path, "image cache")
    if path.exists():
        try:
            return _read_disk_cache(source, path)
        except Exception:  # a stale or broken cache is rebuilt and replaced
            if is_secondary_process():
                raise
            shutil.rmtree(path, ignore_errors=True)
    _write_disk_cache(source, input_size, task, num_workers, path)
    return _read_disk_cache(source, path)


def _free_ram() -> tuple[int, str]:
    """The memory a ``ram`` cache may use (the smaller of ``MemAvailable`` and ``/dev/shm``'s free space)."""
    free, where = available_memory(), "this machine"
    if Path("/dev/shm").is_dir():
        shm = shutil.disk_usage("/dev/shm").free
        if free == 0 or shm < free:
            free, where = shm, "/dev/shm (shared memory)"
    return free, where


def resolve_mode(mode: str, need: int, free: int, *, fitting: bool) -> str:
    """The cache ``mode`` to use: ``auto`` becomes ``ram`` for a fit whose cache of ``need`` bytes takes at most
    :data:`AUTO_FRACTION` of the ``free`` memory, else ``none``; the other modes stay as they are."""
    if mode != "auto":
        return mode
    return "ram" if fitting and free and need <= AUTO_FRACTION * free else "none"


def cache_splits(
    splits: Mapping[str, SampleSource],
    input_size: tuple[int, int],
    task: str,
    mode: str,
    num_workers: int,
    *,
    fitting: bool = False,
) -> dict[str, SampleSource]:
    """Every split cached in ``mode`` (``none``: the splits as they are; ``auto``: see
    :func:`resolve_mode`, ``fitting`` saying whether a fit will read them); logs what the cache takes first."""
    if mode == "none" or (mode == "auto" and (not fitting or task not in CACHED_TASKS)):
        return dict(splits)
    if task not in CACHED_TASKS:
        raise ConfigError(f"data.cache: {mode} is for {', '.join(CACHED_TASKS)} pipelines; use data.cache: none")
    sizes = {name: len(s) for name, s in splits.items() if len(s)}
    need = bytes_needed(sum(sizes.values()), input_size, task)
    if mode == "disk":
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        free, where = shutil.disk_usage(root).free, str(root)
    else:
        free, where = _free_ram()
    chosen = resolve_mode(mode, need, free, fitting=fitting)
    counts = " + ".join(f"{n} {name}" for name, n in sizes.items())
    if chosen == "none":
        log.info(
            "image cache (auto): not cached, %s samples at %dx%d would need %s of %s available in %s",
            counts, input_size[1], input_size[0], _fmt(need), _fmt(free) if free else "unknown", where,
        )  # fmt: skip
        return dict(splits)
    check_fits(chosen, need, free, where)
    log.info(
        "image cache (%s): %s samples at %dx%d need %s (%s available in %s)",
        mode if mode == chosen else f"{mode} -> {chosen}", counts, input_size[1], input_size[0], _fmt(need),
        _fmt(free) if free else "unknown", where,
    )  # fmt: skip
    return {name: cache_source(s, input_size, task, chosen, num_workers) if len(s) else s for name, s in splits.items()}


__all__ = [
    "CachedSource",
    "bytes_needed",
    "cache_key",
    "cache_path",
    "cache_source",
    "cache_splits",
    "check_fits",
    "resolve_mode",
]
