"""Data path: images/s of vision-pipe's training loader against a raw OpenCV + albumentations loop.

Targets (issue #16 §2): the pipeline's data side >= 0.95x the raw loop with the same worker count at
the default size, >= 0.9x at ``--size 96 --input-size 64``. ``bench/data_profile.py`` breaks the
per-sample cost down (in-process, cProfile).

    .venv/bin/python bench/data.py [--images 2000] [--size 256] [--input-size 224] [--workers W]
                                   [--batch-size 64] [--epochs 3] [--format jpg|png] [--cache none|ram|disk]

Both sides read the same image files (written once into a temporary
``root/<class>/*.jpg`` folder) with the same batch size, DataLoader workers and
augmentation (the default job's: Resize, HorizontalFlip, Affine, PadIfNeeded,
RandomCrop, ColorJitter):

- pipeline: ``Pipeline.from_dict`` with the ``image_folder`` loader, then
  ``pipe.datamodule.train_dataloader()`` — decode, checks, one albumentations
  Compose per sample (seeded once per batch), tensors, collation with per-image ``meta``;
- raw: a Dataset of ``cv2.imread`` → ``cv2.cvtColor`` → ``albumentations.Compose``
  → ``torch.from_numpy``, the default collate, a DataLoader with the same workers.

``--cache ram|disk`` serves the pipeline's images from ``data.cache`` (decoded and
resized once, before the first epoch; the time that takes is printed) while the
raw loop still decodes every epoch: the ratio is then the cache's gain.

Epochs are timed separately (the first includes starting the workers); the
ratio is that of the median images/s of the epochs after the first, with the
two sides run in alternating order. The script also prints the data-path
defaults it checks (workers, pinned memory, persistent workers, OpenCV threads
in workers, where normalization runs).

The pipeline does a little fixed work per sample on top of the raw loop (the
sample checks, a header sniff for the pixel cap, ``meta``; its augmentation seed
is drawn once per batch), so its ratio is lowest for tiny images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vision_pipe import Pipeline
from vision_pipe.data import default_num_workers

CLASSES = ("circle", "square", "triangle")
AUGMENTATION: list[dict[str, Any]] = [  # the default job's (pipelines/shapes_classification.yaml), scaled by --input-size
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "rotate": [-15, 15], "scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "border_mode": 4, "p": 0.5},
    {"name": "PadIfNeeded", "border_mode": 4, "p": 1.0},
    {"name": "RandomCrop", "p": 1.0},
    {"name": "ColorJitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "p": 0.5},
]


def augmentation(input_size: int) -> list[dict[str, Any]]:
    """The augmentation entries with the crop sizes for ``input_size``."""
    pad = input_size + input_size // 8
    sizes = {"PadIfNeeded": {"min_height": pad, "min_width": pad}, "RandomCrop": {"height": input_size, "width": input_size}}
    return [{**entry, **sizes.get(entry["name"], {})} for entry in AUGMENTATION]


def write_images(root: Path, count: int, size: int, fmt: str, seed: int = 0) -> list[tuple[Path, int]]:
    """``count`` images of one filled shape each in ``root/<class>/``; returns (path, label) sorted by path."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        label = i % len(CLASSES)
        image = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        c, r = rng.integers(size // 4, 3 * size // 4, 2), int(rng.integers(size // 8, size // 3))
        if label == 0:
            cv2.circle(image, (int(c[0]), int(c[1])), r, colour, -1)
        elif label == 1:
            cv2.rectangle(image, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), colour, -1)
        else:
            pts = np.array([[c[0], c[1] - r], [c[0] - r, c[1] + r], [c[0] + r, c[1] + r]], np.int32)
            cv2.fillPoly(image, [pts], colour)
        path = root / CLASSES[label] / f"{i:06d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        files.append((path, label))
    return sorted(files)


class RawDataset(Dataset):
    """OpenCV decode + one albumentations Compose, nothing else."""

    def __init__(self, files: list[tuple[Path, int]], transform: A.Compose) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label


def _raw_worker_init(worker_id: int) -> None:
    cv2.setNumThreads(0)


