"""The data side of a pipeline: splits, per-sample transforms, collation, loaders.

Samples are decoded by the loading stage, resized to the pipeline's input size
and augmented (training split only) with one ``albumentations.Compose`` in
DataLoader workers — masks and boxes follow every geometric transform — then
collated into uint8 batches. Normalization happens later, per batch, on the
accelerator (see :mod:`vision_pipe.module`). What depends on the task — the
Compose's targets, the targets' tensors and their collation — is asked of the
task object (:mod:`vision_pipe.tasks`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vision_pipe.config import BoxRules
from vision_pipe.errors import DataError
from vision_pipe.io import SPLITS
from vision_pipe.samples import check_image
from vision_pipe.stages import Batch, LoadedData, Sample, SampleSource
from vision_pipe.tasks import Task, as_task, task_of_item

# ----------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------


class SubsetSource(SampleSource):
    """The samples of ``source`` at ``indices`` (a split of it)."""

    def __init__(self, source: SampleSource, indices: Sequence[int] | np.ndarray) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.source[int(self.indices[index])]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.source.fingerprint().encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()


def make_splits(loaded: LoadedData, fractions: Sequence[float], seed: int) -> dict[str, SampleSource]:
    """``train``/``val``/``test`` sources: the loader's own, or a seeded split of ``all``.

    The split is a permutation by ``seed``; sizes are rounded so that they add
    up to the number of samples (train gets the remainder).
    """
    splits = dict(loaded.splits)
    unknown = set(splits) - {"all", *SPLITS}
    if unknown or ("all" in splits and len(splits) > 1) or not splits:
        raise DataError(
            "a loader must return either an 'all' source or 'train' (+ optionally 'val', 'test') sources, "
            f"got {sorted(splits)}"
        )
    if "all" in splits:
        source, wanted = splits.pop("all"), list(SPLITS)
    else:
        wanted = ["train", *[s for s in SPLITS[1:] if s not in splits]]
        if wanted == ["train"]:
            return splits
        source = splits.pop("train")  # the missing splits are carved out of the loader's train split
    n = len(source)
    if n == 0:
        raise DataError("the loader found no samples")
    share = dict(zip(SPLITS, fractions, strict=True))
    total = sum(share[s] for s in wanted)
    sizes = {s: int(round(share[s] / total * n)) for s in wanted[1:]}
    for s in wanted[1:]:
        if share[s] > 0 and sizes[s] == 0 and n >= len(wanted):
            sizes[s] = 1  # a split asked for is never silently empty
    n_train = n - sum(sizes.values())
    if n_train < 1:
        raise DataError(f"only {n} samples: too few for the split {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    out = dict(splits)
    out["train"] = SubsetSource(source, np.sort(order[:n_train]))
    start = n_train
    for s in wanted[1:]:
        out[s] = SubsetSource(source, np.sort(order[start : start + sizes[s]]))
        start += sizes[s]
    return {s: out[s] for s in SPLITS}


# ----------------------------------------------------------------------------
# Per-sample transforms
# ----------------------------------------------------------------------------


#: Transforms that resize with cv2.resize. Its INTER_NEAREST picks source pixel floor(x * scale),
#: shifting a resized mask by up to half a pixel against its (pixel-centre sampled) image;
#: INTER_NEAREST_EXACT samples pixel centres too. (Warping transforms — Affine, ElasticTransform
#: ... — sample centres already, and cv2.remap has no INTER_NEAREST_EXACT.)
_RESIZING = (
    A.Resize,
    A.RandomResizedCrop,
    A.RandomSizedCrop,
    A.RandomSizedBBoxSafeCrop,
    A.LongestMaxSize,
    A.SmallestMaxSize,
    A.RandomScale,
    A.CropAndPad,
)


def input_resize(input_size: tuple[int, int]) -> A.Resize:
    """The first step of every transform: resize to ``input_size`` (H, W), masks sampled at pixel centres."""
    return A.Resize(height=input_size[0], width=input_size[1], mask_interpolation=cv2.INTER_NEAREST_EXACT)


def build_transform(
    task: str | Task | None,
    input_size: tuple[int, int],
    augmentations: Sequence[A.BasicTransform],
    *,
    boxes: BoxRules | None = None,
) -> A.Compose:
    """Resize to ``input_size`` (H, W), then ``augmentations``, as one Compose with ``task``'s targets
    (:meth:`vision_pipe.tasks.Task.compose`; ``None``: images only, as for prediction).

    Detection boxes follow every geometric transform, are clipped to the image
    and dropped by ``boxes`` (no box is dropped when ``boxes`` is None, as for
    evaluation); masks follow with nearest-neighbour interpolation sampled at
    pixel centres (resizing transforms get ``INTER_NEAREST_EXACT`` instead of
    plain ``INTER_NEAREST``), so they stay aligned.
    """
    resize = input_resize(input_size)
    for t in augmentations:
        if isinstance(t, _RESIZING) and getattr(t, "mask_interpolation", None) == cv2.INTER_NEAREST:
            t.mask_interpolation = cv2.INTER_NEAREST_EXACT
    return as_task(task).compose([resize, *augmentations], boxes)


def seed_transform(transform: A.BaseCompose | A.BasicTransform, seed: int) -> None:
    """Seed ``transform`` and every transform inside it with one shared random stream.

    albumentations' ``set_random_seed`` gives each transform its own generator seeded
    with the same number, so their draws coincide (HorizontalFlip and VerticalFlip with
    equal ``p`` would always flip together) and it builds two generators per transform
    for every sample. Here the whole tree shares one numpy generator and one
    ``random.Random``, made once per transform tree; each seeding (a batch's, or a sample's) only sets the numpy
    generator's PCG64 state to a splitmix64 hash of ``seed`` and re-seeds the
    ``random.Random`` with ``seed`` (~5 µs together, where ``np.random.default_rng(seed)``
    + ``random.Random(seed)`` cost ~0.1 ms; the ``random.Random`` stays C code, whose
    draws cost ~0.1 µs against ~1 µs through numpy). The same ``seed`` gives the same draws.
    """
    rngs = getattr(transform, "_vision_pipe_rngs", None)
    if rngs is None:
        rngs = np.random.Generator(np.random.PCG64()), random.Random()
        stack: list[Any] = [transform]
        while stack:
            t = stack.pop()
            t.random_generator, t.py_random = rngs
            stack.extend(getattr(t, "transforms", None) or [])
        transform._vision_pipe_rngs = rngs
    rngs[0].bit_generator.state = _pcg64_state(seed)
    rngs[1].seed(seed)
    transform.seed = seed


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One output of the splitmix64 generator at state ``x`` (a 64-bit mixing function)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _pcg64_state(seed: int) -> dict[str, Any]:
    """A PCG64 ``bit_generator.state`` for ``seed``: 128 well-mixed state bits, numpy's default increment."""
    high = _splitmix64(seed & _MASK64)
    low = _splitmix64(high ^ 0xD1B54A32D192ED03)
    return {
        "bit_generator": "PCG64",
        "state": {"state": (high << 64) | low, "inc": _PCG64_INC},
        "has_uint32": 0,
        "uinteger": 0,
    }


