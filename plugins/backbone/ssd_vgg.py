"""SSD's VGG backbone stage (``backbone: {name: ssd_vgg, model: vgg16, pretrained: IMAGENET1K_V1}``).

torchvision's ImageNet VGG changed as the SSD paper does (Liu et al., "SSD: Single Shot MultiBox
Detector", ECCV 2016, section 3 "Base network" and Fig. 2):

- the max poolings round sizes up (ceil mode; 300 px → 150, 75, 38, 19);
- conv4_3 (the last conv of the 4th block, stride 8) is L2-normalized over the channels and
  multiplied by a learned per-channel scale initialised to 20 (ParseNet, Liu et al. 2015): map
  ``stage3``;
- pool5 becomes 3×3 stride 1 padding 1, and fc6 / fc7 become conv6 (3×3, dilation 6, padding 6,
  1024 channels) and conv7 (1×1, 1024), each + ReLU: map ``stage4`` (stride 16, conv7);
- conv6 / conv7 start from the classifier's fc6 / fc7 decimated (:func:`decimate_fc`) when the
  weights have a finite classifier (``IMAGENET1K_V1`` has; ``IMAGENET1K_FEATURES``, whose
  classifier is NaN, has not: conv6 / conv7 then start random, as without ``pretrained``).

The paper's extra layers conv8_2 .. conv11_2 are the ``ssd`` head's (``extra_channels: [512, 256,
256, 256]``, ``batch_norm: false``); ``pipelines/ssd300_vgg16.yaml`` is the whole setup. Map names
follow every vision-pipe backbone (see :mod:`vision_pipe_plugins.backbone.library`): the map at
stride 2**k is ``stage{k}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import StageContext, StageError, hookimpl, stage

from .library import LibraryBackbone, PoolIndices, probe_padding, torchvision_input_stats, torchvision_model

#: The VGG models of torchvision this stage takes (with or without batch norm).
VGG_MODELS = Literal["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

#: Channels of conv6 and conv7 (the decimated fc6 / fc7).
FC_CHANNELS = 1024
#: conv6's dilation (and padding): fc6's 7×7 kernel, kept every 3rd tap, on a map of stride 16
#: instead of 32 (pool5 no longer halves): its taps lie 2·3 = 6 cells apart ("à trous", section 3).
CONV6_DILATION = 6


class L2Norm(nn.Module):
    """Per-location L2 normalization over the channels times a learned per-channel scale (ParseNet).

    (B, C, H, W) → (B, C, H, W): ``x / ||x||_2`` (over C, eps 1e-12) times ``weight`` (C,), initialised
    to ``scale`` (SSD: 20 on conv4_3, whose values are much larger than the later maps').
    """

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.weight[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


def decimate_fc(classifier: nn.Sequential) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """conv6 / conv7 weights from a torchvision VGG ``classifier`` by decimation, as the SSD paper's
    fc-reduced VGG: fc6 (4096, 512·7·7) → (4096, 512, 7, 7)[::4, :, ::3, ::3] → (1024, 512, 3, 3),
    bias [::4]; fc7 (4096, 4096)[::4, ::4] → (1024, 1024, 1, 1), bias [::4].

    Returns (conv6 weight, conv6 bias, conv7 weight, conv7 bias), or None when the classifier's
    weights are not all finite (torchvision's ``IMAGENET1K_FEATURES`` has a NaN classifier).
    """
    fc6, fc7 = classifier[0], classifier[3]
    if not isinstance(fc6, nn.Linear) or not isinstance(fc7, nn.Linear):
        return None
    params = [fc6.weight, fc6.bias, fc7.weight, fc7.bias]
    if not all(bool(torch.isfinite(p).all()) for p in params):
        return None
    with torch.no_grad():
        w6 = fc6.weight.reshape(fc6.out_features, -1, 7, 7)[::4, :, ::3, ::3]  # (1024, 512, 3, 3)
        w7 = fc7.weight[::4, ::4, None, None]  # (1024, 1024, 1, 1)
        return w6.clone(), fc6.bias[::4].clone(), w7.clone(), fc7.bias[::4].clone()


def _ceil_pools(layers: list[nn.Module]) -> list[nn.Module]:
    """VGG's 2×2 max poolings in ceil mode (sizes round up: 75 → 38), the last one (pool5) 3×3
    stride 1 padding 1 (keeps the size, as in SSD)."""
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    out = list(layers)
    for i in pools[:-1]:
        out[i] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    out[pools[-1]] = nn.MaxPool2d(3, stride=1, padding=1)
    return out


class SSDVGG(LibraryBackbone):
    """SSD's VGG: (B, 3, H, W) → ``stage3`` (conv4_3 L2-normalized, (B, 512, ceil(H/8), ceil(W/8)))
    and ``stage4`` (conv7, (B, 1024, ceil(H/16), ceil(W/16))).

    ``features`` are torchvision's VGG feature layers (same indices, poolings as :func:`_ceil_pools`);
    ``conv4_3`` is the index of conv4_3's last layer (its ReLU) in them.
    """

    def __init__(self, layers: list[nn.Module], label: str, l2norm_scale: float) -> None:
        super().__init__()
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        if len(pools) != 5:
            raise StageError(f"{label}: expected VGG's 5 max poolings, found {len(pools)}")
        self.features = nn.Sequential(*_ceil_pools(layers))
        self.conv4_3 = pools[3] - 1
        channels = [m.out_channels for m in layers[: pools[3]] if isinstance(m, nn.Conv2d)][-1]
        last = [m.out_channels for m in layers if isinstance(m, nn.Conv2d)][-1]
        self.l2norm = L2Norm(channels, l2norm_scale)
        self.conv6 = nn.Conv2d(last, FC_CHANNELS, 3, padding=CONV6_DILATION, dilation=CONV6_DILATION)
        self.conv7 = nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1)
        for conv in (self.conv6, self.conv7):  # torchvision VGG's conv init, until decimated fc weights replace it
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.declare([channels, FC_CHANNELS], [8, 16], label)
        #: whether conv6 / conv7 hold the decimated fc6 / fc7 (:meth:`load_fc`)
        self.fc_decimated = False

    def load_fc(self, classifier: nn.Sequential) -> bool:
        """Set conv6 / conv7 to :func:`decimate_fc` of ``classifier``; False (nothing changed) when its
        weights are not finite."""
        decimated = decimate_fc(classifier)
        if decimated is not None:
            params = [*self.conv6.parameters(), *self.conv7.parameters()]  # weight, bias, weight, bias
            with torch.no_grad():
                for param, value in zip(params, decimated, strict=True):
                    param.copy_(value)
        self.fc_decimated = decimated is not None
        return self.fc_decimated

    def extract(self, images: Tensor) -> tuple[list[Tensor], list[PoolIndices | None]]:
        x = images
        conv4_3 = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.conv4_3:
                conv4_3 = self.l2norm(x)
        x = F.relu(self.conv6(x))
        x = F.relu(self.conv7(x))
        return [conv4_3, x], [None, None]


@stage("backbone", "ssd_vgg")
def ssd_vgg(
    context: StageContext,
    model: VGG_MODELS = "vgg16",
    pretrained: bool | str = False,
    l2norm_scale: Annotated[float, Field(gt=0)] = 20.0,
) -> SSDVGG:
    """torchvision's VGG as SSD's base network: maps ``stage3`` (conv4_3, L2-normalized, stride 8) and
    ``stage4`` (conv7, 1024 channels, stride 16); 300 px → 38×38 and 19×19.

    Poolings round up; pool5 is 3×3 stride 1; fc6 / fc7 become conv6 (3×3, dilation 6) and conv7 (1×1),
    initialised by decimating the classifier when the weights have a finite one (``IMAGENET1K_V1``;
    not ``IMAGENET1K_FEATURES``). Add the paper's extra layers with the ``ssd`` head
    (``extra_channels: [512, 256, 256, 256]``, ``batch_norm: false``).

    Args:
        model: ``vgg11`` .. ``vgg19_bn``; the paper's is ``vgg16``.
        pretrained: ``false`` (random init), ``true`` / ``DEFAULT`` or a weights name (``IMAGENET1K_V1``,
            ``IMAGENET1K_FEATURES``; downloaded into torch's hub cache), or a local ``.safetensors``/``.pth``
            file with the VGG's state dict (torchvision's format, classifier included), read as weights only.
            Their input statistics are what ``normalization: {name: pretrained}`` applies (Caffe-style
            mean and std 1 for ``IMAGENET1K_FEATURES``, ImageNet's for ``IMAGENET1K_V1``).
        l2norm_scale: initial value of conv4_3's learned per-channel scale after L2 normalization.
    """
    label = f"backbone 'ssd_vgg' (model {model!r})"
    load = not context.restoring  # restoring: a checkpoint's weights replace them, so neither download nor read them
    net: Any = torchvision_model(model, pretrained, label, load=load)
    backbone = SSDVGG(list(net.features), label, l2norm_scale)
    if pretrained and load:
        backbone.load_fc(net.classifier)
    backbone.input_stats = torchvision_input_stats(model, pretrained, label)
    backbone.pretrained = pretrained is not False
    probe_padding(backbone, label)
    return backbone


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [ssd_vgg]
