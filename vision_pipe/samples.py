"""The sample contract: what every sample a loader produces must satisfy, checked in one place.

The pre-flight pass (:mod:`vision_pipe.preflight`), the plugin testing kit
(:mod:`vision_pipe.testing`) and loaders that validate annotations early all
call these functions, so the rules cannot drift apart:

- ``image``: (H, W, 3) uint8 RGB;
- ``id``: a str (the file path for files);
- classification ``label``: an int in [0, num_classes);
- segmentation ``mask``: (H, W) integer class ids of the image's size, in
  [0, num_classes) or :data:`IGNORE_INDEX`;
- detection ``boxes``: (N, 4) finite xyxy pixels with x1 < x2, y1 < y2, inside
  [0, W] × [0, H] give or take :data:`BOX_TOLERANCE` pixels; ``labels`` (N,)
  ints in [0, num_classes); optional ``difficult`` (N,) bool.

Every check raises :class:`~vision_pipe.errors.DataError` whose message names
the sample (its id) and says how to fix it. :func:`pack_targets` is the batch
form of the detection targets (padded tensors for the device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vision_pipe.errors import DataError

#: The value of a mask pixel that is ignored by loss and metrics.
IGNORE_INDEX = 255
#: Pixels a box may reach beyond the image border (it is then clipped): annotation
#: tools often round a box touching the border to one pixel past it.
BOX_TOLERANCE = 1.0
#: How many offending values a message lists.
_SHOWN = 10


def fmt_box(values: Sequence[float]) -> str:
    """``[10, 20.5, 15, 26]``: numbers without trailing zeros."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def check_image(image: Any, sample_id: str) -> np.ndarray:
    """Return ``image`` if it is (H, W, 3) uint8; else :class:`DataError` naming the sample."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(
            f"{sample_id}: the image is a {desc}; expected an (H, W, 3) uint8 RGB image "
            "(e.g. np.clip(x * 255, 0, 255).astype(np.uint8))"
        )
    return image


def check_id(sample_id: Any) -> str:
    """Return ``sample_id`` if it is a non-empty str; else :class:`DataError`."""
    if not isinstance(sample_id, str) or not sample_id:
        raise DataError(f"sample id {sample_id!r}: 'id' must be a non-empty str (e.g. the file path)")
    return sample_id


def check_label(label: Any, num_classes: int, sample_id: str) -> int:
    """Return ``label`` as an int if it is a class index in [0, num_classes)."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{sample_id}: the label is {label!r}; expected an int class index")
    if not 0 <= int(label) < num_classes:
        raise DataError(f"{sample_id}: label {int(label)} is not a class index (0..{num_classes - 1})")
    return int(label)


def check_mask(mask: Any, size: tuple[int, int], num_classes: int, sample_id: str) -> np.ndarray:
    """Return ``mask`` if it is (H, W) = ``size`` integer class ids in [0, num_classes) or :data:`IGNORE_INDEX`."""
    if mask is None:
        raise DataError(f"{sample_id}: the sample has no mask; a segmentation loader must give every image its mask")
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise DataError(
            f"{sample_id}: the mask has shape {shape}; expected (H, W) class ids. An RGB colour mask must be "
            "converted to class ids (or saved as a palette PNG, whose indices are the class ids)"
        )
    if tuple(mask.shape) != tuple(size):
        raise DataError(
            f"{sample_id}: the mask is {mask.shape[0]}x{mask.shape[1]} but its image is {size[0]}x{size[1]} "
            "(height x width); a mask must have its image's size — was it resized or paired with the wrong image?"
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{sample_id}: the mask has dtype {mask.dtype}; expected integer class ids")
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:_SHOWN])
        hint = (
            f" A binary mask with its foreground saved as {int(bad[0])}? Store class ids (1, not {int(bad[0])})."
            if bad.size == 1 and set(values.tolist()) <= {0, int(bad[0]), IGNORE_INDEX}
            else ""
        )
        raise DataError(
            f"{sample_id}: mask values {shown} are not class ids: the pipeline has {num_classes} classes "
            f"(0..{num_classes - 1}) and {IGNORE_INDEX} means ignore. Declare the missing classes or fix the mask.{hint}"
        )
    return mask


