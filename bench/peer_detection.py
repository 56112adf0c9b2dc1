"""Time-to-accuracy against a peer: vision-pipe's SSD pipeline vs torchvision's own SSD in a plain loop.

Target (issue #18): vision-pipe's wall-clock time <= 1.0x the peer's, test mAP@0.5 within 0.01.

    .venv/bin/python bench/peer_detection.py [--epochs 40] [--train 900] [--eval 150] [--seed 0]
                                             [--only peer|pipeline] [key=value ...]

Writes a COCO-format JPEG set (``train/``, ``val/``, ``test/`` + ``instances_<split>.json``; 128 px canvases of
the synthetic shapes, 1-3 shapes each, category ids 1..3) to a temporary folder, then trains with the same
seed, epochs, input size (64 px), backbone (our VGG-11 style, widths 16-32-64-128, maps at strides 4, 8, 16),
default boxes (2 per cell, scales 0.2..0.6), optimizer (Adam 2e-3, cosine per epoch), batch 32 and
augmentation (horizontal flip):

- peer: ``torchvision.models.detection.SSD`` (its ``DefaultBoxGenerator``, ``SSDHead``, matching, hard
  negative mining, loss and post-processing) on images decoded once into memory, resized to 64 px and flipped
  in the loop — the 60-line script a user would write; no validation;
- pipeline: ``Pipeline.from_dict`` with the ``coco`` loader on the same files (its own val/test JSONs),
  ``data.cache`` at its default, validation every ``--val-every`` epochs, checkpoints; the test of the best
  checkpoint.

Both are scored by the same evaluator on the test split (torchmetrics' ``MeanAveragePrecision`` with the
pycocotools backend when pycocotools is installed): mAP@0.5 and mAP@[.5:.95]. Printed: both, the wall-clock
times (data set-up + fit + test) and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn

from vision_pipe import Pipeline
from vision_pipe_plugins.backbone.vgg import vgg
from vision_pipe_plugins.loading.synthetic_shapes import ShapesConfig, render

CLASSES = ("circle", "square", "triangle")
CANVAS, INPUT = 128, 64
MAPS = ("stage2", "stage3", "stage4")  # strides 4, 8, 16: 16, 8, 4 cells at 64 px
MIN_SCALE, MAX_SCALE = 0.2, 0.6


def write_coco(root: Path, counts: dict[str, int], seed: int) -> None:
    """``counts[split]`` JPEG images per split under ``root/<split>/`` + ``root/instances_<split>.json``."""
    cfg = ShapesConfig(
        num_images=sum(counts.values()), size=CANVAS, shapes=CLASSES, min_size=0.25, max_size=0.6,
        min_objects=1, max_objects=3, noise=8.0, seed=seed, empty_fraction=0.0,
    )  # fmt: skip
    index = 0
    for split, n in counts.items():
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            scene = render(cfg, index)
            index += 1
            name = f"{split}_{i:05d}.jpg"
            cv2.imwrite(str(root / split / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
            image_id = 1000 + index  # the dataset's own ids: neither 0-based nor positions
            images.append({"id": image_id, "file_name": name, "width": CANVAS, "height": CANVAS})
            for cls, (x1, y1, x2, y2) in zip(scene.classes, scene.boxes, strict=True):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                })  # fmt: skip
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / f"instances_{split}.json").write_text(json.dumps(data))


def read_split(root: Path, split: str) -> tuple[list[str], torch.Tensor, list[dict[str, torch.Tensor]]]:
    """The split's files, its images decoded and resized to the input size ``(N, 3, 64, 64)`` uint8, and the
    ground truth in canvas pixels (``boxes`` (K, 4) xyxy, ``labels`` (K,) 1..C)."""
    data = json.loads((root / f"instances_{split}.json").read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    files, images, targets = [], [], []
    for entry in data["images"]:
        path = root / split / entry["file_name"]
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        images.append(torch.from_numpy(cv2.resize(image, (INPUT, INPUT), interpolation=cv2.INTER_LINEAR)))
        anns = by_image.get(entry["id"], [])
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        files.append(str(path))
        targets.append({"boxes": boxes.reshape(-1, 4), "labels": labels})
    return files, torch.stack(images).permute(0, 3, 1, 2).contiguous(), targets


class Maps(nn.Module):
    """Our VGG backbone as torchvision's SSD wants it: an ordered dict of the maps the head reads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = vgg(depth=11, width=16, stages=4)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.body(x).maps
        return OrderedDict((name, maps[name]) for name in MAPS)


