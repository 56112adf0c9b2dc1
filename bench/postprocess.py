"""Detection post-processing: SSD decoding + NMS per image against torchvision's ``batched_nms`` alone.

    .venv/bin/python bench/postprocess.py [--boxes 1000 10000 100000] [--classes 20] [--repeat 20] [--device cpu|cuda]

For each number of default boxes ``D`` (per image), random head outputs for
``C`` classes (background wins on most boxes: ~7% of the (box, class) pairs score
above the threshold; ~5% of the boxes are confident objects) are post-processed
by the ssd head's public function (``vision_pipe_plugins.head.ssd_boxes.postprocess``:
softmax, box decoding, clipping, per-class score threshold 0.01 and top-400,
class-wise NMS at IoU 0.45, the best 200) and, as the yardstick, the same boxes
(decoded beforehand, each with its best class and score) go through
``torchvision.ops.batched_nms`` alone. It prints the median milliseconds per
image of both and their ratio, and also NMS alone on exactly the candidates
``postprocess`` hands to it (after the threshold and top-k).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, clip_boxes_to_image

from vision_pipe_plugins.head.ssd_boxes import decode, postprocess

IMAGE_SIZE = 300
SCORE_THRESH, NMS_THRESH, TOPK, DETECTIONS = 0.01, 0.45, 400, 200


def head_outputs(num_boxes: int, num_classes: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(cls_logits [1, D, C+1], offsets [1, D, 4], defaults [D, 4] normalized xyxy), mostly background."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_boxes, 2, generator=g)
    sizes = 0.05 + 0.5 * torch.rand(num_boxes, 2, generator=g)
    defaults = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=1).clamp(0, 1)
    logits = torch.randn(1, num_boxes, num_classes + 1, generator=g)
    logits[..., 0] += 6.0  # background wins: ~7% of the (box, class) pairs score above 0.01
    objects = torch.rand(num_boxes, generator=g) < 0.05
    labels = torch.randint(1, num_classes + 1, (num_boxes,), generator=g)
    logits[0, objects, labels[objects]] += 8.0
    offsets = 0.5 * torch.randn(1, num_boxes, 4, generator=g)
    return logits.to(device), offsets.to(device), defaults.to(device)


def nms_inputs(logits: torch.Tensor, offsets: torch.Tensor, defaults: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The D decoded pixel boxes, each with its best object class and that class's probability."""
    probs = F.softmax(logits[0], dim=-1)[:, 1:]
    scores, labels = probs.max(dim=1)
    scale = torch.tensor([IMAGE_SIZE] * 4, dtype=offsets.dtype, device=offsets.device)
    boxes = clip_boxes_to_image(decode(offsets[0], defaults) * scale, (IMAGE_SIZE, IMAGE_SIZE))
    return boxes, scores, labels + 1


def candidates(logits: torch.Tensor, offsets: torch.Tensor, defaults: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What ``postprocess`` hands to NMS: per class the boxes above the threshold, at most the top-k."""
    boxes, _, _ = nms_inputs(logits, offsets, defaults)
    probs = F.softmax(logits[0], dim=-1)
    out_b, out_s, out_l = [], [], []
    for label in range(1, probs.shape[1]):
        idx = torch.nonzero(probs[:, label] > SCORE_THRESH).squeeze(1)
        idx = idx[probs[idx, label].argsort(descending=True)[:TOPK]]
        out_b.append(boxes[idx])
        out_s.append(probs[idx, label])
        out_l.append(torch.full_like(idx, label))
    return torch.cat(out_b), torch.cat(out_s), torch.cat(out_l)


def median_ms(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Median wall-clock milliseconds of ``fn`` (after 2 warm-up calls; CUDA synchronized)."""
    times = []
    for i in range(repeat + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(num_boxes: int, num_classes: int, repeat: int, device: torch.device) -> tuple[float, float, int, float]:
    """(postprocess ms, batched_nms ms on the D boxes, number of NMS candidates, batched_nms ms on them)."""
    logits, offsets, defaults = head_outputs(num_boxes, num_classes, device)
    full = median_ms(
        partial(postprocess, logits, offsets, defaults, IMAGE_SIZE, SCORE_THRESH, NMS_THRESH, TOPK, DETECTIONS),
        repeat,
        device,
    )
    nms = median_ms(partial(batched_nms, *nms_inputs(logits, offsets, defaults), NMS_THRESH), repeat, device)
    cand = candidates(logits, offsets, defaults)
    nms_cand = median_ms(partial(batched_nms, *cand, NMS_THRESH), repeat, device)
    return full, nms, len(cand[0]), nms_cand


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.classes} classes, score > {SCORE_THRESH}, top-{TOPK} per class, "
          f"NMS IoU {NMS_THRESH}, {DETECTIONS} kept; median ms per image")
    print(f"{'boxes':>8} {'postprocess':>12} {'batched_nms(D)':>15} {'ratio':>7} {'NMS candidates':>15} {'nms(cand.)':>11}")
    with torch.inference_mode():
        for d in args.boxes:
            full, nms, n_cand, nms_cand = measure(d, args.classes, args.repeat, device)
            print(f"{d:>8} {full:>12.2f} {nms:>15.2f} {full / nms:>7.2f} {n_cand:>15} {nms_cand:>11.2f}")


if __name__ == "__main__":
    main()
