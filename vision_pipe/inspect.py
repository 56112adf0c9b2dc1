"""Looking inside a fitted network: its first-layer filters, its feature maps, and class saliency (Grad-CAM).

Owns what ``vision-pipe inspect`` writes, for any backbone (built-in or plugin) through the backbone's
``feature_info`` contract and the module's public parts only:

- :func:`first_conv` / :func:`filter_grid`: the first ``nn.Conv2d`` (in module order) that takes the image's
  3 channels, its filters as an RGB grid, each filter scaled to [0, 1] on its own and enlarged (nearest
  neighbour) so that small kernels are visible, as in AlexNet's figure of its first layer;
  :func:`save_filter_grid` writes it (also at the end of every fit: ``plots/filters.png``, from
  :class:`vision_pipe.runs.RunArtifacts`);
- :func:`feature_map_grid`: the first channels of one backbone map, each scaled to [0, 1] on its own;
- :func:`grad_cam`: Grad-CAM on the backbone's last (coarsest) map — the gradient of a class's score w.r.t.
  that map, averaged over its height and width, weighs the map's channels; the ReLU of the weighted sum,
  divided by its maximum, is the map in [0, 1]. The class score is the task's
  (:meth:`vision_pipe.tasks.Task.class_scores`: the logit for classification; for segmentation the class's
  logits over the pixels predicted as it); tasks without one (detection) get no saliency;
- :func:`inspect_model`: all of it for a :class:`~vision_pipe.Pipeline` and some images (read and resized
  as :mod:`vision_pipe.predict` does), PNGs and ``inspect.json`` (every PNG with what it shows) in a folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.drawing import upscale
from vision_pipe.errors import ConfigError, StageError, did_you_mean
from vision_pipe.io import atomic_write_text, write_png
from vision_pipe.module import PipelineModule, normalize_images
from vision_pipe.predict import input_batches, predict_device
from vision_pipe.render import prepare_out_dir, unique_stem
from vision_pipe.tasks import get_task

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline

#: The image channels the first convolution takes (pipelines feed (B, 3, H, W) RGB images).
IMAGE_CHANNELS = 3
#: Each filter is enlarged by a whole factor to at least this many pixels on its longer side.
FILTER_TILE = 24
#: Each feature-map channel is enlarged by a whole factor to at least this many pixels on its longer side.
MAP_TILE = 48
#: White pixels between (and around) the tiles of a grid.
GAP = 2
#: Channels of each feature map drawn by default.
DEFAULT_CHANNELS = 16
#: The heat map's weight in a saliency overlay (the image's is 1 - this).
HEAT_ALPHA = 0.45


# ----------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------


def scale_each(values: np.ndarray) -> np.ndarray:
    """(N, ...) float → each of the N items min-max scaled to [0, 1] on its own (float32);
    an item whose values are all equal becomes 0.5."""
    flat = values.reshape(len(values), -1).astype(np.float64)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1.0), 0.5)
    return scaled.reshape(values.shape).astype(np.float32)


def tile_grid(tiles: np.ndarray, min_tile: int) -> np.ndarray:
    """(N, h, w) or (N, h, w, 3) values in [0, 1] → one uint8 image of ``ceil(sqrt(N))`` columns and as many
    rows as needed: each tile enlarged ``f = ceil(min_tile / max(h, w))`` times (nearest neighbour), ``GAP``
    white pixels between and around them. Size: ``rows·h·f + (rows + 1)·GAP`` by ``cols·w·f + (cols + 1)·GAP``.
    """
    n, h, w = tiles.shape[:3]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    f = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * f, w * f
    grid = np.full((rows * th + (rows + 1) * GAP, cols * tw + (cols + 1) * GAP, *tiles.shape[3:]), 255, np.uint8)
    pixels = np.round(np.clip(tiles, 0.0, 1.0) * 255).astype(np.uint8)
    for i, tile in enumerate(pixels):
        r, c = divmod(i, cols)
        y, x = GAP + r * (th + GAP), GAP + c * (tw + GAP)
        grid[y : y + th, x : x + tw] = np.repeat(np.repeat(tile, f, axis=0), f, axis=1)
    return grid


# ----------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------


def first_conv(backbone: nn.Module) -> tuple[str, nn.Conv2d]:
    """The backbone's first ``nn.Conv2d`` in module order that takes the image's 3 channels, with its name
    (e.g. ``"stage1.0.conv"``); a :class:`StageError` when it has none."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == IMAGE_CHANNELS:
            return name, module
    raise StageError(
        f"backbone {type(backbone).__name__}: no nn.Conv2d takes the image's {IMAGE_CHANNELS} channels, "
        "so there are no first-layer filters to draw"
    )


