"""The built-in ``mean_image`` normalization: AlexNet's mean-image subtraction.

The mean of the training images is taken per pixel position and channel, so
the stage subtracts a whole (3, H, W) image rather than three numbers
(Krizhevsky et al., 2012, section 2: "subtracting the mean activity over the
training set from each pixel"). Optionally the result is divided by a
per-channel standard deviation or by 255.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor

from vision_pipe import DataError, Normalizer, StageContext, StageError, hookimpl, stage, write_png

DivideBy = Literal["none", "std", "255"]
#: A fitted std below this (in pixel units) means a constant channel; dividing by it would blow up.
_MIN_STD = 1e-3
#: ``save_artifacts`` upscales the mean image so that its short side has at least this many pixels.
_MIN_PICTURE_SIDE = 128


class MeanImage(Normalizer):
    """Subtracts the per-pixel mean of the training images, then divides by a constant.

    Buffers (saved in ``state_dict``), float32, pixel units, RGB channel order:

    - ``mean`` (3, H, W): the mean training image, values in [0, 255].
    - ``std`` (3,): per channel c, the population std of the pixel values around
      the mean image, pooled over all images n and positions (h, w)::

          std[c] = sqrt( 1/(N·H·W) · Σ_{n,h,w} (x[n,c,h,w] - mean[c,h,w])² )

      i.e. the root of the per-position variances averaged over positions.

    ``divide_by``: ``"none"`` only subtracts (pure AlexNet), ``"std"`` divides
    by ``std[c]``, ``"255"`` divides by 255. Before :meth:`fit`, ``mean`` is
    zeros and ``std`` ones.
    """

    def __init__(self, input_size: tuple[int, int], divide_by: DivideBy = "std") -> None:
        super().__init__()
        height, width = (int(s) for s in input_size)
        self.input_size = (height, width)
        self.divide_by = divide_by
        self.register_buffer("mean", torch.zeros(3, height, width, dtype=torch.float32))
        self.register_buffer("std", torch.ones(3, dtype=torch.float32))
        self.mean: Tensor
        self.std: Tensor

    def fit(self, images: Iterable[np.ndarray]) -> None:
        """Fit ``mean`` and ``std`` in one streaming pass over (H, W, 3) uint8 RGB images.

        Memory: three (H, W, 3) float64 arrays (sum, sum of squares, one
        squared image), whatever the number of images. The sums of uint8
        values are exact in float64 (up to ~10¹¹ images), so the mean is exact
        up to the final division.
        """
        height, width = self.input_size
        expected = (height, width, 3)
        total = np.zeros(expected, dtype=np.float64)
        total_sq = np.zeros(expected, dtype=np.float64)
        square = np.empty(expected, dtype=np.float64)
        count = 0
        for index, image in enumerate(images):
            image = np.asarray(image)
            if image.shape != expected:
                raise StageError(
                    f"normalization stage 'mean_image': training image {index} has shape {image.shape}, "
                    f"expected {expected} (height, width, RGB) for the input size {self.input_size}; "
                    "images must be resized to the input size before the mean image is fitted"
                )
            if image.dtype != np.uint8:
                raise StageError(
                    f"normalization stage 'mean_image': training image {index} has dtype {image.dtype}, "
                    "expected uint8 RGB in [0, 255]"
                )
            np.add(total, image, out=total)  # uint8 is cast chunk by chunk, no full-size temporary
            np.multiply(image, image, out=square, dtype=np.float64)
            np.add(total_sq, square, out=total_sq)
            count += 1
        if count == 0:
            raise StageError("normalization stage 'mean_image': no training images to fit the mean image on")

        # In place, so that memory stays at three (H, W, 3) float64 arrays.
        mean = np.divide(total, count, out=total)  # (H, W, 3)
        variance = np.divide(total_sq, count, out=total_sq)
        variance -= np.multiply(mean, mean, out=square)
        np.maximum(variance, 0.0, out=variance)  # per position, population
        std = np.sqrt(variance.mean(axis=(0, 1)))  # (3,)
        if self.divide_by == "std" and (std < _MIN_STD).any():
            channel = "RGB"[int(np.argmin(std))]
            raise StageError(
                f"normalization stage 'mean_image': channel {channel} of the {count} training images does not "
                f"vary around the mean image (std {std.min():.3g} pixel values), so it cannot be divided by "
                "its std; use divide_by: none or '255'"
            )
        self.mean.copy_(torch.from_numpy(mean.transpose(2, 0, 1).astype(np.float32)))
        self.std.copy_(torch.from_numpy(std.astype(np.float32)))

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float32 in [0, 255] → (images - mean) / divisor, (B, 3, H, W) float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise StageError(
                f"normalization stage 'mean_image': got a batch of shape {tuple(images.shape)}, "
                f"expected (B, 3, {self.input_size[0]}, {self.input_size[1]})"
            )
        if tuple(images.shape[-2:]) != self.input_size:
            raise StageError(
                f"normalization stage 'mean_image': the mean image is {self.input_size[0]}×{self.input_size[1]} "
                f"(height×width) but the batch's images are {images.shape[-2]}×{images.shape[-1]}; "
                "augmentations must keep the input size (resize/crop back to it)"
            )
        out = images - self.mean
        if self.divide_by == "std":
            out = out / self.std[:, None, None]
        elif self.divide_by == "255":
            out = out / 255.0
        return out

    def save_artifacts(self, plots_dir: Path) -> list[Path]:
        """Write ``mean_image.png``: the mean image as uint8, upscaled (nearest neighbour) to be visible."""
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        rgb = np.rint(self.mean.detach().cpu().numpy().transpose(1, 2, 0)).clip(0, 255).astype(np.uint8)
        factor = max(1, math.ceil(_MIN_PICTURE_SIDE / min(self.input_size)))
        rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
        path = plots_dir / "mean_image.png"
        try:  # through a Python file (cv2.imwrite cannot write every path, e.g. names that are not UTF-8)
            write_png(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        except (OSError, DataError) as exc:
            raise StageError(f"normalization stage 'mean_image': could not write {path}: {exc}") from exc
        return [path]

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, divide_by={self.divide_by!r}"


@stage("normalization", "mean_image")
def mean_image(context: StageContext, divide_by: DivideBy = "std") -> MeanImage:
    """Subtract the per-pixel mean training image (AlexNet), then divide by the per-channel std, 255 or nothing.

    ``divide_by``: ``"std"`` (default) divides by the per-channel std of the
    pixel values around the mean image; ``"255"`` by 255; ``"none"`` only
    subtracts. Fitted in one streaming pass over the training images; the
    mean image is saved as ``mean_image.png``.
    """
    return MeanImage(context.input_size, divide_by)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [mean_image]