def peer(root: Path, epochs: int, seed: int) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Train torchvision's SSD in a plain loop; its test detections and the test ground truth (canvas pixels)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    torch.manual_seed(seed)
    _, train_x, train_t = read_split(root, "train")
    _, test_x, test_t = read_split(root, "test")
    scale = INPUT / CANVAS
    train_t = [{"boxes": t["boxes"] * scale, "labels": t["labels"]} for t in train_t]
    pixels = train_x.float()
    mean, std = pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()
    anchors = DefaultBoxGenerator([[] for _ in MAPS], min_ratio=MIN_SCALE, max_ratio=MAX_SCALE)
    backbone = Maps()
    channels = [16 * 2 ** int(name[-1]) // 2 for name in MAPS]  # stage k has 16 * 2^(k-1) channels
    head = SSDHead(channels, anchors.num_anchors_per_location(), len(CLASSES) + 1)
    model = SSD(
        backbone, anchors, (INPUT, INPUT), len(CLASSES) + 1, image_mean=mean, image_std=std, head=head,
        score_thresh=0.01, nms_thresh=0.45, detections_per_img=100, topk_candidates=400,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    n = len(train_x)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        for start in range(0, n, 32):  # the last partial batch too, as the pipeline does
            idx = order[start : start + 32]
            flip = torch.rand(len(idx)) < 0.5
            x = train_x[idx].float()
            x[flip] = x[flip].flip(-1)
            targets = []
            for j, k in enumerate(idx.tolist()):
                boxes = train_t[k]["boxes"].clone()
                if flip[j]:
                    boxes[:, [0, 2]] = INPUT - boxes[:, [2, 0]]
                targets.append({"boxes": boxes, "labels": train_t[k]["labels"]})
            losses = model(list(x), targets)
            loss = losses["bbox_regression"] + losses["classification"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    model.eval()
    detections = []
    with torch.inference_mode():
        for start in range(0, len(test_x), 64):
            for out in model(list(test_x[start : start + 64].float())):
                detections.append({"boxes": out["boxes"] / scale, "scores": out["scores"], "labels": out["labels"]})
    return detections, test_t


def pipeline_config(root: Path, epochs: int, seed: int, val_every: int) -> dict[str, Any]:
    """The same job as a vision-pipe pipeline (COCO loader on the written files)."""
    return {
        "name": "peer_detection",
        "task": "detection",
        "seed": seed,
        "output_dir": str(root / "runs"),
        "data": {
            "loader": {
                "name": "coco",
                **{f"{p}annotations": str(root / f"instances_{s}.json") for p, s in (("", "train"), ("val_", "val"), ("test_", "test"))},
                **{f"{p}images": str(root / s) for p, s in (("", "train"), ("val_", "val"), ("test_", "test"))},
            },
            "input_size": [INPUT, INPUT],
            "batch_size": 32,
            "normalization": {"name": "channel_stats"},
            "augmentation": [{"name": "HorizontalFlip", "p": 0.5}],
        },
        "model": {
            "backbone": {"name": "vgg", "depth": 11, "width": 16, "stages": 4},
            "head": {"name": "ssd", "feature_maps": list(MAPS), "min_scale": MIN_SCALE, "max_scale": MAX_SCALE, "aspect_ratios": []},
        },
        "optimizer": {"name": "adam", "lr": 2e-3},
        "scheduler": {"name": "cosine"},
        "checkpoint": {"monitor": "val/map_50", "mode": "max"},
        "trainer": {"max_epochs": epochs, "check_val_every_n_epoch": val_every, "accelerator": "cpu"},
    }  # fmt: skip


def pipeline(
    root: Path, epochs: int, seed: int, val_every: int, overrides: list[str]
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], Pipeline]:
    """Fit the pipeline, then its best checkpoint's detections on the test files (canvas pixels)."""
    pipe = Pipeline.from_dict(pipeline_config(root, epochs, seed, val_every), overrides)
    pipe.fit()
    files, _, truth = read_split(root, "test")
    detections = []
    for pred in pipe.predict(files, ckpt=pipe.best_checkpoint, batch_size=64):
        detections.append({
            "boxes": torch.from_numpy(pred.boxes), "scores": torch.from_numpy(pred.scores),
            "labels": torch.from_numpy(pred.labels) + 1,
        })  # fmt: skip
    return detections, truth, pipe


def score(detections: list[dict[str, torch.Tensor]], truth: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """mAP@0.5 and mAP@[.5:.95] of ``detections`` against ``truth`` (one evaluator for both sides)."""
    from torchmetrics.detection import MeanAveragePrecision

    try:
        import pycocotools  # noqa: F401

        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    except ImportError:
        metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update(detections, truth)
    result = metric.compute()
    return float(result["map_50"]), float(result["map"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train", type=int, default=900)
    parser.add_argument("--eval", type=int, default=150, help="images in each of val and test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=10, help="the pipeline's trainer.check_val_every_n_epoch")
    parser.add_argument("--only", choices=("peer", "pipeline"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline's config")
    args = parser.parse_args(argv)
    results: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_coco(root, {"train": args.train, "val": args.eval, "test": args.eval}, args.seed)
        for side in ("peer", "pipeline"):
            if args.only not in (None, side):
                continue
            start = time.perf_counter()
            if side == "peer":
                torch.set_num_threads(os.cpu_count() or 1)  # no data workers: the model has every core
                detections, truth = peer(root, args.epochs, args.seed)
            else:
                detections, truth, pipe = pipeline(root, args.epochs, args.seed, args.val_every, args.overrides)
            seconds = time.perf_counter() - start
            results[side] = (*score(detections, truth), seconds)
            print(f"{side}: test mAP@0.5 {results[side][0]:.4f}  mAP {results[side][1]:.4f}  {seconds:.1f} s", flush=True)
    print()
    print(f"images: {args.train} train, {args.eval} val, {args.eval} test; {CANVAS} px JPEG, {INPUT} px input; epochs {args.epochs}")
    for side, (map50, map_, seconds) in results.items():
        print(f"{side + ':':<10} mAP@0.5 {map50:.4f}   mAP {map_:.4f}   {seconds:7.1f} s")
    if len(results) == 2:
        ratio = results["pipeline"][2] / results["peer"][2]
        gap = results["pipeline"][0] - results["peer"][0]
        print(f"time ratio pipeline/peer: {ratio:.2f}   (target <= 1.0)")
        print(f"mAP@0.5 difference:       {gap:+.4f}   (target within 0.01)")


if __name__ == "__main__":
    main(sys.argv[1:])