def filter_grid(conv: nn.Conv2d) -> np.ndarray:
    """The filters of ``conv`` (weight (O, 3, kh, kw)) as one (H, W, 3) uint8 RGB grid (:func:`tile_grid`,
    tiles of at least ``FILTER_TILE`` px): input channel 0, 1, 2 → red, green, blue, each filter scaled to
    [0, 1] on its own."""
    weight = conv.weight.detach().float().cpu().numpy()  # (O, 3, kh, kw)
    if weight.ndim != 4 or weight.shape[1] != IMAGE_CHANNELS:
        raise StageError(f"{conv}: expected a weight of shape (O, {IMAGE_CHANNELS}, kh, kw), got {weight.shape}")
    return tile_grid(scale_each(weight.transpose(0, 2, 3, 1)), FILTER_TILE)


def save_filter_grid(backbone: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write :func:`filter_grid` of the backbone's :func:`first_conv` to ``path`` (PNG, atomically); return its
    ``inspect.json`` record (``layer``, ``filters``, ``kernel``)."""
    name, conv = first_conv(backbone)
    png = write_png(Path(path), cv2.cvtColor(filter_grid(conv), cv2.COLOR_RGB2BGR))
    kernel = [int(k) for k in conv.kernel_size]
    return {"file": png.name, "shows": "filters", "layer": name, "filters": int(conv.out_channels), "kernel": kernel}


# ----------------------------------------------------------------------------
# Feature maps and saliency
# ----------------------------------------------------------------------------


def feature_map_grid(feature_map: Tensor, channels: int = DEFAULT_CHANNELS) -> np.ndarray:
    """One image's map (C, h, w) → a grey (H, W) uint8 grid of its first ``min(channels, C)`` channels, each
    scaled to [0, 1] on its own (:func:`tile_grid`, tiles of at least ``MAP_TILE`` px)."""
    values = feature_map[:channels].detach().float().cpu().numpy()
    return tile_grid(scale_each(values), MAP_TILE)


@dataclass
class Saliency:
    """Grad-CAM of a batch: ``maps`` (B, h, w) in [0, 1] at the last backbone map's size; per image the class
    it explains, that class's score (the task's class score) and the predicted (highest-scoring) class."""

    maps: Tensor
    classes: list[int]
    scores: list[float]
    predicted: list[int]


def grad_cam(module: PipelineModule, images: Tensor, class_index: int | None = None) -> Saliency:
    """Grad-CAM (Selvaraju et al. 2017) of ``images`` (B, 3, H, W) uint8 on the backbone's last map A (B, K, h, w):
    ``relu(Σ_k mean_hw(∂y_c/∂A_k) · A_k)`` divided by its maximum per image (all zeros when that is 0), where y_c
    is the task's score of class c (:meth:`~vision_pipe.tasks.Task.class_scores`): ``class_index``, or each
    image's highest-scoring class. A :class:`ConfigError` for a task without class scores."""
    task = get_task(module.head.task)
    last = module.backbone.feature_info[-1].name
    was_training = module.training
    module.eval()
    try:
        with torch.enable_grad():
            features = module.backbone(normalize_images(images, module.normalizer, module.channels_last))
            leaf = features.maps[last].detach().float().requires_grad_(True)
            outputs = module.head(dataclasses.replace(features, maps={**features.maps, last: leaf}))
            scores = task.class_scores(module.head.evaluation_outputs(outputs, {"image": images}))
            if scores is None:
                raise ConfigError(
                    f"saliency (Grad-CAM) needs one score per class and image; the {task.name} task has none "
                    "(it is for classification and segmentation)"
                )
            predicted = scores.detach().argmax(dim=1)
            target = predicted if class_index is None else torch.full_like(predicted, class_index)
            chosen = scores.gather(1, target[:, None])[:, 0]  # (B,)
            (grad,) = torch.autograd.grad(chosen.sum(), leaf, allow_unused=True)
    finally:
        module.train(was_training)
    grad = torch.zeros_like(leaf) if grad is None else grad  # the head does not use the last map
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * leaf.detach()).sum(dim=1))  # (B, h, w)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return Saliency(cam.cpu(), target.tolist(), chosen.detach().cpu().tolist(), predicted.tolist())


