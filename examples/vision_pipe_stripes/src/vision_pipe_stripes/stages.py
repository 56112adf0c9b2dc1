"""Two vision-pipe stages: the ``stripes`` loader and the ``tiny_convnet`` backbone.

The entry point ``stripes`` in pyproject.toml names this module; vision-pipe
calls its ``vision_pipe_stages`` hook and registers what it returns.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from vision_pipe import (
    Backbone,
    FeatureInfo,
    Features,
    LoadedData,
    Loader,
    Sample,
    SampleSource,
    StageError,
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
def stripes(num_images: int = 200, size: int = 32, seed: int = 0) -> StripesLoader:
    """Images of horizontal or vertical stripes (random period, phase and colours), labelled by orientation.

    ``num_images`` images of ``size`` × ``size`` pixels; image ``i`` depends only on ``(seed, i)``.
    """
    if num_images < 1 or size < 8:
        raise StageError(f"stripes: need num_images ≥ 1 and size ≥ 8, got {num_images} and {size}")
    return StripesLoader(num_images, size, seed)


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
def tiny_convnet(width: int = 16) -> TinyConvNet:
    """Two 3×3 stride-2 conv blocks with batch norm: maps ``c1`` (stride 2) and ``c2`` (stride 4).

    ``width``: channels of ``c1``; ``c2`` has twice as many.
    """
    if width < 1:
        raise StageError(f"tiny_convnet: width must be ≥ 1, got {width}")
    return TinyConvNet(width)


# ---------------------------------------------------------------------------
# the hook vision-pipe calls when it loads this plugin
# ---------------------------------------------------------------------------


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [stripes, tiny_convnet]