_PCG64_INC = np.random.PCG64(0).state["state"]["inc"]


class PipelineDataset(Dataset):
    """Samples of one split, transformed into tensors for ``task``."""

    def __init__(self, source: SampleSource, task: str, transform: A.Compose, input_size: tuple[int, int]) -> None:
        self.source = source
        self.task = task
        self.transform = transform
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return transform_sample(self.source[index], self.task, self.transform, self.input_size)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The samples of one batch (the DataLoader fetches batches this way): the augmentation is seeded
        once for the batch, from torch's RNG as :func:`transform_sample` does per sample, and its random
        streams run on through the batch's samples in order — as reproducible, and ~10 µs a sample less."""
        seed_transform(self.transform, draw_seed())
        source, task, transform, size = self.source, self.task, self.transform, self.input_size
        return [transform_sample(source[i], task, transform, size, seed=False) for i in indices]


def draw_seed() -> int:
    """An augmentation seed drawn from torch's RNG, which Lightning seeds per process and per worker:
    what makes the augmentation reproducible under the pipeline's seed."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def transform_sample(
    sample: Mapping[str, Any],
    task: str | Task | None,
    transform: A.Compose,
    input_size: tuple[int, int],
    *,
    seed: bool = True,
) -> dict[str, Any]:
    """Apply ``transform`` to one sample; return tensors (image (3, H, W) uint8, the task's targets) and ``meta``.

    ``seed``: seed ``transform`` for this sample from torch's RNG first (:func:`draw_seed`); ``False``
    when the caller seeded it for a batch (:meth:`PipelineDataset.__getitems__`).
    """
    spec = as_task(task)
    sample_id = str(sample.get("id", "?"))
    image = check_image(sample.get("image"), sample_id)
    inputs: dict[str, Any] = {"image": image, **spec.transform_inputs(sample)}
    if seed:
        seed_transform(transform, draw_seed())
    out = transform(**inputs)
    image = out["image"]
    if image.shape[:2] != tuple(input_size):
        raise DataError(
            f"{sample_id}: the augmentation changed the image size to {image.shape[:2]}, but the pipeline's "
            f"input_size is {tuple(input_size)}; end the augmentation with a size-keeping transform "
            f"(e.g. RandomResizedCrop with size={list(input_size)}, or PadIfNeeded + RandomCrop)"
        )
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "meta": {"id": sample_id, "orig_size": tuple(sample.get("orig_size", sample["image"].shape[:2]))},
        **spec.transformed_targets(sample, out),
    }


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack`` of equally shaped tensors; in a DataLoader worker, into shared memory directly
    (as torch's ``default_collate`` does), where a plain stack is copied there again to leave the worker
    (~30 µs a 224 px image)."""
    return torch.utils.data.default_collate(list(tensors))


def collate(items: list[dict[str, Any]], task: str | Task | None = None) -> Batch:
    """Stack the images, list the ``meta``; the targets as ``task`` collates them (by default, the
    task whose targets the items have): stacked labels or masks, per-image lists of boxes."""
    spec = as_task(task) if task is not None else task_of_item(items[0])
    batch: dict[str, Any] = {"image": stack([it["image"] for it in items]), "meta": [it["meta"] for it in items]}
    batch.update(spec.collate_targets(items))
    return batch  # type: ignore[return-value]


def _worker_init(worker_id: int) -> None:
    from lightning_fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    cv2.setNumThreads(0)  # one OpenCV thread per worker: the workers are the parallelism


def _to_device(value: Any, device: torch.device) -> Any:
    """A tensor on ``device`` (asynchronous from pinned memory); anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    return value


def cpu_count() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes(trainer: Mapping[str, Any] | None = None) -> int:
    """How many training processes share this machine: ``$LOCAL_WORLD_SIZE`` (torchrun),
    ``$SLURM_NTASKS_PER_NODE`` (SLURM), else what the ``trainer`` config asks for — ``devices`` as a
    count or a list, ``auto``/``-1`` being every GPU of the machine (one process on a CPU)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "").split("(")[0]  # SLURM may say "4(x2)"
        if value.strip().isdigit() and int(value) > 0:
            return int(value)
    trainer = trainer or {}
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    import torch

    on_gpu = str(trainer.get("accelerator", "auto")).lower() in ("auto", "gpu", "cuda")
    return max(1, torch.cuda.device_count()) if on_gpu and torch.cuda.is_available() else 1