def box_problem(box: Sequence[float], width: int, height: int) -> str | None:
    """Why the xyxy pixel ``box`` cannot be used in a ``width`` × ``height`` image, or ``None`` if it can.

    The message completes a sentence that names the box ("box 0 [1, 2, 1, 5] has x2 1 ≤ x1 1 ...").
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "has NaN or infinite coordinates; fix or remove the annotation"
    convert = (
        "boxes are corners in pixels; a box given as [x, y, width, height] must be converted "
        "(x2 = x + width, y2 = y + height)"
    )
    if x2 <= x1:
        return f"has x2 {x2:g} ≤ x1 {x1:g} (no width): {convert}"
    if y2 <= y1:
        return f"has y2 {y2:g} ≤ y1 {y1:g} (no height): {convert}"
    tol = BOX_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        return (
            f"lies outside the {width}×{height} image (width × height): boxes must satisfy "
            f"0 ≤ x1 < x2 ≤ {width} and 0 ≤ y1 < y2 ≤ {height} — are the coordinates normalized, "
            "or for a differently sized image?"
        )
    return None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 when either is empty)."""
    ix = max(0.0, min(float(a[2]), float(b[2])) - max(float(a[0]), float(b[0])))
    iy = max(0.0, min(float(a[3]), float(b[3])) - max(float(a[1]), float(b[1])))
    inter = ix * iy
    area_a = max(0.0, float(a[2]) - float(a[0])) * max(0.0, float(a[3]) - float(a[1]))
    area_b = max(0.0, float(b[2]) - float(b[0])) * max(0.0, float(b[3]) - float(b[1]))
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def check_boxes(sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
    """Check ``boxes`` (N, 4), ``labels`` (N,) and the optional ``difficult`` (N,) of a detection sample."""
    try:
        boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), dtype=np.float64)
        labels = np.asarray(sample.get("labels", np.zeros(0)))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{sample_id}: boxes must be (N, 4) numbers and labels (N,) ints ({exc})") from exc
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{sample_id}: boxes have shape {boxes.shape}; expected (N, 4) xyxy pixels")
    labels = labels.reshape(-1) if labels.ndim <= 1 else labels
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{sample_id}: labels must be an (N,) integer array; got {labels.dtype} {labels.shape}")
    if len(boxes) != len(labels):
        raise DataError(f"{sample_id}: {len(boxes)} boxes but {len(labels)} labels; give one label per box")
    height, width = size
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        where = f"{sample_id}: box {i} [x1, y1, x2, y2] = {fmt_box(box)}"
        problem = box_problem(box, width, height)
        if problem:
            raise DataError(f"{where} {problem}")
        if not 0 <= int(label) < num_classes:
            raise DataError(f"{where} has label {int(label)}, not a class index (0..{num_classes - 1})")
    difficult = sample.get("difficult")
    if difficult is not None:
        flags = np.asarray(difficult)
        if flags.shape != (len(boxes),) or flags.dtype != bool:
            raise DataError(
                f"{sample_id}: 'difficult' must be an (N,) = ({len(boxes)},) bool array; got {flags.dtype} {flags.shape}"
            )


def sample_classes(sample: Mapping[str, Any]) -> list[int]:
    """The class ids a (checked) sample holds: its ``label``, its ``mask``'s values but 255, its boxes' ``labels``."""
    found: set[int] = set()
    if sample.get("label") is not None:
        found.add(int(sample["label"]))
    if sample.get("mask") is not None:
        found.update(int(v) for v in np.unique(np.asarray(sample["mask"])) if v != IGNORE_INDEX)
    if sample.get("labels") is not None:
        found.update(int(v) for v in np.asarray(sample["labels"]).reshape(-1))
    return sorted(found)


def pack_targets(boxes: Sequence[Any], labels: Sequence[Any], difficult: Sequence[Any]) -> dict[str, Any]:
    """The per-image targets of a batch padded to its largest count ``G``, three tensors for the device
    instead of three per image: ``box_targets`` (B, G, 4) float32 xyxy pixels (padding rows 0),
    ``label_targets`` (B, G) int64 (padding -1), ``difficult_targets`` (B, G) bool (padding False)."""
    import torch

    count = max((len(x) for x in labels), default=0)
    out = {
        "box_targets": torch.zeros(len(boxes), count, 4, dtype=torch.float32),
        "label_targets": torch.full((len(labels), count), -1, dtype=torch.int64),
        "difficult_targets": torch.zeros(len(difficult), count, dtype=torch.bool),
    }
    for i, (b, lab, d) in enumerate(zip(boxes, labels, difficult, strict=True)):
        n = len(lab)
        out["box_targets"][i, :n] = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        out["label_targets"][i, :n] = torch.as_tensor(lab, dtype=torch.int64).reshape(-1)
        out["difficult_targets"][i, :n] = torch.as_tensor(d, dtype=torch.bool).reshape(-1)
    return out


__all__ = [
    "BOX_TOLERANCE",
    "IGNORE_INDEX",
    "box_iou",
    "box_problem",
    "check_boxes",
    "check_id",
    "check_image",
    "check_label",
    "check_mask",
    "fmt_box",
    "pack_targets",
    "sample_classes",
]
