"""torchvision backbone stage (``backbone: {name: torchvision, model: vgg16_bn, pretrained: DEFAULT}``).

torchvision's classification models of the families in :data:`FAMILIES` (ResNet /
ResNeXt / Wide ResNet, VGG, ConvNeXt, EfficientNet, MobileNet V2/V3), cut into
stages at each change of stride: the map at stride 2**k is ``stage{k}`` as for every
vision-pipe backbone (see :mod:`vision_pipe_plugins.backbone.library`). VGG's max
poolings return their indices (ceil mode, so sizes round up), so it provides
``pool_indices`` for the ``fcn`` head's ``unpool``, as the built-in ``vgg`` does.

The weights parameter is ``pretrained`` (as for the ``timm`` stage): a backbone
entry's ``weights`` key is vision-pipe's own (a file loaded into the built backbone).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vision_pipe import StageContext, StageError, did_you_mean, hookimpl, stage

from .library import LibraryBackbone, PoolIndices, probe_padding, torchvision_input_stats, torchvision_model

#: Model-name patterns of the supported families (torchvision classification models).
FAMILIES = re.compile(
    r"^(resnet\d+|resnext\w+|wide_resnet\w+|vgg\d+(_bn)?|convnext_\w+|efficientnet_\w+|mobilenet_v[23]\w*)$"
)


def torchvision_models() -> list[str]:
    """The torchvision classification models this stage supports, sorted."""
    import torchvision

    return sorted(n for n in torchvision.models.list_models(module=torchvision.models) if FAMILIES.match(n))


def _layers(model: Any) -> list[nn.Module]:
    """The model's feature layers in order (ResNets: stem, max pooling, layer1..layer4)."""
    if hasattr(model, "features"):
        return list(model.features)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu)
    return [stem, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4]


def _vgg_pools(layers: list[nn.Module]) -> list[nn.Module]:
    """VGG's max poolings replaced by ones that return their indices and round sizes up."""
    return [
        nn.MaxPool2d(2, stride=2, return_indices=True, ceil_mode=True) if isinstance(layer, nn.MaxPool2d) else layer
        for layer in layers
    ]


def _group_by_stride(
    layers: list[nn.Module], *, at_pools: bool = False
) -> tuple[list[nn.Sequential], list[int], list[int]]:
    """Cut the layers into stages, each ending with the last layer before the next change of stride
    (found by a 64×64 forward) — or, ``at_pools``, with each max pooling (VGG: the map is the pooled
    output, as its indices are): the stages, and each stage's output channels and stride."""
    size = 64
    x = torch.zeros(1, 3, size, size)
    strides: list[int] = []
    channels: list[int] = []
    modes = [layer.training for layer in layers]
    with torch.no_grad():  # in eval mode: a train-mode forward would move batch norm's running statistics
        for layer in layers:
            layer.eval()
            x = layer(x)
            if isinstance(x, tuple):  # a pooling that returns indices
                x = x[0]
            strides.append(size // int(x.shape[-1]))
            channels.append(int(x.shape[1]))
    for layer, mode in zip(layers, modes, strict=True):
        layer.train(mode)
    stages: list[nn.Sequential] = []
    out_channels: list[int] = []
    out_strides: list[int] = []
    start = 0
    for i, stride in enumerate(strides):
        if at_pools:
            end = isinstance(layers[i], nn.MaxPool2d)
        else:
            end = i == len(strides) - 1 or strides[i + 1] != stride
        if end:
            if stride > 1:  # layers before the first downsampling join the first stage
                stages.append(nn.Sequential(*layers[start : i + 1]))
                out_channels.append(channels[i])
                out_strides.append(stride)
                start = i + 1
    return stages, out_channels, out_strides


class TorchvisionBackbone(LibraryBackbone):
    """A torchvision classification model's feature layers: (B, C, H, W) → maps ``stage{k}``, finest first."""

    def __init__(self, layers: list[nn.Module], label: str, *, pool_indices: bool) -> None:
        super().__init__()
        stages, channels, strides = _group_by_stride(layers, at_pools=pool_indices)
        self.stages = nn.ModuleList(stages)
        self.provides = frozenset({"pool_indices"}) if pool_indices else frozenset()
        self.declare(channels, strides, label)

    def extract(self, images: Tensor) -> tuple[list[Tensor], list[PoolIndices | None]]:
        x = images
        maps: list[Tensor] = []
        pools: list[PoolIndices | None] = []
        for block in self.stages:
            pool: PoolIndices | None = None
            for layer in block.children():
                if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
                    size = (int(x.shape[-2]), int(x.shape[-1]))
                    x, indices = layer(x)
                    pool = (indices, size)
                else:
                    x = layer(x)
            maps.append(x)
            pools.append(pool)
        return maps, pools


@stage("backbone", "torchvision")
def torchvision_backbone(
    context: StageContext, model: str = "resnet18", pretrained: bool | str = False
) -> TorchvisionBackbone:
    """A torchvision classification model as a backbone: its maps named ``stage{k}`` for stride 2**k.

    ResNets, VGG, EfficientNet and MobileNet give ``stage1``..``stage5`` (strides 2..32);
    ConvNeXt ``stage2``..``stage5``. VGG (``vgg11`` .. ``vgg19_bn``) provides ``pool_indices``
    (its max poolings, in ceil mode) for the ``fcn`` head's ``unpool``; the others do not.
    `vision-pipe backbones PATTERN` lists the models.

    Args:
        model: ``resnet18``..``resnet152``, ``resnext*``, ``wide_resnet*``, ``vgg11``..``vgg19_bn``,
            ``convnext_tiny``..``convnext_large``, ``efficientnet_b0``..``efficientnet_v2_l``,
            ``mobilenet_v2``, ``mobilenet_v3_small``/``_large``.
        pretrained: ``false`` (random init), ``true`` / ``DEFAULT`` or a weights name (``IMAGENET1K_V1``, downloaded
            into torch's hub cache), or a local ``.safetensors``/``.pth`` file with the model's state
            dict (torchvision's format), read as weights only. The weights' input statistics
            (their transforms' mean and std; a file: those of ``DEFAULT``) are what
            ``normalization: {name: pretrained}`` applies.
    """
    supported = torchvision_models()
    if model not in supported:
        raise StageError(
            f"backbone 'torchvision': unknown or unsupported model {model!r}; supported: {', '.join(supported)}."
            + did_you_mean(model, supported)
        )
    label = f"backbone 'torchvision' (model {model!r})"
    # restoring: a checkpoint's weights replace them, so neither download nor read them
    layers = _layers(torchvision_model(model, pretrained, label, load=not context.restoring))
    is_vgg = model.startswith("vgg")
    if is_vgg:
        layers = _vgg_pools(layers)
    backbone = TorchvisionBackbone(layers, label, pool_indices=is_vgg)
    backbone.input_stats = torchvision_input_stats(model, pretrained, label)
    backbone.pretrained = pretrained is not False
    probe_padding(backbone, label)
    return backbone


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """The supported torchvision models matching a shell-style ``pattern`` (case-insensitive); with
    ``pretrained``, ``model.WEIGHTS`` for each of their weights (``vision-pipe backbones``)."""
    import fnmatch

    import torchvision

    names = [n for n in torchvision_models() if fnmatch.fnmatch(n, pattern.lower())]
    if not pretrained:
        return names
    return [
        f"{n}.{tag}" for n in names for tag in torchvision.models.get_model_weights(n).__members__ if tag != "DEFAULT"
    ]


torchvision_backbone.list_models = list_models  # type: ignore[attr-defined]


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [torchvision_backbone]
