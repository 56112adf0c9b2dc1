"""Adversarial examples in pixel space: FGSM, PGD, and the mixing of adversarial training.

Every perturbation is computed on the pixel tensor fed to the normalization stage
(``(B, 3, H, W)`` float in [0, 255], before normalization), so ``eps`` is in pixel
units of /255 (``eps=4`` moves a pixel by at most 4 of 255), and the result is
clipped to valid pixels [0, 255]. The loss J is the head's own training loss on
the true targets (``head.loss(outputs, batch)["loss"]``), so every head — classification,
FCN, SSD, a plugin's — is attacked by the same code. Gradients are taken with
``torch.autograd.grad`` with respect to the pixels only: the parameters' ``.grad``
stay untouched, and :func:`mix_adversarial` restores the buffers (batch-norm
statistics) its extra forward passes moved.

The evaluation over a test split (metrics per ε, curve and figure) is :mod:`vision_pipe.attack`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from vision_pipe.config import AdversarialTrainingConfig, AttackConfig
    from vision_pipe.module import PipelineModule
    from vision_pipe.stages import Batch

#: ``loss_of(pixels)``: the scalar loss of a (B, 3, H, W) float pixel batch.
LossOf = Callable[[Tensor], Tensor]

#: The largest pixel value.
PIXEL_MAX = 255.0


def gradient_sign(loss_of: LossOf, pixels: Tensor) -> Tensor:
    """sign(∇ₓ J) at ``pixels`` (B, 3, H, W) float; the parameters' gradients are not touched."""
    x = pixels.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_of(x), x)
    return grad.sign()


def fgsm(loss_of: LossOf, pixels: Tensor, eps: float, sign: Tensor | None = None) -> Tensor:
    """The fast gradient sign method: clip(x + eps·sign(∇ₓ J(x, y)), 0, 255).

    ``pixels`` (B, 3, H, W) uint8 or float in [0, 255]; ``eps`` in pixel units (/255);
    ``sign``: sign(∇ₓ J) when already computed (the same for every ε). Returns float32, detached.
    """
    x = pixels.detach().float()
    if sign is None:
        sign = gradient_sign(loss_of, x)
    return (x + eps * sign).clamp(0.0, PIXEL_MAX)


def pgd(
    loss_of: LossOf,
    pixels: Tensor,
    eps: float,
    *,
    alpha: float | None = None,
    steps: int = 10,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent (iterated FGSM, Madry et al. 2018) in the L∞ ball of radius ``eps``.

    From x (or, with ``random_start``, a uniform random point of the ball), ``steps`` times:
    x' ← clip(proj_ε(x' + alpha·sign(∇ J(x'))), 0, 255). ``alpha`` defaults to 2.5·eps/steps.
    With ``steps=1``, ``alpha=eps`` and no random start this is :func:`fgsm`. Units and shapes as there.
    """
    x = pixels.detach().float()
    step = 2.5 * eps / steps if alpha is None else alpha
    adv = x
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * (2 * eps) - eps
        adv = (x + noise).clamp(0.0, PIXEL_MAX)
    for _ in range(steps):
        adv = adv + step * gradient_sign(loss_of, adv)
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0.0, PIXEL_MAX)
    return adv.detach()


def head_loss(module: PipelineModule, batch: Batch) -> LossOf:
    """J(x) of ``module``: its head's training loss (``"loss"``) on ``batch``'s targets, for pixels x."""

    def loss_of(pixels: Tensor) -> Tensor:
        return module.head.loss(module(pixels), batch)["loss"]

    return loss_of


def perturb(
    loss_of: LossOf,
    pixels: Tensor,
    eps: float,
    spec: AttackConfig | AdversarialTrainingConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``pixels`` under the attack ``spec`` names (``method``, its PGD settings) at ``eps`` (/255)."""
    if spec.method == "fgsm":
        return fgsm(loss_of, pixels, eps)
    return pgd(
        loss_of,
        pixels,
        eps,
        alpha=spec.alpha,
        steps=spec.steps,
        random_start=spec.random_start,
        generator=generator,
    )


@contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Within the block the model may run forward passes: its buffers (batch-norm running statistics and
    counts) are put back afterwards."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def mix_adversarial(module: PipelineModule, batch: Batch, spec: AdversarialTrainingConfig) -> tuple[Tensor, int]:
    """The training batch's pixels with its first round(fraction·B) images (at least one) replaced by their
    adversarial version under ``spec``, computed on the current weights; and how many were replaced.

    The attack runs on the whole batch (a batch's targets are task-specific and not sliced here) in the
    module's current mode; the parameters' gradients and the buffers are left as they were.
    Returns (B, 3, H, W) float32 in [0, 255].
    """
    images = batch["image"]
    count = min(images.shape[0], max(1, round(spec.fraction * images.shape[0])))
    with kept_buffers(module):
        adv = perturb(head_loss(module, batch), images, spec.eps, spec)
    mixed = images.float().clone()
    mixed[:count] = adv[:count]
    return mixed, count


__all__ = ["fgsm", "gradient_sign", "head_loss", "kept_buffers", "mix_adversarial", "perturb", "pgd"]
