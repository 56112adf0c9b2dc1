"""A testing kit for plugin authors: contract checks and minimal reference stages.

Each ``check_*`` function builds a stage, runs it on tiny synthetic inputs and
raises :class:`~vision_pipe.errors.ContractError` — naming the stage and the
rule it broke — when the stage does not keep its kind's contract
(:mod:`vision_pipe.stages`). They need no pytest and return the built stage, so
a plugin's own tests are one line each::

    from vision_pipe.testing import check_backbone, check_loader

    def test_tiny_backbone():
        check_backbone(my_package.stages.tiny, width=8)

    def test_my_loader(tmp_path):
        check_loader(my_package.stages.my_loader, "classification", root=tmp_path / "data")

``stage`` may be a factory marked with :func:`vision_pipe.stage`, a registry
entry (``manager.registry.get(kind, name)``) or an already built stage;
keyword arguments other than the check's own options are the stage's
parameters. :func:`check_stage` checks a registry entry of any kind.

What is checked:

- loading: every task it declares loads; class names, splits, fingerprints;
  samples have (H, W, 3) uint8 images and targets of the declared schema.
- normalization: fits on a one-pass stream of images; forward keeps the shape,
  gives finite float32; fitted statistics travel in ``state_dict``.
- augmentation: on a 32 px image with an object, its mask and its box, the
  image stays uint8 RGB, the mask keeps class ids and follows the image, the
  box follows the mask.
- backbone: ``feature_info`` is well formed; maps have the declared names,
  channels and strides (also for odd input sizes); gradients flow.
- head: the loss is a finite scalar whose gradients reach the backbone;
  metrics, summaries and decoded predictions have the documented form.

The reference stages :func:`boring_loader` (:class:`BoringLoader`) and
:func:`boring_backbone` (:class:`BoringBackbone`) — as Lightning's
``BoringModel`` — are the smallest stages that pass; start from them, or use
them to test a head or a normalization alone. Register them with
``manager.register(BoringPlugin(), name="boring")``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.errors import ContractError, DataError, StageError, VisionPipeError
from vision_pipe.hookspecs import hookimpl
from vision_pipe.plugins import ENTRY_POINT_GROUP, PluginManager
from vision_pipe.registry import StageEntry, make_entry
from vision_pipe.samples import IGNORE_INDEX, check_boxes, check_id
from vision_pipe.stages import (
    Backbone,
    Batch,
    FeatureInfo,
    Features,
    Head,
    LoadedData,
    Loader,
    Normalizer,
    Sample,
    SampleSource,
    StageContext,
    StageInfo,
    stage,
)
from vision_pipe.tasks import TASKS, get_task

#: Least |correlation| between the transformed image and mask for them to count as aligned.
MIN_ALIGNMENT = 0.5
#: Least IoU between a transformed box and the box of the transformed mask object.
MIN_BOX_IOU = 0.5
#: The class names the kit gives stages that need some (background first, for segmentation).
KIT_CLASSES: tuple[str, ...] = ("background", "circle", "square")

__all__ = [
    "BoringBackbone",
    "BoringLoader",
    "BoringPlugin",
    "boring_backbone",
    "boring_loader",
    "check_augmentation",
    "check_backbone",
    "check_head",
    "check_loader",
    "check_normalization",
    "check_stage",
    "load_plugin",
    "make_batch",
]


# ----------------------------------------------------------------------------
# Building the stage under test
# ----------------------------------------------------------------------------


def _label(stage_like: Any, kind: str) -> str:
    """How messages name the stage: ``backbone stage 'tiny' (plugin 'x')``."""
    if isinstance(stage_like, StageEntry):
        return f"{stage_like.kind} stage '{stage_like.name}' (plugin '{stage_like.plugin}')"
    info = getattr(stage_like, "__vision_pipe_stage__", None)
    if isinstance(info, StageInfo):
        return f"{info.kind} stage '{info.name}'"
    name = getattr(stage_like, "__name__", None) or type(stage_like).__name__
    return f"{kind} stage {name}"


def _call_factory(factory: Callable[..., Any], params: Mapping[str, Any], context: StageContext) -> Any:
    """Build with ``params`` as a pipeline would: a factory marked with :func:`vision_pipe.stage` through
    a validated registry entry (its signature's types and constraints are checked first); any other
    callable (e.g. an albumentations class) is called with ``params``, and ``context`` when its
    signature asks for it."""
    if isinstance(getattr(factory, "__vision_pipe_stage__", None), StageInfo):
        return make_entry(factory).build(params, context)
    kwargs = dict(params)
    try:
        if "context" in inspect.signature(factory).parameters:
            kwargs["context"] = context
    except (TypeError, ValueError):
        pass
    return factory(**kwargs)


def _build(
    stage_like: Any, kind: str, expected: type | tuple[type, ...], what: str, context: StageContext, params: Mapping[str, Any]
) -> tuple[Any, str]:
    """Build ``stage_like`` (entry, factory or instance) and check the kind of object it gives."""
    label = _label(stage_like, kind)
    declared = stage_like.kind if isinstance(stage_like, StageEntry) else None
    info = getattr(stage_like, "__vision_pipe_stage__", None)
    declared = declared or (info.kind if isinstance(info, StageInfo) else None)
    if declared is not None and declared != kind:
        raise ContractError(f"{label} is a {declared} stage, not a {kind} stage")
    if isinstance(stage_like, expected):
        if params:
            raise ContractError(f"{label}: parameters {sorted(params)} given for a stage that is already built")
        return stage_like, label
    try:
        if isinstance(stage_like, StageEntry):
            built = stage_like.build(dict(params), context)
        elif callable(stage_like):
            built = _call_factory(stage_like, params, context)
        else:
            raise ContractError(f"{label}: expected a stage factory, a registry entry or {what}, got {stage_like!r}")
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(
            f"{label} could not be built with parameters {dict(params)}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(built, expected):
        raise ContractError(f"{label} returned {type(built).__name__}; a {kind} stage must return {what}")
    return built, label


def _fail(label: str, rule: str) -> ContractError:
    return ContractError(f"{label}: {rule}")


def _context(task: str = "classification", input_size: tuple[int, int] = (32, 32)) -> StageContext:
    return StageContext(task=task, seed=0, input_size=tuple(input_size), class_names=KIT_CLASSES)  # type: ignore[arg-type]


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
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise _fail(label, f"class_names must be a non-empty list of distinct strings; got {names!r}")
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
        raise _fail(label, f"class_colors must be one (R, G, B) of ints in [0, 255] per class ({num_classes}); got {colors!r}")


def _check_split_names(splits: Any, label: str) -> None:
    keys = set(splits) if isinstance(splits, Mapping) else None
    if not keys or not (keys == {"all"} or ("train" in keys and keys <= {"train", "val", "test"})):
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
    images = _kit_images(num_images, tuple(input_size))
    if norm.needs_fit:
        try:
            norm.fit(image for image in images)
        except Exception as exc:
            raise _fail(label, f"fit() failed on a one-pass stream of {num_images} images: {type(exc).__name__}: {exc}") from exc
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
        raise _fail(label, f"forward() gave {desc} for a float32 {tuple(batch.shape)} batch; it must keep shape and float32")
    if not torch.isfinite(out).all():
        raise _fail(label, "forward() gave NaN or infinite values")
    return out


def _check_state_dict(
    stage_like: Any, norm: Normalizer, context: StageContext, params: Mapping[str, Any], batch: Tensor, out: Tensor, label: str
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
            raise _fail(label, f"failed on a {image_size} px RGB image with a mask and a box: {type(exc).__name__}: {exc}") from exc
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
        raise _fail(label, f"turned the uint8 RGB image into {desc}; pipeline images stay (H, W, 3) uint8 until normalization")
    if mask.shape != image.shape[:2]:
        raise _fail(label, f"gave a mask of shape {mask.shape} for an image of shape {image.shape}: the mask must follow the image")
    bad = np.setdiff1d(np.unique(mask), [0, 1, IGNORE_INDEX])
    if bad.size:
        raise _fail(label, f"turned the mask's class ids 0/1 into {bad[:5].tolist()}: masks need nearest-neighbour interpolation")
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
    iou = _iou(union, object_box)
    if iou < MIN_BOX_IOU:
        return (
            f"the box {np.round(union, 1).tolist()} does not match the mask's object at {object_box.tolist()} "
            f"(IoU {iou:.2f} < {MIN_BOX_IOU}) — implement apply_to_bboxes like apply"
        )
    return ""


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ----------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------


def check_backbone(
    stage_like: Any, /, *, input_size: tuple[int, int] = (32, 32), batch_size: int = 2, **params: Any
) -> Backbone:
    """Check a backbone stage on (``batch_size``, 3, H, W) inputs of ``input_size`` and an odd size.

    ``feature_info`` must be a non-empty list of :class:`FeatureInfo` with
    distinct names, channels ≥ 1 and power-of-two strides, finest first;
    ``forward`` must return :class:`Features` whose maps are exactly those, in
    order, each (B, channels, ⌈H/stride⌉, ⌈W/stride⌉) and finite; pooling
    indices (when ``"pool_indices"`` is provided) must match their maps; and a
    loss on the maps must give finite gradients to the parameters. Returns the
    built backbone.
    """
    context = _context(input_size=input_size)
    backbone, label = _build(stage_like, "backbone", Backbone, "a vision_pipe.Backbone", context, params)
    infos = _check_feature_info(backbone, label)
    height, width = input_size
    for size in ((height, width), (height + 1, width + 3)):
        features = _forward_backbone(backbone, infos, size, batch_size, label)
    _check_backbone_gradients(backbone, features, label)
    return backbone


def _check_feature_info(backbone: Backbone, label: str) -> list[FeatureInfo]:
    infos = list(getattr(backbone, "feature_info", None) or [])
    if not infos or not all(isinstance(f, FeatureInfo) for f in infos):
        raise _fail(label, "feature_info must be a non-empty list of vision_pipe.FeatureInfo (name, channels, stride)")
    names = [f.name for f in infos]
    if len(set(names)) != len(names):
        raise _fail(label, f"feature_info names must be distinct; got {names}")
    for f in infos:
        if not isinstance(f.channels, int) or f.channels < 1:
            raise _fail(label, f"map '{f.name}' declares {f.channels!r} channels; it must be an int ≥ 1")
        if not isinstance(f.stride, int) or f.stride < 1 or f.stride & (f.stride - 1):
            raise _fail(label, f"map '{f.name}' declares stride {f.stride!r}; strides are powers of two (1, 2, 4, ...)")
    strides = [f.stride for f in infos]
    if strides != sorted(strides):
        raise _fail(label, f"feature_info must list maps finest first (strides non-decreasing); got strides {strides}")
    if not isinstance(getattr(backbone, "provides", frozenset()), (set, frozenset)):
        raise _fail(label, "provides must be a frozenset of capability names, e.g. frozenset({'pool_indices'})")
    return infos


def _forward_backbone(
    backbone: Backbone, infos: list[FeatureInfo], size: tuple[int, int], batch_size: int, label: str
) -> Features:
    backbone.train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, *size, generator=generator)
    try:
        features = backbone(images)
    except Exception as exc:
        raise _fail(label, f"forward() failed on a {tuple(images.shape)} batch: {type(exc).__name__}: {exc}") from exc
    if not isinstance(features, Features):
        raise _fail(label, f"forward() returned {type(features).__name__}; it must return vision_pipe.Features")
    if list(features.maps) != [f.name for f in infos]:
        raise _fail(label, f"forward() returned maps {list(features.maps)}; feature_info declares {[f.name for f in infos]} (same order)")
    for info in infos:
        _check_map(features.maps[info.name], info, size, batch_size, label)
    if "pool_indices" in backbone.provides:
        _check_pool_indices(features, label)
    return features


def _check_map(fmap: Any, info: FeatureInfo, size: tuple[int, int], batch_size: int, label: str) -> None:
    expected = (batch_size, info.channels, math.ceil(size[0] / info.stride), math.ceil(size[1] / info.stride))
    if not isinstance(fmap, Tensor) or tuple(fmap.shape) != expected:
        got = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
        raise _fail(
            label,
            f"map '{info.name}' is {got} for a {size[0]}×{size[1]} input, but feature_info declares "
            f"{info.channels} channels at stride {info.stride}: expected {expected} (sizes round up)",
        )
    if not fmap.is_floating_point() or not torch.isfinite(fmap).all():
        raise _fail(label, f"map '{info.name}' must be finite floating point; got {fmap.dtype} with NaN/inf or ints")


def _check_pool_indices(features: Features, label: str) -> None:
    if not features.pool_indices:
        raise _fail(label, "provides 'pool_indices' but forward() returned none")
    for name, entry in features.pool_indices.items():
        if name not in features.maps:
            raise _fail(label, f"pool_indices['{name}'] names no map; keys are the names of the maps the pooling produced")
        indices, input_size = entry
        fmap = features.maps[name]
        if indices.shape != fmap.shape or indices.dtype != torch.int64:
            raise _fail(label, f"pool_indices['{name}'] is {indices.dtype} {tuple(indices.shape)}; expected int64 {tuple(fmap.shape)}")
        if len(input_size) != 2 or any(s < m for s, m in zip(input_size, fmap.shape[-2:])):
            raise _fail(label, f"pool_indices['{name}'] input size {input_size} must be the (H, W) before that pooling")


def _check_backbone_gradients(backbone: Backbone, features: Features, label: str) -> None:
    params = [p for p in backbone.parameters() if p.requires_grad]
    if not params:
        return
    backbone.zero_grad()
    loss = sum(m.float().pow(2).mean() for m in features.maps.values())
    if isinstance(loss, Tensor) and loss.requires_grad:
        loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
        raise _fail(label, "no gradient reaches its parameters from its maps (detached or no_grad in forward?)")
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(label, "gradients of its parameters are NaN or infinite")


# ----------------------------------------------------------------------------
# head
# ----------------------------------------------------------------------------


def make_batch(
    task: str, input_size: tuple[int, int] = (32, 32), num_classes: int = 3, batch_size: int = 2, seed: int = 0
) -> Batch:
    """A random :class:`~vision_pipe.stages.Batch` for ``task``, as the data side collates it.

    Segmentation masks include ignored (255) pixels; detection gives image 0
    two boxes and image 1 none (every head must cope with empty images).
    """
    rng = np.random.default_rng(seed)
    height, width = input_size
    batch: dict[str, Any] = {
        "image": torch.from_numpy(rng.integers(0, 256, (batch_size, 3, height, width), dtype=np.uint8)),
        "meta": [{"id": f"kit:{i}", "orig_size": (height, width)} for i in range(batch_size)],
    }
    batch.update(get_task(task).random_targets(rng, batch_size, input_size, num_classes))
    return batch  # type: ignore[return-value]


def check_head(
    stage_like: Any,
    task: str | None = None,
    /,
    *,
    backbone: Backbone | None = None,
    input_size: tuple[int, int] = (32, 32),
    class_names: Sequence[str] = KIT_CLASSES,
    batch_size: int = 2,
    **params: Any,
) -> Head:
    """Check a head stage on ``backbone`` (default: a :class:`BoringBackbone` with 4 maps).

    The head is built with a :class:`StageContext` describing the backbone;
    ``task`` defaults to the first task it builds for. On a batch from
    :func:`make_batch`: the loss must be a dict with a finite scalar
    ``"loss"`` whose gradients reach the backbone (and are finite); in eval
    mode the metrics must update and compute, ``summarize`` must give flat
    ``{str: float}`` without a split prefix, and ``decode`` one prediction of
    the task's type per image with the batch's ids. Returns the built head.
    """
    backbone = backbone if backbone is not None else BoringBackbone()
    head, label, task = _build_head(stage_like, task, backbone, input_size, tuple(class_names), params)
    batch = make_batch(task, input_size, len(class_names), batch_size)
    images = batch["image"].float() / 255.0
    _check_loss(head, backbone, images, batch, label)
    outputs = _eval_outputs(head, backbone, images)
    _check_metrics(head, outputs, batch, class_names, label)
    _check_decode(head, outputs, batch, class_names, task, label)
    return head


def _build_head(
    stage_like: Any,
    task: str | None,
    backbone: Backbone,
    input_size: tuple[int, int],
    class_names: tuple[str, ...],
    params: Mapping[str, Any],
) -> tuple[Head, str, str]:
    """Build the head for ``task`` (or the first task it builds for); check it solves that task."""
    errors: list[ContractError] = []
    candidates = [task] if task else [stage_like.task] if isinstance(stage_like, Head) else list(TASKS)
    for each in candidates:
        context = StageContext(
            task=each,
            seed=0,
            input_size=tuple(input_size),  # type: ignore[arg-type]
            class_names=class_names,
            feature_info=tuple(backbone.feature_info),
            backbone_provides=frozenset(backbone.provides),
            backbone_name=type(backbone).__name__,
        )
        try:
            head, label = _build(stage_like, "head", Head, "a vision_pipe.Head", context, params)
        except ContractError as exc:
            errors.append(exc)
            continue
        if getattr(head, "task", None) == each:
            return head, label, each
        if task or isinstance(stage_like, Head):
            raise _fail(label, f"solves {getattr(head, 'task', None)!r}, not {each!r} (its class attribute 'task')")
    raise errors[0] if errors else ContractError(f"{_label(stage_like, 'head')}: builds for no task of {TASKS}")


def _check_loss(head: Head, backbone: Backbone, images: Tensor, batch: Batch, label: str) -> None:
    backbone.train()
    head.train()
    backbone.zero_grad()
    head.zero_grad()
    losses = head.loss(head(backbone(images)), batch)
    if not isinstance(losses, Mapping) or not isinstance(losses.get("loss"), Tensor):
        raise _fail(label, f"loss() must return a dict with a tensor under 'loss'; got {losses!r}")
    loss = losses["loss"]
    if loss.numel() != 1 or not torch.isfinite(loss).all():
        raise _fail(label, f"loss() gave 'loss' = {loss.detach().flatten()[:4].tolist()}; it must be one finite number")
    if not loss.requires_grad:
        raise _fail(label, "'loss' does not require grad: no gradient can reach the backbone (detached outputs?)")
    loss.backward()
    _check_grads(backbone, "the backbone", label)
    _check_grads(head, "the head", label, required=False)


def _check_grads(module: nn.Module, what: str, label: str, *, required: bool = True) -> None:
    grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
    if any(not bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(label, f"the loss gives NaN or infinite gradients to {what}")
    trainable = any(p.requires_grad for p in module.parameters())
    if required and trainable and not any(bool(g.abs().sum() > 0) for g in grads):
        raise _fail(label, f"no gradient of the loss reaches {what}: the head must not detach the features")


def _eval_outputs(head: Head, backbone: Backbone, images: Tensor) -> Any:
    backbone.eval()
    head.eval()
    with torch.no_grad():
        return head(backbone(images))


def _check_metrics(head: Head, outputs: Any, batch: Batch, class_names: Sequence[str], label: str) -> None:
    metrics = head.make_metrics()
    head.update_metrics(metrics, outputs, batch)
    computed = metrics.compute()
    with tempfile.TemporaryDirectory() as tmp:
        summary = head.summarize(computed, class_names, Path(tmp))
    if not isinstance(summary, Mapping) or not summary:
        raise _fail(label, f"summarize() must return a non-empty {{name: float}} dict; got {summary!r}")
    for key, value in summary.items():
        if not isinstance(key, str) or key.split("/")[0] in ("train", "val", "test"):
            raise _fail(label, f"summarize() key {key!r} must be a str without split prefix (the pipeline adds it)")
        if isinstance(value, bool) or not isinstance(value, (float, int)):
            raise _fail(label, f"summarize()['{key}'] is {type(value).__name__}; values must be Python floats")


def _check_decode(
    head: Head, outputs: Any, batch: Batch, class_names: Sequence[str], task: str, label: str
) -> None:
    predictions = head.decode(outputs, batch, class_names)
    ids = [m["id"] for m in batch["meta"]]
    expected = get_task(task).prediction_type
    if not isinstance(predictions, list) or len(predictions) != len(ids):
        raise _fail(label, f"decode() must return a list of {len(ids)} predictions (one per image)")
    for prediction, sample_id in zip(predictions, ids):
        if not isinstance(prediction, expected):
            raise _fail(label, f"decode() gave a {type(prediction).__name__}; {task} heads give {expected.__name__}")
        if prediction.id != sample_id:
            raise _fail(label, f"decode() gave id {prediction.id!r} for image {sample_id!r}: take ids from batch['meta']")
        try:
            json.dumps(prediction.to_dict())
        except (TypeError, ValueError) as exc:
            raise _fail(label, f"a prediction's to_dict() is not JSON-serializable: {exc}") from exc


# ----------------------------------------------------------------------------
# any kind
# ----------------------------------------------------------------------------

_CHECKS: dict[str, Callable[..., Any]] = {
    "loading": check_loader,
    "normalization": check_normalization,
    "augmentation": check_augmentation,
    "backbone": check_backbone,
    "head": check_head,
}


def check_stage(entry: Any, /, **params: Any) -> Any:
    """Check a registry entry (or a marked factory) with the check of its kind; returns the built stage.

    ``params`` are the stage's parameters (and the kind's check options).
    Example: ``check_stage(manager.registry.get("backbone", "tiny"), width=4)``.
    """
    kind = entry.kind if isinstance(entry, StageEntry) else getattr(getattr(entry, "__vision_pipe_stage__", None), "kind", None)
    if kind not in _CHECKS:
        raise ContractError(f"{entry!r} is neither a registry entry nor a factory marked with @vision_pipe.stage")
    return _CHECKS[kind](entry, **params)


# ----------------------------------------------------------------------------
# Reference stages ("boring" ones: the smallest that keep the contracts)
# ----------------------------------------------------------------------------


class BoringBackbone(Backbone):
    """``stages`` × (3×3 conv, ReLU, 2×2 max pooling): maps ``s1``, ``s2``, ... at strides 2, 4, ...

    Channels are ``width``, 2·width, ...; the pooling indices are provided for
    unpooling heads. Pooling rounds sizes up (``ceil_mode``), as the contract asks.
    """

    provides = frozenset({"pool_indices"})

    def __init__(self, width: int = 4, stages: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.feature_info = []
        channels = 3
        for i in range(stages):
            out = width * 2**i
            self.convs.append(nn.Conv2d(channels, out, 3, padding=1))
            self.feature_info.append(FeatureInfo(name=f"s{i + 1}", channels=out, stride=2 ** (i + 1)))
            channels = out
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True, return_indices=True)

    def forward(self, images: Tensor) -> Features:
        """(B, 3, H, W) float → maps finest first, with their pooling indices."""
        maps: dict[str, Tensor] = {}
        indices: dict[str, tuple[Tensor, tuple[int, int]]] = {}
        x = images
        for conv, info in zip(self.convs, self.feature_info):
            x = torch.relu(conv(x))
            size = (int(x.shape[-2]), int(x.shape[-1]))
            x, idx = self.pool(x)
            maps[info.name] = x
            indices[info.name] = (idx, size)
        return Features(maps=maps, pool_indices=indices)


@stage("backbone", "boring")
def boring_backbone(width: int = 4, stages: int = 4) -> BoringBackbone:
    """The smallest backbone that keeps the contract (vision_pipe.testing's reference)."""
    if width < 1 or stages < 1:
        raise StageError(f"backbone 'boring': width and stages must be ≥ 1, got {width} and {stages}")
    return BoringBackbone(width, stages)


class BoringSource(SampleSource):
    """``num_images`` images (size × size) with one rectangle each, drawn from (seed, index)."""

    def __init__(self, task: str, num_images: int, size: int, seed: int, num_classes: int) -> None:
        self.task, self.num_images, self.size, self.seed = task, num_images, size, seed
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        image = rng.integers(0, 80, (self.size, self.size, 3), dtype=np.uint8)
        cls = index % self.num_classes
        x1, y1 = (int(v) for v in rng.integers(0, self.size // 2, 2))
        x2, y2 = x1 + self.size // 3, y1 + self.size // 3
        image[y1:y2, x1:x2] = 255 if cls == 0 else 160
        sample: Sample = {"image": image, "id": f"boring:{index}"}
        if self.task == "classification":
            sample["label"] = cls
        elif self.task == "segmentation":
            mask = np.zeros((self.size, self.size), np.int64)
            mask[y1:y2, x1:x2] = cls + 1
            sample["mask"] = mask
        else:
            sample["boxes"] = np.array([[x1, y1, x2, y2]], np.float32)
            sample["labels"] = np.array([cls], np.int64)
        return sample

    def fingerprint(self) -> str:
        text = f"boring:{self.task}:{self.num_images}:{self.size}:{self.seed}"
        return hashlib.sha256(text.encode()).hexdigest()


class BoringLoader(Loader):
    """In-memory samples for every task: classes ``a`` and ``b`` (segmentation adds ``background`` first)."""

    tasks = TASKS

    def __init__(self, num_images: int = 8, size: int = 32, seed: int = 0) -> None:
        self.num_images, self.size, self.seed = num_images, size, seed

    def load(self, task: str) -> LoadedData:
        names = ["background", "a", "b"] if task == "segmentation" else ["a", "b"]
        source = BoringSource(task, self.num_images, self.size, self.seed, num_classes=2)
        return LoadedData(class_names=names, splits={"all": source})


@stage("loading", "boring")
def boring_loader(num_images: int = 8, size: int = 32, seed: int = 0) -> BoringLoader:
    """The smallest loader that keeps the contract, for every task (vision_pipe.testing's reference)."""
    return BoringLoader(num_images, size, seed)


class BoringPlugin:
    """A plugin object with the boring stages: ``manager.register(BoringPlugin(), name="boring")``."""

    @hookimpl
    def vision_pipe_stages(self) -> list[Callable[..., Any]]:
        return [boring_loader, boring_backbone]


# ----------------------------------------------------------------------------
# Loading one plugin alone
# ----------------------------------------------------------------------------


def load_plugin(plugin: Any, /) -> PluginManager:
    """A plugin manager holding just ``plugin``: no other entry point is loaded.

    ``plugin`` is a module (or plugin object), a module path (``"my_package.stages"``) or
    the name of an installed entry point of the ``vision_pipe.plugins`` group. Its errors
    raise (:class:`~vision_pipe.errors.PluginError`). Use it in a plugin's own tests::

        manager = load_plugin("my_package.stages")
        check_stage(manager.registry.get("backbone", "tiny"), width=4)
    """
    manager = PluginManager(autoload=False)
    if isinstance(plugin, str):
        if any(ep.name == plugin for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)):
            manager.load_entry_points(names=[plugin], warn=False)
            if plugin in manager.load_errors:
                raise manager.load_errors[plugin]
        else:
            manager.load_module(plugin)
    else:
        manager.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
    return manager
