"""The model-side checks of the kit: backbone and head, and :func:`make_batch`.

Owns :func:`check_backbone` (``feature_info``, the maps' names, channels and
strides also at odd input sizes, pooling indices, gradients),
:func:`check_head` (loss and its gradients, metrics and summaries, decoded
predictions of the task's type) and :func:`make_batch`, the random collated
batch a head is checked on.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.errors import ContractError
from vision_pipe.io import SPLITS
from vision_pipe.stages import Backbone, Batch, FeatureInfo, Features, Head, StageContext
from vision_pipe.tasks import TASKS, get_task
from vision_pipe.testing._boring import BoringBackbone
from vision_pipe.testing._build import KIT_CLASSES, _build, _context, _fail, _label

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
        raise _fail(
            label,
            f"forward() returned maps {list(features.maps)}; feature_info declares {[f.name for f in infos]} (same order)",
        )
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
            raise _fail(
                label, f"pool_indices['{name}'] names no map; keys are the names of the maps the pooling produced"
            )
        indices, input_size = entry
        fmap = features.maps[name]
        if indices.shape != fmap.shape or indices.dtype != torch.int64:
            raise _fail(
                label,
                f"pool_indices['{name}'] is {indices.dtype} {tuple(indices.shape)}; expected int64 {tuple(fmap.shape)}",
            )
        if len(input_size) != 2 or any(s < m for s, m in zip(input_size, fmap.shape[-2:], strict=True)):
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
        if not isinstance(key, str) or key.split("/")[0] in SPLITS:
            raise _fail(label, f"summarize() key {key!r} must be a str without split prefix (the pipeline adds it)")
        if isinstance(value, bool) or not isinstance(value, (float, int)):
            raise _fail(label, f"summarize()['{key}'] is {type(value).__name__}; values must be Python floats")


def _check_decode(head: Head, outputs: Any, batch: Batch, class_names: Sequence[str], task: str, label: str) -> None:
    predictions = head.decode(outputs, batch, class_names)
    ids = [m["id"] for m in batch["meta"]]
    expected = get_task(task).prediction_type
    if not isinstance(predictions, list) or len(predictions) != len(ids):
        raise _fail(label, f"decode() must return a list of {len(ids)} predictions (one per image)")
    for prediction, sample_id in zip(predictions, ids, strict=True):
        if not isinstance(prediction, expected):
            raise _fail(label, f"decode() gave a {type(prediction).__name__}; {task} heads give {expected.__name__}")
        if prediction.id != sample_id:
            raise _fail(
                label, f"decode() gave id {prediction.id!r} for image {sample_id!r}: take ids from batch['meta']"
            )
        try:
            json.dumps(prediction.to_dict())
        except (TypeError, ValueError) as exc:
            raise _fail(label, f"a prediction's to_dict() is not JSON-serializable: {exc}") from exc
