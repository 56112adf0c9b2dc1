"""The built-in reconstruction head: a convolutional decoder that gives back the input image (an autoencoder).

The decoder goes from the backbone's coarsest map back to the input size one
factor of two at a time with the FCN head's upsampling steps
(:func:`~vision_pipe_plugins.head.fcn.up_steps`: ``transposed``, ``unpool`` or
``bilinear``), each followed by a 3×3 conv + ReLU, and ends with a 3×3 conv to
3 channels and a sigmoid: the reconstruction is (B, 3, H, W) **pixels in [0, 1]**.

Loss: mean squared error (``loss: mse``) or mean absolute error (``loss: l1``)
against the *clean* input pixels ``batch["image"] / 255`` in [0, 1] — the same
scale whatever the normalization stage does, so the PSNR of the reconstruction
task is comparable across pipelines. Denoising: ``noise: {gaussian: σ}`` adds
N(0, σ²) noise in [0, 1] units (σ × 255 grey levels, clipped to [0, 255]),
``noise: {mask: p}`` sets each pixel (all three channels) to 0 with probability p,
``noise: {block: f}`` sets one random rectangle per image covering a fraction f of it
(sides √f × H and √f × W, rounded) to 0 — inpainting, as in context encoders, which needs
the content around the hole to fill it; any of them may be given (applied in that order).
The corruption applies to the model's input in training steps only
(:meth:`~vision_pipe.Head.training_inputs`), never to the target nor to validation,
test or prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    FeatureInfo,
    Features,
    Head,
    ReconstructionPrediction,
    StageContext,
    StageError,
    hookimpl,
    stage,
)

from .fcn import decoder_strides, fit_size, image_size, require_pool_indices, step_pool, step_size, up_steps

#: Seed of the noise drawn for the evaluation picture (the same corruption every epoch).
_PICTURE_SEED = 0


def block_mask(
    batch: int, size: tuple[int, int], fraction: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(batch, 1, H, W) bool, True inside one rectangle per image of sides ``round(√fraction × H)`` and
    ``round(√fraction × W)`` (at least 1 pixel each) at a uniformly random place inside the image."""
    h, w = size
    side_h = min(h, max(1, round(fraction**0.5 * h)))
    side_w = min(w, max(1, round(fraction**0.5 * w)))
    corner = torch.rand((batch, 2), generator=generator, device=device)
    top = (corner[:, 0] * (h - side_h + 1)).long().clamp(max=h - side_h)[:, None, None, None]
    left = (corner[:, 1] * (w - side_w + 1)).long().clamp(max=w - side_w)[:, None, None, None]
    rows = torch.arange(h, device=device)[None, None, :, None]
    cols = torch.arange(w, device=device)[None, None, None, :]
    return (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)


