"""The data-side checks of the kit: loading, normalization and augmentation.

Owns :func:`check_loader` (tasks, class names, splits, fingerprints and the
sample contract of :mod:`vision_pipe.samples`, through the task),
:func:`check_normalization` (fit on a one-pass stream, forward, fitted
statistics in ``state_dict``, artifacts) and :func:`check_augmentation` (the
image stays uint8 RGB, the mask and the box follow it; ``MIN_ALIGNMENT`` and
``MIN_BOX_IOU`` are its thresholds).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vision_pipe.errors import DataError, VisionPipeError
from vision_pipe.io import SPLITS
from vision_pipe.samples import IGNORE_INDEX, box_iou, check_boxes, check_id
from vision_pipe.stages import LoadedData, Loader, Normalizer, SampleSource, StageContext
from vision_pipe.tasks import TASKS, get_task
from vision_pipe.testing._build import _build, _context, _fail

#: Least |correlation| between the transformed image and mask for them to count as aligned.
MIN_ALIGNMENT = 0.5
#: Least IoU between a transformed box and the box of the transformed mask object.
MIN_BOX_IOU = 0.5


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def check_loader(stage_like: Any, task: str | None = None, /, *, max_samples: int = 4, **params: Any) -> Loader:
    """Check a loading stage for ``task`` (every task in its ``tasks`` when ``None``).

    Loads the source, checks class names, splits (``all``, or ``train`` with
    optional ``val``/``test``), non-empty sources with stable fingerprints, and
    reads up to ``max_samples`` samples per split: ``image`` (H, W, 3) uint8,
    ``id`` str, and the task's targets as :class:`~vision_pipe.stages.Sample`
    documents them. Returns the built loader.
    """
    loader, label = _build(stage_like, "loading", Loader, "a vision_pipe.Loader", _context(), params)
    tasks = tuple(getattr(loader, "tasks", ()))
    if not tasks or any(t not in TASKS for t in tasks):
        raise _fail(label, f"tasks must be a non-empty tuple of {', '.join(TASKS)}; got {tasks!r}")
    if task is not None and task not in tasks:
        raise _fail(label, f"cannot be checked for task {task!r}: it declares only {', '.join(tasks)}")
    for each in [task] if task else tasks:
        _check_loaded(loader, each, f"{label}, task {each}", max_samples)
    return loader


def _check_loaded(loader: Loader, task: str, label: str, max_samples: int) -> None:
    try:
        loaded = loader.load(task)
    except VisionPipeError as exc:
        raise _fail(label, f"load() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, LoadedData):
        raise _fail(label, f"load() returned {type(loaded).__name__}; it must return a vision_pipe.LoadedData")
    names = loaded.class_names
    if get_task(task).has_classes and not names:
        raise _fail(label, f"class_names must be a non-empty list of distinct strings; got {names!r}")
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _fail(label, f"class_names must be a list of distinct strings; got {names!r}")
    _check_colors(loaded.class_colors, len(names), label)
    _check_split_names(loaded.splits, label)
    for split, source in loaded.splits.items():
        _check_source(source, task, len(names), f"{label}, split '{split}'", max_samples)


def _check_colors(colors: Any, num_classes: int, label: str) -> None:
    if colors is None:
        return
    ok = len(colors) == num_classes and all(
        len(c) == 3 and all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in c) for c in colors
    )
    if not ok:
        raise _fail(
            label, f"class_colors must be one (R, G, B) of ints in [0, 255] per class ({num_classes}); got {colors!r}"
        )


def _check_split_names(splits: Any, label: str) -> None:
    keys = set(splits) if isinstance(splits, Mapping) else None
    if not keys or not (keys == {"all"} or ("train" in keys and keys <= set(SPLITS))):
        raise _fail(
            label, f"splits must be {{'all': source}} or 'train' (+ optional 'val', 'test'); got {sorted(keys or [])}"
        )


def _check_source(source: Any, task: str, num_classes: int, label: str, max_samples: int) -> None:
    if not isinstance(source, SampleSource):
        raise _fail(label, f"is a {type(source).__name__}; it must be a vision_pipe.SampleSource")
    n = len(source)
    if n < 1:
        raise _fail(label, "has no samples")
    first, second = source.fingerprint(), source.fingerprint()
    if not isinstance(first, str) or not first or first != second:
        raise _fail(label, f"fingerprint() must return the same non-empty string every time; got {first!r}, {second!r}")
    for index in sorted({round(i) for i in np.linspace(0, n - 1, min(n, max_samples))}):
        _check_sample(source[index], task, num_classes, f"{label}, sample {index}")


def _check_sample(sample: Any, task: str, num_classes: int, label: str) -> None:
    """Check one sample against the sample contract (:mod:`vision_pipe.samples`, through the task)."""
    if not isinstance(sample, Mapping):
        raise _fail(label, f"is a {type(sample).__name__}; a sample is a dict (vision_pipe.Sample)")
    try:
        check_id(sample.get("id"))
        get_task(task).check_sample(sample, num_classes)
    except DataError as exc:
        raise _fail(label, str(exc)) from exc


# ----------------------------------------------------------------------------
# normalization
# ----------------------------------------------------------------------------


def _kit_images(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``count`` (H, W, 3) uint8 images with varied content."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def check_normalization(
    stage_like: Any, /, *, input_size: tuple[int, int] = (16, 16), num_images: int = 4, **params: Any
) -> Normalizer:
    """Check a normalization stage at ``input_size`` (H, W).

    Fits it (when ``needs_fit``) on a one-pass generator of ``num_images``
    uint8 images, then checks that ``forward`` maps a (B, 3, H, W) float32
    batch in [0, 255] to finite float32 of the same shape, that a fresh
    instance loaded with its ``state_dict`` gives the same output (fitted
    statistics are buffers), and that ``save_artifacts`` returns existing files.
    Returns the fitted normalizer.
    """
    context = _context(input_size=input_size)
    norm, label = _build(stage_like, "normalization", Normalizer, "a vision_pipe.Normalizer", context, params)
    images = _kit_images(num_images, input_size)
    if norm.needs_fit:
        try:
            norm.fit(image for image in images)
        except Exception as exc:
            raise _fail(
                label, f"fit() failed on a one-pass stream of {num_images} images: {type(exc).__name__}: {exc}"
            ) from exc
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    out = _normalize(norm, batch, label)
    if not isinstance(stage_like, Normalizer):
        _check_state_dict(stage_like, norm, context, params, batch, out, label)
    _check_artifacts(norm, label)
    return norm


def _normalize(norm: Normalizer, batch: Tensor, label: str) -> Tensor:
    with torch.no_grad():
        out = norm(batch.clone())
    if not isinstance(out, Tensor) or out.shape != batch.shape or out.dtype != torch.float32:
        desc = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise _fail(
            label, f"forward() gave {desc} for a float32 {tuple(batch.shape)} batch; it must keep shape and float32"
        )
    if not torch.isfinite(out).all():
        raise _fail(label, "forward() gave NaN or infinite values")
    return out


def _check_state_dict(
    stage_like: Any,
    norm: Normalizer,
    context: StageContext,
    params: Mapping[str, Any],
    batch: Tensor,
    out: Tensor,
    label: str,
) -> None:
    fresh, _ = _build(stage_like, "normalization", Normalizer, "a vision_pipe.Normalizer", context, params)
    try:
        fresh.load_state_dict(norm.state_dict())
    except Exception as exc:
        raise _fail(label, f"a fresh instance cannot load the fitted state_dict: {exc}") from exc
    if not torch.allclose(_normalize(fresh, batch, label), out, atol=1e-5):
        raise _fail(
            label,
            "a fresh instance loaded with the fitted state_dict normalizes differently: keep fitted statistics "
            "in buffers (self.register_buffer) so that they travel in checkpoints",
        )


def _check_artifacts(norm: Normalizer, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = norm.save_artifacts(Path(tmp) / "plots")
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise _fail(label, f"save_artifacts() returned paths that are not files: {missing}")


# ----------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------


def _augmentation_sample(size: int) -> dict[str, Any]:
    """A noisy background with one off-centre, thin rectangle; its mask (uint8, as the
    pipeline hands masks to augmentations) and box.

    The rectangle is placed so that a flip, a transpose or a 90° rotation of
    the image alone moves it away from the mask.
    """
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (40, 90, 180)
    y1, y2, x1, x2 = round(size * 0.1), round(size * 0.3), round(size * 0.06), round(size * 0.56)
    image[y1:y2, x1:x2] = (220, 160, 40)
    image += rng.normal(0, 6, image.shape)
    mask = np.zeros((size, size), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return {
        "image": np.clip(image, 0, 255).astype(np.uint8),
        "mask": mask,
        "bboxes": np.array([[x1, y1, x2, y2]], np.float32),
        "labels": np.array([1], np.int64),
    }


def check_augmentation(stage_like: Any, /, *, image_size: int = 32, tries: int = 6, **params: Any) -> Any:
    """Check an augmentation on a ``image_size`` px image with a rectangle, its mask and its box.

    The transform runs (with ``p=1``) ``tries`` times with different seeds, as
    the pipeline composes it (masks and xyxy boxes as targets). Every time the
    image must stay (H, W, 3) uint8, the mask keep the image's size and only
    class ids, boxes stay inside the image. In most tries where the object
    stays visible, the image and the mask must still show it at the same
    place (|correlation| ≥ 0.5) and the box must match the mask's object
    (IoU ≥ 0.5). Returns the built transform.
    """
    import albumentations as A

    transform, label = _build(
        stage_like, "augmentation", A.BasicTransform, "an albumentations transform", _context(), params
    )
    transform = copy.deepcopy(transform)
    if hasattr(transform, "p"):
        transform.p = 1.0
    compose = A.Compose(
        [transform],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.0, clip=True),
    )
    sample = _augmentation_sample(image_size)
    problems: list[str] = []
    conclusive = 0
    for seed in range(tries):
        compose.set_random_seed(seed)
        try:
            out = compose(**copy.deepcopy(sample))
        except Exception as exc:
            raise _fail(
                label, f"failed on a {image_size} px RGB image with a mask and a box: {type(exc).__name__}: {exc}"
            ) from exc
        problem = _check_augmented(out, label)
        if problem is not None:
            conclusive += 1
            if problem:
                problems.append(problem)
    if conclusive == 0:
        raise _fail(label, f"could not be checked: the object never stayed visible in {tries} tries")
    if len(problems) * 2 > conclusive:
        raise _fail(label, f"in {len(problems)} of {conclusive} tries {problems[0]}")
    return transform


def _check_augmented(out: Mapping[str, Any], label: str) -> str | None:
    """Check one transformed sample; ``None``: inconclusive, ``""``: consistent, else the inconsistency."""
    image, mask = out["image"], np.asarray(out["mask"])
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else repr(type(image))
        raise _fail(
            label, f"turned the uint8 RGB image into {desc}; pipeline images stay (H, W, 3) uint8 until normalization"
        )
    if mask.shape != image.shape[:2]:
        raise _fail(
            label,
            f"gave a mask of shape {mask.shape} for an image of shape {image.shape}: the mask must follow the image",
        )
    bad = np.setdiff1d(np.unique(mask), [0, 1, IGNORE_INDEX])
    if bad.size:
        raise _fail(
            label,
            f"turned the mask's class ids 0/1 into {bad[:5].tolist()}: masks need nearest-neighbour interpolation",
        )
    boxes = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
    try:
        check_boxes({"boxes": boxes, "labels": np.asarray(out["labels"], np.int64)}, image.shape[:2], 2, "the output")
    except DataError as exc:
        raise _fail(label, str(exc)) from exc
    region = mask == 1
    if region.sum() < 4 or region.all():
        return None
    alignment = _alignment(image, region)
    if alignment is None:
        return None
    if alignment < MIN_ALIGNMENT:
        return (
            f"the mask no longer marks the object in the image (|correlation| {alignment:.2f} < {MIN_ALIGNMENT}): "
            "the image was moved but not the mask (or the reverse) — implement apply_to_mask like apply"
        )
    return _box_problem(boxes, region)


def _alignment(image: np.ndarray, region: np.ndarray) -> float | None:
    """Largest |correlation| over channels between the image and the object mask; ``None`` if the image is flat."""
    target = region.astype(np.float64).ravel()
    best = None
    for c in range(3):
        channel = image[..., c].astype(np.float64).ravel()
        if channel.std() < 1e-6:
            continue
        corr = abs(float(np.corrcoef(channel, target)[0, 1]))
        best = corr if best is None else max(best, corr)
    return best


def _box_problem(boxes: np.ndarray, region: np.ndarray) -> str:
    """``""`` when the boxes (one, or the pieces of a cut-up object) cover the mask's object, else what is wrong."""
    ys, xs = np.nonzero(region)
    object_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    if len(boxes) == 0:
        return f"the object is visible in the mask at {object_box.tolist()} but its box was dropped"
    union = np.array([*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)])
    iou = box_iou(union.tolist(), object_box.tolist())
    if iou < MIN_BOX_IOU:
        return (
            f"the box {np.round(union, 1).tolist()} does not match the mask's object at {object_box.tolist()} "
            f"(IoU {iou:.2f} < {MIN_BOX_IOU}) — implement apply_to_bboxes like apply"
        )
    return ""
