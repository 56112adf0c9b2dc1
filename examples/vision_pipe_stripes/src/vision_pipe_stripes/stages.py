"""Four vision-pipe stages: the ``stripes`` loader, the ``per_image`` normalization,
the ``tiny_convnet`` backbone and the ``multiscale`` classification head.

The entry point ``stripes`` in pyproject.toml names this module; vision-pipe
calls its ``vision_pipe_stages`` hook and registers what it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vision_pipe import (
    Backbone,
    Batch,
    ClassificationPrediction,
    FeatureInfo,
    Features,
    Head,
    LoadedData,
    Loader,
    Normalizer,
    Sample,
    SampleSource,
    StageContext,
    hookimpl,
    stage,
)

ORIENTATIONS = ("horizontal", "vertical")

# ---------------------------------------------------------------------------
# loading: striped images, labelled by the stripes' orientation
# ---------------------------------------------------------------------------


class StripesSource(SampleSource):
    """``num_images`` striped images, each drawn from ``(seed, index)`` alone when indexed."""

    def __init__(self, num_images: int, size: int, seed: int) -> None:
        self.num_images, self.size, self.seed = num_images, size, seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"stripes: index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, index])
        label = index % len(ORIENTATIONS)
        period = int(rng.integers(4, 9))
        phase = np.arange(self.size) + int(rng.integers(period))
        on = (phase // (period // 2)) % 2 == 1  # (size,) True on a stripe
        grid = np.broadcast_to(on[:, None] if label == 0 else on[None, :], (self.size, self.size))
        colors = rng.integers(0, 256, (2, 3))
        image = colors[grid.astype(int)] + rng.normal(0, 8, (self.size, self.size, 3))
        return {"image": np.clip(image, 0, 255).astype(np.uint8), "label": label, "id": f"stripes:{index}"}

    def fingerprint(self) -> str:
        return hashlib.sha256(f"stripes-v1:{self.num_images}:{self.size}:{self.seed}".encode()).hexdigest()


class StripesLoader(Loader):
    """The loader :func:`stripes` returns: classification only, no split of its own."""

    tasks = ("classification",)

    def __init__(self, num_images: int, size: int, seed: int) -> None:
        self.source = StripesSource(num_images, size, seed)

    def load(self, task: str) -> LoadedData:
        return LoadedData(class_names=list(ORIENTATIONS), splits={"all": self.source})


@stage("loading", "stripes")
def stripes(
    num_images: Annotated[int, Field(ge=1)] = 200,
    size: Annotated[int, Field(ge=8)] = 32,
    seed: int = 0,
) -> StripesLoader:
    """Images of horizontal or vertical stripes (random period, phase and colours), labelled by orientation.

    ``num_images`` images of ``size`` × ``size`` pixels; image ``i`` depends only on ``(seed, i)``.
    """
    return StripesLoader(num_images, size, seed)


# ---------------------------------------------------------------------------
# normalization: each image standardized by its own statistics
# ---------------------------------------------------------------------------


class PerImageStandardize(Normalizer):
    """Each image minus its own per-channel mean, divided by its own per-channel std.

    Nothing is learnt from the training images, so ``needs_fit`` is False: vision-pipe
    never calls ``fit``, caches nothing, and the ``state_dict`` is empty (a normalizer
    that fits statistics keeps them in buffers, so they travel in checkpoints).
    """

    needs_fit = False

    def __init__(self, min_std: float) -> None:
        super().__init__()
        self.min_std = min_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 pixel values in [0, 255] → (B, 3, H, W) float32, each channel
        of each image with mean 0 and std 1 (std floored at ``min_std`` pixel values)."""
        mean = images.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
        std = images.std(dim=(2, 3), keepdim=True, correction=0).clamp_min(self.min_std)  # (B, 3, 1, 1)
        return (images - mean) / std

    def extra_repr(self) -> str:
        return f"min_std={self.min_std}"