def raw_loader(files: list[tuple[Path, int]], args: argparse.Namespace) -> DataLoader:
    """The raw loop's DataLoader: same batch size, workers and transforms, built by hand."""
    s = args.input_size
    transforms = [A.Resize(s, s)]
    for entry in augmentation(s):
        params = {k: v for k, v in entry.items() if k != "name"}
        transforms.append(getattr(A, entry["name"])(**params))
    return DataLoader(
        RawDataset(files, A.Compose(transforms)),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_raw_worker_init if args.workers else None,
    )


def pipeline_for(root: Path, args: argparse.Namespace) -> Pipeline:
    """The pipeline side: the image_folder loader, every image in the training split."""
    s = args.input_size
    return Pipeline.from_dict(
        {
            "name": "bench_data",
            "task": "classification",
            "data": {
                "loader": {"name": "image_folder", "root": str(root)},
                "input_size": [s, s],
                "split": [1.0, 0.0, 0.0],
                "batch_size": args.batch_size,
                "num_workers": args.workers,
                "cache": args.cache,
                "normalization": {"name": "mean_image"},
                "augmentation": augmentation(s),
            },
            "model": {"backbone": {"name": "vgg", "depth": 8, "width": 4, "stages": 2}, "head": {"name": "classification"}},
            "output_dir": str(root.parent / "runs"),
        }
    )


def images_per_second(loader: DataLoader, epochs: int) -> list[float]:
    """Iterate ``loader`` ``epochs`` times; images/s of each epoch."""
    rates = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
    return rates


class _Probe(Dataset):
    """One item: the number of OpenCV threads where it is read (a worker)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


def check_defaults(pipe: Pipeline, loader: DataLoader) -> None:
    """Print the data-path defaults this machine gets."""
    import os

    probe = DataLoader(_Probe(), batch_size=None, num_workers=1, worker_init_fn=loader.worker_init_fn)
    threads = next(iter(probe)) if loader.num_workers else cv2.getNumThreads()
    dtype = next(iter(loader))["image"].dtype
    on_module = pipe.module.normalizer is not None and pipe.module.normalizer is pipe.stages["normalization"]
    print(f"defaults: num_workers auto = {default_num_workers()} (cpu_count {os.cpu_count()}); this loader: "
          f"workers {loader.num_workers}, pin_memory {loader.pin_memory}, persistent_workers {loader.persistent_workers}, "
          f"OpenCV threads in a worker {threads}; batches leave the workers as {dtype}, "
          f"normalization is part of the LightningModule (runs on its device): {on_module}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="side of the image files")
    parser.add_argument("--input-size", type=int, default=224, help="side the images are resized to")
    parser.add_argument("--workers", type=int, default=default_num_workers())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--cache", choices=["none", "ram", "disk"], default="none", help="the pipeline's data.cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        files = write_images(root, args.images, args.size, args.format)
        pipe = pipeline_for(root, args)
        if args.cache != "none":
            start = time.perf_counter()
            pipe.cache_images()
            print(f"data.cache {args.cache}: pre-flight + decoding once took {time.perf_counter() - start:.1f} s")
        piped_loader, raw = pipe.datamodule.train_dataloader(), raw_loader(files, args)
        check_defaults(pipe, piped_loader)
        rates: dict[str, list[float]] = {"pipeline": [], "raw": []}
        for order in (("pipeline", "raw"), ("raw", "pipeline")):
            for side in order:
                epoch_rates = images_per_second(piped_loader if side == "pipeline" else raw, args.epochs)
                rates[side] += epoch_rates[1:] if len(epoch_rates) > 1 else epoch_rates
                print(f"{side:>8}: " + ", ".join(f"{r:.0f}" for r in epoch_rates) + " images/s per epoch")
    a, b = statistics.median(rates["pipeline"]), statistics.median(rates["raw"])
    print(f"\n{args.images} {args.format} images {args.size}px -> {args.input_size}px, batch {args.batch_size}, "
          f"{args.workers} workers, pipeline data.cache {args.cache}")
    target = 0.9 if args.size <= 96 else 0.95
    print(f"median images/s (epochs after the first): pipeline {a:.0f}, raw {b:.0f}, ratio {a / b:.3f}   "
          f"(target >= {target}, issue #16)")


if __name__ == "__main__":
    main()
