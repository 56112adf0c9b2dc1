"""SSD loss and post-processing per batch: milliseconds, and host synchronizations on a GPU.

    .venv/bin/python bench/ssd_step.py [--batch 32] [--classes 20] [--objects 1 8] [--repeat 10] [--device cpu|cuda]

An SSD300 box layout (8732 default boxes, the paper's scales and ratios) and a
batch of random head outputs and ground truths (1-8 objects per image, a few
images empty): the ``ssd`` head's loss (``SSDHead.loss``: targets from the
collated batch, matching, hard negative mining, smooth-L1 + cross-entropy, its
backward) and its detection (``SSDHead.detect``: softmax, decoding, per-class
threshold and top-k, one class-wise NMS, the cap) are timed separately. Prints
the median milliseconds per batch of each. On CUDA it also counts the host
synchronizations of one loss step and one detection with
``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronizing call).
:func:`measure` returns the same figures as a dict (``bench/gpu_check.py`` uses it).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from postprocess import median_ms  # the same timing as the post-processing bench (2 warm-up calls)

from vision_pipe.data import collate
from vision_pipe_plugins.head.ssd import SSDOutputs, ssd
from vision_pipe_plugins.head.ssd_boxes import default_boxes

SIZE = 300
MAPS = [38, 19, 10, 5, 3, 1]
RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def make_batch(batch: int, objects: tuple[int, int], num_classes: int, seed: int = 0) -> dict:
    """A collated detection batch of ``batch`` images (SIZE × SIZE) with random boxes in pixels."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch):
        n = 0 if i % 10 == 9 else int(torch.randint(objects[0], objects[1] + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (SIZE - 40)
        wh = 10 + torch.rand(n, 2, generator=g) * 150
        boxes = torch.cat((xy, (xy + wh).clamp(max=SIZE)), dim=1)
        items.append(
            {
                "image": torch.zeros(3, 8, 8, dtype=torch.uint8),
                "meta": {"id": str(i), "orig_size": (SIZE, SIZE)},
                "boxes": boxes,
                "labels": torch.randint(0, num_classes, (n,), generator=g),
                "difficult": torch.zeros(n, dtype=torch.bool),
            }
        )
    out = collate(items, "detection")
    out["image"] = torch.zeros(batch, 3, SIZE, SIZE)
    return out


def outputs(batch: int, num_classes: int, defaults: torch.Tensor, seed: int = 1) -> SSDOutputs:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, defaults.shape[0], num_classes + 1, generator=g)
    logits[..., 0] += 6.5  # background wins on most boxes: ~7 % of the (box, class) pairs pass 0.01
    offsets = 0.5 * torch.randn(batch, defaults.shape[0], 4, generator=g)
    return SSDOutputs(cls_logits=logits, box_offsets=offsets, defaults=defaults)


@contextmanager
def counting_syncs() -> Iterator[list[int]]:
    """Within the block, CUDA's sync debug mode warns at each host synchronization; yields a list that
    holds their count once the block ends (``[n]``)."""
    count: list[int] = []
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode("default")
    count.append(sum("synchroniz" in str(w.message) for w in caught))


def count_syncs(fn: Callable[[], object]) -> int:
    """Host synchronizations of one call of ``fn`` on CUDA (warnings of the sync debug mode)."""
    with counting_syncs() as count:
        fn()
    return count[0]


def measure(
    batch: int = 32,
    num_classes: int = 20,
    objects: tuple[int, int] = (1, 8),
    repeat: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, float | int | str]:
    """Median milliseconds per batch of the loss step (+ backward) and of the detection; on CUDA also the
    host synchronizations of one of each (``syncs_loss_step``, ``syncs_detection``)."""
    device = torch.device(device)
    torch.manual_seed(0)
    defaults = default_boxes([(s, s) for s in MAPS], SIZE, 0.2, 0.9, RATIOS).to(device)
    head = _head(num_classes).to(device)
    data = make_batch(batch, objects, num_classes)
    data = {k: _to(v, device) for k, v in data.items()}
    raw = outputs(batch, num_classes, defaults)
    logits = raw.cls_logits.to(device).requires_grad_(True)
    offsets = raw.box_offsets.to(device).requires_grad_(True)

    def loss_step() -> None:
        out = head.loss(SSDOutputs(cls_logits=logits, box_offsets=offsets, defaults=defaults), data)
        out["loss"].backward()

    def detect() -> None:
        head.detect(SSDOutputs(cls_logits=logits.detach(), box_offsets=offsets.detach(), defaults=defaults))

    result: dict[str, float | int | str] = {
        "device": str(device),
        "batch": batch,
        "default_boxes": int(defaults.shape[0]),
        "classes": num_classes,
        "loss_step_ms": median_ms(loss_step, repeat, device),
        "detection_ms": median_ms(detect, repeat, device),
    }
    if device.type == "cuda":
        result["syncs_loss_step"] = count_syncs(loss_step)
        result["syncs_detection"] = count_syncs(detect)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--objects", type=int, nargs=2, default=(1, 8))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    r = measure(args.batch, args.classes, tuple(args.objects), args.repeat, args.device)
    print(f"device: {r['device']}; batch {r['batch']}, {r['default_boxes']} default boxes, {r['classes']} classes")
    print(f"loss + backward: {r['loss_step_ms']:8.1f} ms per batch")
    print(f"detection:       {r['detection_ms']:8.1f} ms per batch")
    if "syncs_loss_step" in r:
        print(f"host synchronizations: loss step {r['syncs_loss_step']}, detection {r['syncs_detection']}")


def _to(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return [v.to(device) for v in value]
    return value


def _head(num_classes: int) -> torch.nn.Module:
    """An ``ssd`` head on a small VGG whose loss and detection are what is timed (its layers are not run:
    both take the default boxes from the outputs)."""
    from vision_pipe import StageContext
    from vision_pipe_plugins.backbone.vgg import vgg

    backbone = vgg(depth=8, width=4, stages=3)
    context = StageContext(
        task="detection",
        seed=0,
        input_size=(32, 32),
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        feature_info=tuple(backbone.feature_info),
        backbone_provides=frozenset(backbone.provides),
        backbone_name="vgg",
    )
    return ssd(context)


if __name__ == "__main__":
    main()