def saliency_at(cam: Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map in [0, 1] → (H, W) float32 in [0, 1] at ``size`` (H, W), bilinear."""
    values = np.asarray(cam.numpy() if isinstance(cam, Tensor) else cam, np.float32)
    return np.clip(cv2.resize(values, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def overlay_heat(image: np.ndarray, cam: Tensor | np.ndarray, min_side: int = 128) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB, enlarged (nearest neighbour) to at least ``min_side`` px, with ``cam``
    (h, w) in [0, 1] upsampled to it and blended on top as OpenCV's JET colour map (red = salient)."""
    big = np.ascontiguousarray(upscale(image, min_side)[0])
    heat = np.round(saliency_at(cam, big.shape[:2]) * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(big, 1.0 - HEAT_ALPHA, colours, HEAT_ALPHA, 0.0)


# ----------------------------------------------------------------------------
# The whole inspection
# ----------------------------------------------------------------------------


@dataclass
class InspectReport:
    """What :func:`inspect_model` wrote into ``out``: one record per PNG (``file`` relative to ``out``,
    ``shows`` — ``filters``, ``feature_map`` or ``saliency`` — and what it shows), and notes (e.g. why there is
    no saliency)."""

    out: Path
    files: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "notes": self.notes}


def class_index_of(class_name: str, class_names: Sequence[str]) -> int:
    """The index of ``class_name`` in ``class_names``; a :class:`ConfigError` listing them when unknown."""
    if class_name in class_names:
        return list(class_names).index(class_name)
    raise ConfigError(
        f"--class {class_name!r}: not a class of this pipeline; its classes are {', '.join(class_names)}."
        f"{did_you_mean(class_name, class_names)}"
    )


def inspect_model(
    pipe: Pipeline,
    images: Sequence[str | Path | np.ndarray] = (),
    *,
    out: str | Path,
    channels: int = DEFAULT_CHANNELS,
    class_name: str | None = None,
    saliency: bool = True,
    batch_size: int | None = None,
    device: str | None = None,
) -> InspectReport:
    """Write into ``out``: ``filters.png`` (:func:`filter_grid`); per image ``<stem>_<map>.png`` for every
    backbone map in ``feature_info`` (:func:`feature_map_grid`, the first ``channels``) and
    ``<stem>_gradcam.png`` (:func:`grad_cam` of ``class_name``, default the predicted class, overlaid on the
    image; skipped with a note for a task without class scores, or when ``saliency`` is false); and
    ``inspect.json`` listing every PNG. Images (paths or (H, W, 3) uint8 RGB arrays) are read and resized as
    :meth:`~vision_pipe.Pipeline.predict` does."""
    if channels < 1:
        raise ConfigError(f"--channels {channels}: draw at least 1 channel per map")
    module = pipe.module
    names = list(pipe.class_names)
    class_index = class_index_of(class_name, names) if class_name is not None else None
    task = get_task(module.head.task)
    if class_index is not None and not task.has_class_scores:
        raise ConfigError(f"--class: saliency is for classification and segmentation, not {task.name}")
    out_dir = prepare_out_dir(out)
    report = InspectReport(out_dir)
    report.files.append(save_filter_grid(module.backbone, out_dir / "filters.png"))
    draw_saliency = saliency and task.has_class_scores
    if saliency and not draw_saliency:
        report.notes.append(f"no saliency: Grad-CAM is for classification and segmentation, not {task.name}")
    where = predict_device(device, pipe.config.trainer.get("accelerator", "auto"))
    module.to(where)
    size = pipe.config.data.input_size
    used: set[str] = set()
    was_training = module.training
    module.eval()
    try:
        for chunk, batch in input_batches(
            list(images), (int(size[0]), int(size[1])), batch_size or pipe.config.data.batch_size
        ):
            pixels = batch["image"].to(where)
            with torch.inference_mode():
                maps = module.backbone(normalize_images(pixels, module.normalizer, module.channels_last)).maps
            cams = grad_cam(module, pixels, class_index) if draw_saliency else None
            for i, sample in enumerate(chunk):
                image_id = str(sample["id"])
                stem = out_dir / unique_stem(_stem(image_id), used)
                fmaps = {info.name: maps[info.name][i] for info in module.backbone.feature_info}
                report.files += _feature_map_pngs(stem, image_id, fmaps, module.backbone.feature_info, channels)
                if cams is not None:
                    report.files.append(_saliency_png(stem, image_id, sample["image"], cams, i, names, fmaps))
    finally:
        module.train(was_training)
    atomic_write_text(out_dir / "inspect.json", json.dumps(report.to_dict(), indent=2))
    return report


def _feature_map_pngs(
    stem: Path, image_id: str, maps: dict[str, Tensor], feature_info: Sequence[Any], channels: int
) -> list[dict[str, Any]]:
    """``<stem>_<map>.png`` (:func:`feature_map_grid`) for each of one image's maps (C, h, w); their records."""
    records = []
    for info in feature_info:
        shown = min(channels, info.channels)
        png = write_png(stem.with_name(f"{stem.name}_{info.name}.png"), feature_map_grid(maps[info.name], shown))
        records.append(
            {
                "file": png.name,
                "shows": "feature_map",
                "image": image_id,
                "layer": info.name,
                "channels": list(range(shown)),
                "of": info.channels,
                "stride": info.stride,
            }
        )
    return records


def _saliency_png(
    stem: Path, image_id: str, image: np.ndarray, cams: Saliency, i: int, names: Sequence[str], maps: dict[str, Tensor]
) -> dict[str, Any]:
    """``<stem>_gradcam.png``: image ``i``'s Grad-CAM drawn on ``image`` (:func:`overlay_heat`); its record."""
    overlay = overlay_heat(image, cams.maps[i])
    png = write_png(stem.with_name(f"{stem.name}_gradcam.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    return {
        "file": png.name,
        "shows": "saliency",
        "image": image_id,
        "layer": list(maps)[-1],
        "class": names[cams.classes[i]],
        "score": cams.scores[i],
        "predicted": names[cams.predicted[i]],
    }


def _stem(image_id: str) -> str:
    """A file stem for an image id: its path's stem, ``array_<i>`` for ``array:<i>``."""
    return image_id.replace(":", "_") if image_id.startswith("array:") else Path(image_id).stem


__all__ = [
    "DEFAULT_CHANNELS",
    "InspectReport",
    "Saliency",
    "class_index_of",
    "feature_map_grid",
    "filter_grid",
    "first_conv",
    "grad_cam",
    "inspect_model",
    "overlay_heat",
    "save_filter_grid",
    "scale_each",
    "tile_grid",
]