class AutoencoderHead(Head):
    """Features → reconstructed images (B, 3, H, W) in [0, 1] at the input size (as the ``fcn`` head's size)."""

    task = "reconstruction"

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        input_size: tuple[int, int],
        *,
        upsample: str = "transposed",
        channels: int = 32,
        loss: str = "mse",
        noise: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = 0  # no classes: the task's metrics compare pixels
        self.infos = list(feature_info)  # finest first
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.loss_name = loss
        self.noise = dict(noise or {})
        coarsest = self.infos[-1]
        self.by_stride = {info.stride: info for info in self.infos}
        self.strides = decoder_strides(coarsest.stride)
        self.entry = nn.Conv2d(coarsest.channels, channels, kernel_size=1)
        self.steps = up_steps(upsample, channels, self.strides, self.by_stride, relu=True)
        self.refine = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in self.steps)
        self.out = nn.Conv2d(channels, 3, kernel_size=3, padding=1)

    # -- model ---------------------------------------------------------------

    def forward(self, features: Features) -> Tensor:
        """:class:`Features` → reconstructions (B, 3, H, W) in [0, 1], (H, W) the input images' size."""
        out_size = image_size(self.infos, self.input_size, features)
        x = F.relu(self.entry(features.maps[self.infos[-1].name]))
        for step, refine, s in zip(self.steps, self.refine, self.strides[:-1], strict=True):
            x = step(x, step_size(self.by_stride, features, s // 2, out_size), step_pool(self.by_stride, features, s))
            x = F.relu(refine(x))
        return torch.sigmoid(fit_size(self.out(x), out_size))

    def corrupt(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``images`` (B, 3, H, W) in [0, 255] with the configured noise, float32 in [0, 255]."""
        x = images.float()
        if self.noise.get("gaussian", 0.0) > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device) * (self.noise["gaussian"] * 255.0)
            x = (x + noise).clamp(0.0, 255.0)
        b, _, h, w = x.shape
        if self.noise.get("mask", 0.0) > 0:
            keep = torch.rand((b, 1, h, w), generator=generator, device=x.device) >= self.noise["mask"]
            x = x * keep
        if self.noise.get("block", 0.0) > 0:
            x = x * ~block_mask(b, (h, w), self.noise["block"], generator, x.device)
        return x

    def training_inputs(self, images: Tensor) -> Tensor:
        """The corrupted images (denoising) when ``noise`` is set, else ``images``."""
        return self.corrupt(images) if self.noise else images

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """MSE (or L1) of reconstructions (B, 3, H, W) against the clean ``batch["image"] / 255``."""
        target = batch["image"].float() / 255.0
        error = F.l1_loss if self.loss_name == "l1" else F.mse_loss
        return {"loss": error(outputs.float(), target)}

    def evaluation_outputs(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor | None]:
        """``{"reconstruction": outputs, "noisy": the corrupted inputs in [0, 1] (for the picture) or None}``."""
        noisy = None
        if self.noise:
            generator = torch.Generator(device=outputs.device).manual_seed(_PICTURE_SEED)
            noisy = self.corrupt(batch["image"], generator) / 255.0
        return {"reconstruction": outputs, "noisy": noisy}

    # -- predictions ---------------------------------------------------------

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[ReconstructionPrediction]:
        """Reconstructions (B, 3, H, W) → one :class:`ReconstructionPrediction` per image, resized (bilinear)
        to ``batch["meta"][i]["orig_size"]``; its PSNR is against the model's input (data range 1)."""
        recon = outputs.detach().float().clamp(0, 1)
        mse = ((recon - batch["image"].float() / 255.0) ** 2).flatten(1).mean(dim=1)  # (B,)
        psnr = (-10 * torch.log10(mse.clamp(min=1e-10))).cpu().numpy()
        predictions = []
        for i, meta in enumerate(batch["meta"]):
            h, w = (int(v) for v in meta["orig_size"])
            image = F.interpolate(recon[i][None], size=(h, w), mode="bilinear", align_corners=False)[0]
            pixels = (image.permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
            predictions.append(
                ReconstructionPrediction(id=str(meta["id"]), image=np.ascontiguousarray(pixels), psnr=float(psnr[i]))
            )
        return predictions


NoiseKind = Literal["gaussian", "mask", "block"]


@stage("head", "autoencoder")
def autoencoder(
    context: StageContext,
    upsample: Literal["transposed", "unpool", "bilinear"] = "transposed",
    channels: Annotated[int, Field(ge=1)] = 32,
    loss: Literal["mse", "l1"] = "mse",
    noise: dict[NoiseKind, Annotated[float, Field(ge=0)]] | None = None,
) -> AutoencoderHead:
    """Reconstruct the input images from the backbone's coarsest map (an autoencoder; task ``reconstruction``).

    Args:
        upsample: ``transposed`` (bilinear-initialised transposed convs), ``unpool`` (max unpooling
            with the backbone's pooling indices; needs e.g. ``vgg``) or ``bilinear`` (interpolate + conv),
            as the ``fcn`` head; each step is followed by a 3×3 conv + ReLU.
        channels: decoder width.
        loss: ``mse`` or ``l1``, against the clean input pixels in [0, 1].
        noise: denoising, training inputs only: ``{gaussian: σ}`` (std in [0, 1] pixel units) and/or
            ``{mask: p}`` (fraction of pixels set to 0, p < 1) and/or ``{block: f}`` (one rectangle
            per image, a fraction f < 1 of its area, set to 0: inpainting).
    """
    for kind in ("mask", "block"):
        if noise and noise.get(kind, 0.0) >= 1:
            raise StageError(
                f"head 'autoencoder': noise.{kind} is the fraction of the image hidden, below 1; got {noise[kind]}"
            )
    if upsample == "unpool":
        require_pool_indices(context, "autoencoder")
    infos = sorted(context.features, key=lambda info: info.stride)
    return AutoencoderHead(
        infos,
        context.input_size,
        upsample=upsample,
        channels=channels,
        loss=loss,
        noise={str(k): float(v) for k, v in (noise or {}).items()},
    )


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [autoencoder]
