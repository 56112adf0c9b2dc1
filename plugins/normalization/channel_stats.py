"""The built-in ``channel_stats`` normalization: per-channel mean and std.

``(x - mean[c]) / std[c]`` with statistics either given in the YAML (e.g.
ImageNet's, in pixel units) or fitted on the training images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from vision_pipe import InputStats, Normalizer, StageError, hookimpl, stage

#: A fitted std below this (in pixel units) means a constant channel; dividing by it would blow up.
_MIN_STD = 1e-3
_NAME = "normalization stage 'channel_stats'"


#: Three per-channel values (R, G, B) in pixel units.
MeanRGB = Annotated[list[Annotated[float, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
StdRGB = Annotated[list[Annotated[float, Field(gt=0, le=255)]], Field(min_length=3, max_length=3)]


class ChannelStats(Normalizer):
    """Normalizes each channel with one mean and one std: ``(x - mean[c]) / std[c]``.

    Buffers (saved in ``state_dict``), float32, pixel units, RGB order:
    ``mean`` (3,) and ``std`` (3,). Fitted, they are the mean and population
    std of all pixel values of all training images, per channel. Given (both
    ``mean`` and ``std``), :attr:`needs_fit` is False and :meth:`fit` does
    nothing. Before :meth:`fit`, ``mean`` is zeros and ``std`` ones.
    """

    def __init__(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *, source: str = "the YAML"
    ) -> None:
        super().__init__()
        self.source = source
        if (mean is None) != (std is None):
            missing = "std" if std is None else "mean"
            raise StageError(
                f"{_NAME}: '{missing}' is missing; give both 'mean' and 'std' (3 values each, pixel units "
                "in [0, 255]), or neither to fit them on the training images"
            )
        self.needs_fit = mean is None  # type: ignore[misc]  # an instance attribute, per configuration
        self.register_buffer("mean", torch.zeros(3, dtype=torch.float32))
        self.register_buffer("std", torch.ones(3, dtype=torch.float32))
        self.mean: Tensor
        self.std: Tensor
        if mean is not None and std is not None:
            given_mean = [float(v) for v in mean]
            given_std = [float(v) for v in std]
            if max(given_mean) <= 1 and max(given_std) <= 1:
                raise StageError(
                    f"{_NAME}: mean {given_mean} and std {given_std} look like statistics of images in [0, 1]; "
                    "give them in pixel units [0, 255] (multiply by 255), e.g. ImageNet's "
                    "mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375]"
                )
            self.mean.copy_(torch.tensor(given_mean))
            self.std.copy_(torch.tensor(given_std))

    def fit(self, images: Iterable[np.ndarray]) -> None:
        """Fit ``mean`` and ``std`` in one streaming pass over (H, W, 3) uint8 RGB images (any H, W).

        Accumulates the per-channel sum and sum of squares in float64 (memory:
        one image as float64). Does nothing when the statistics were given.
        """
        if not self.needs_fit:
            return
        total = np.zeros(3, dtype=np.float64)
        total_sq = np.zeros(3, dtype=np.float64)
        pixels = 0
        for index, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3:
                raise StageError(
                    f"{_NAME}: training image {index} has shape {image.shape}, expected (height, width, 3) RGB"
                )
            if image.dtype != np.uint8:
                raise StageError(
                    f"{_NAME}: training image {index} has dtype {image.dtype}, expected uint8 RGB in [0, 255]"
                )
            flat = image.reshape(-1, 3).astype(np.float64)  # (P, 3); per-image sums of integers are exact
            total += flat.sum(axis=0)
            total_sq += np.einsum("pc,pc->c", flat, flat)
            pixels += flat.shape[0]
        if pixels == 0:
            raise StageError(f"{_NAME}: no training images (or only empty ones) to fit the channel statistics on")

        mean = total / pixels
        std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0))  # population std
        if (std < _MIN_STD).any():
            channel = "RGB"[int(np.argmin(std))]
            raise StageError(
                f"{_NAME}: channel {channel} is constant over the training images (std {std.min():.3g} pixel "
                "values), so it cannot be divided by its std; give 'mean' and 'std' explicitly"
            )
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.std.copy_(torch.from_numpy(std.astype(np.float32)))

    @property
    def input_stats(self) -> InputStats | None:
        """The given statistics (None while they are to be fitted)."""
        if self.needs_fit:
            return None
        m, d = self.mean.tolist(), self.std.tolist()
        return InputStats((m[0], m[1], m[2]), (d[0], d[1], d[2]), self.source)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float32 in [0, 255] → (images - mean[c]) / std[c], (B, 3, H, W) float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise StageError(f"{_NAME}: got a batch of shape {tuple(images.shape)}, expected (B, 3, H, W)")
        return (images - self.mean[:, None, None]) / self.std[:, None, None]

    def extra_repr(self) -> str:
        return f"needs_fit={self.needs_fit}"


@stage("normalization", "channel_stats")
def channel_stats(mean: MeanRGB | None = None, std: StdRGB | None = None) -> ChannelStats:
    """Subtract a per-channel mean and divide by a per-channel std, given or fitted on the training images.

    ``mean``, ``std``: 3 values each (R, G, B) in pixel units [0, 255], e.g.
    ImageNet's ``[123.675, 116.28, 103.53]`` and ``[58.395, 57.12, 57.375]``.
    Leave both out to fit them (population std over all training pixels).
    """
    return ChannelStats(mean, std)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [channel_stats]
