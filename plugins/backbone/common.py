"""Helpers shared by the built-in backbones: parameter types, activations, weight init.

Not a plugin (no hooks); imported by :mod:`vision_pipe_plugins.backbone.vgg` and
:mod:`vision_pipe_plugins.backbone.resnet`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field
from torch import nn

#: Activation functions a backbone can use.
Activation = Literal["relu", "leaky_relu", "elu"]
#: Weight initialisations a backbone can use.
Init = Literal["he", "xavier"]

#: A channel count (``width``, ``in_channels``).
Channels = Annotated[int, Field(ge=1)]


def make_activation(name: str, leaky_slope: float = 0.01) -> nn.Module:
    """A fresh activation module: ``relu``, ``leaky_relu`` (slope ``leaky_slope``) or ``elu`` (alpha 1).

    In place where autograd allows it (in-place leaky ReLU needs a slope >= 0).
    """
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=leaky_slope, inplace=leaky_slope >= 0)
    if name == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"unknown activation {name!r}")  # the registry validates the factories' Literal


def he_std(fan: int, activation: str, leaky_slope: float = 0.01) -> float:
    """The standard deviation ``init="he"`` gives a conv with fan ``fan`` (= out_channels * kh * kw)."""
    gain = math.sqrt(2.0 / (1.0 + leaky_slope**2)) if activation == "leaky_relu" else math.sqrt(2.0)
    return gain / math.sqrt(fan)


def init_weights(model: nn.Module, init: str, activation: str, leaky_slope: float = 0.01) -> None:
    """Initialise every conv and batch norm of ``model`` in place.

    - ``he``: ``kaiming_normal_`` with ``mode="fan_out"`` (fan = out_channels * kh * kw,
      as torchvision's VGG and ResNet; keeps gradient magnitudes through the backward
      pass), std = gain / sqrt(fan). The gain matches the activation: sqrt(2) for
      ``relu`` and ``elu`` (ELU is ReLU-like for positive inputs; PyTorch has no ELU
      gain), sqrt(2 / (1 + slope²)) for ``leaky_relu``.
    - ``xavier``: ``xavier_uniform_`` with gain 1 (Glorot), std = sqrt(2 / (fan_in + fan_out)).

    Conv biases are zero; batch-norm weights 1 and biases 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            if init == "he":
                if activation == "leaky_relu":
                    nn.init.kaiming_normal_(module.weight, a=leaky_slope, mode="fan_out", nonlinearity="leaky_relu")
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                raise ValueError(f"unknown init {init!r}")  # the registry validates the factories' Literal
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