def default_num_workers(processes: int = 1) -> int:
    """DataLoader workers per training process for ``num_workers: auto``: this process's share of the
    cores it may run on (:func:`cpu_count` over ``processes`` local processes), less one core for the
    process itself — no fixed cap, so a 64-core GPU node feeds its GPUs with all its cores."""
    return max(0, cpu_count() // max(1, processes) - 1)


def trains_on_cpu(trainer: Mapping[str, Any] | None = None) -> bool:
    """Whether the ``trainer`` config trains on the CPU (``accelerator: cpu``, or ``auto`` without a GPU)."""
    import torch

    accelerator = str((trainer or {}).get("accelerator", "auto")).lower()
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def cached_num_workers(workers: int, trainer: Mapping[str, Any] | None = None) -> int:
    """DataLoader workers for ``num_workers: auto`` once the images are cached (``data.cache``): none when
    training on the CPU — augmenting cached uint8 arrays costs less than the cores the workers would take
    from the model's threads (2-core CPU, bench/peer_detection.py: the fit about twice as fast with 0 workers
    as with 1, BENCHMARKS.md) — else ``workers`` (a GPU is fed by workers on cores it does not use)."""
    return 0 if trains_on_cpu(trainer) else workers


# ----------------------------------------------------------------------------
# LightningDataModule
# ----------------------------------------------------------------------------


def drops_last_batch(num_samples: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether training drops its last partial batch: when a process's last batch would hold a single
    image, which breaks batch norm (no batch statistics). Under DDP each of the ``world_size`` processes
    trains on ceil(num_samples / world_size) samples (Lightning's DistributedSampler pads to equal shares),
    so this is decided on that share, not on the whole split."""
    share = math.ceil(num_samples / max(1, world_size))
    return share > 1 and share % batch_size == 1


class PipelineDataModule(pl.LightningDataModule):
    """Train/val/test loaders of a pipeline (built by :class:`vision_pipe.Pipeline`)."""

    def __init__(
        self,
        splits: dict[str, SampleSource],
        task: str,
        input_size: tuple[int, int],
        augmentations: Sequence[A.BasicTransform],
        batch_size: int,
        num_workers: int,
        boxes: BoxRules | None = None,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.task = task
        self.input_size = input_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_transform = build_transform(task, input_size, augmentations, boxes=boxes or BoxRules())
        self.eval_transform = build_transform(task, input_size, [])

    def dataset(self, split: str) -> PipelineDataset:
        transform = self.train_transform if split == "train" else self.eval_transform
        return PipelineDataset(self.splits[split], self.task, transform, self.input_size)

    def preflight(self) -> None:
        """Transform the first training sample here, so mistakes surface before any worker starts."""
        ds = self.dataset("train")
        if len(ds) == 0:
            raise DataError("the training split is empty")
        ds[0]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        from vision_pipe.distributed import evaluation_sampler

        ds = self.dataset(split)
        on_gpu = torch.cuda.is_available()
        # multi-process evaluation: each sample in exactly one process (Lightning's sampler would repeat some)
        sampler = None if shuffle else evaluation_sampler(ds, self.trainer)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate, task=as_task(self.task)),
            pin_memory=on_gpu,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init if self.num_workers else None,
            drop_last=shuffle and drops_last_batch(len(ds), self.batch_size, getattr(self.trainer, "world_size", 1)),
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch's tensors (asynchronously from pinned memory); lists (``meta``, the per-image
        boxes, whose packed form moves) stay on the host, and a uint8 ``mask`` becomes int64 on the device.

        Lightning's default walks every element of ``meta`` (one dict per image) on every step, and
        per-image box tensors would be three small copies per image.
        """
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        out = {key: _to_device(value, device) for key, value in batch.items()}
        mask = out.get("mask")
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8:
            out["mask"] = mask.long()
        return out

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