@stage("normalization", "per_image")
def per_image(min_std: Annotated[float, Field(gt=0)] = 1.0) -> PerImageStandardize:
    """Standardize each image with its own per-channel mean and std (nothing fitted on the training set).

    ``min_std``: least std divided by, in pixel values, so a flat channel becomes zeros, not NaN.
    """
    return PerImageStandardize(min_std)


# ---------------------------------------------------------------------------
# backbone: two strided convolution blocks
# ---------------------------------------------------------------------------


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution with stride 2 (halves the size, rounding up), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyConvNet(Backbone):
    """(B, 3, H, W) float → maps ``c1`` (width channels, stride 2) and ``c2`` (2·width, stride 4)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c1 = _block(3, width)
        self.c2 = _block(width, 2 * width)
        self.feature_info = [FeatureInfo("c1", width, 2), FeatureInfo("c2", 2 * width, 4)]

    def forward(self, images: torch.Tensor) -> Features:
        c1 = self.c1(images)
        return Features(maps={"c1": c1, "c2": self.c2(c1)})


@stage("backbone", "tiny_convnet")
def tiny_convnet(width: Annotated[int, Field(ge=1)] = 16) -> TinyConvNet:
    """Two 3×3 stride-2 conv blocks with batch norm: maps ``c1`` (stride 2) and ``c2`` (stride 4).

    ``width``: channels of ``c1``; ``c2`` has twice as many.
    """
    return TinyConvNet(width)


# ---------------------------------------------------------------------------
# head: a classifier of every backbone map (metrics, plots and drawing: the task's)
# ---------------------------------------------------------------------------


class MultiScaleHead(Head):
    """Pools every backbone map, concatenates them and classifies: logits (B, num_classes).

    Only ``forward``, ``loss`` and ``decode`` are here; accuracy, the confusion
    matrix and the drawn predictions come from the classification task.
    """

    task = "classification"

    def __init__(
        self, maps: Sequence[FeatureInfo], num_classes: int, pooling: Literal["avg", "max"], dropout: float
    ) -> None:
        super().__init__()
        self.names = [info.name for info in maps]
        self.num_classes = num_classes  # the task's metrics need it
        self.pooling = pooling
        channels = sum(info.channels for info in maps)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, features: Features) -> torch.Tensor:
        """Maps (B, C_i, h_i, w_i) → pooled (B, C_i) each → concatenated (B, ΣC_i) → logits (B, num_classes)."""
        maps = [features.maps[name] for name in self.names]
        pooled = [m.amax(dim=(2, 3)) if self.pooling == "max" else m.mean(dim=(2, 3)) for m in maps]
        return self.classifier(torch.cat(pooled, dim=1))

    def loss(self, outputs: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Cross-entropy of logits (B, num_classes) against ``batch["label"]`` (B,) int64."""
        return {"loss": F.cross_entropy(outputs, batch["label"])}

    def decode(self, outputs: torch.Tensor, batch: Batch, class_names: Sequence[str]) -> list[ClassificationPrediction]:
        """Logits (B, num_classes) → one prediction per image (softmax scores), ids from ``batch["meta"]``."""
        probs = outputs.detach().float().softmax(dim=1).cpu().numpy()  # (B, num_classes)
        predictions = []
        for meta, scores in zip(batch["meta"], probs, strict=True):
            label = int(scores.argmax())
            predictions.append(
                ClassificationPrediction(
                    id=str(meta["id"]),
                    label=label,
                    class_name=class_names[label],
                    score=float(scores[label]),
                    scores=scores,
                )
            )
        return predictions


@stage("head", "multiscale")
def multiscale(
    context: StageContext,
    pooling: Literal["avg", "max"] = "avg",
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> MultiScaleHead:
    """Classify from every backbone map at once: each pooled globally, concatenated, one linear layer.

    ``pooling``: global ``avg`` or ``max`` pooling of each map; ``dropout``: before the linear layer.
    """
    return MultiScaleHead(context.feature_info or (), context.num_classes, pooling, dropout)


# ---------------------------------------------------------------------------
# the hook vision-pipe calls when it loads this plugin
# ---------------------------------------------------------------------------


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [stripes, per_image, tiny_convnet, multiscale]
