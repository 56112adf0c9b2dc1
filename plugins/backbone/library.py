"""What the library backbone stages share: map names, the size contract, torchvision models and weights.

Not a plugin (no hooks); imported by :mod:`vision_pipe_plugins.backbone.timm_backbone`,
:mod:`vision_pipe_plugins.backbone.torchvision_backbone` and
:mod:`vision_pipe_plugins.backbone.ssd_vgg`.

**Map names** are the same for both libraries and for the built-in ``vgg``: the map
at stride 2**k is ``stage{k}`` (stride 2 → ``stage1``, 4 → ``stage2``, ..., 32 →
``stage5``), so the names do not move when ``out_indices`` drops a map, and
``resnet18`` from timm or torchvision gives the same names. A second map at the
same stride (e.g. the blocks of a ViT) is ``stage{k}_2``, ``stage{k}_3``, ...

**Sizes**: our contract is (ceil(H / stride), ceil(W / stride)) for any input.
Convolutions with "same" padding give that; patchify stems and 2×2 stride-2
convs (ConvNeXt, Swin) round down. :func:`probe_padding` finds out at build time
which kind a model is; for the second kind, inputs whose sides are not a multiple
of the coarsest stride are zero-padded at the bottom and right to one and the maps
cropped back to ceil(H / stride), so both kinds meet the contract and sizes that
are multiples of the coarsest stride are computed exactly as the library does.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision_pipe import Backbone, FeatureInfo, Features, InputStats, StageError, did_you_mean, load_weights_file

#: A ``pretrained`` string ending like this is a local file, not a tag or weights name.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

#: The pooling indices of one map: (indices, (H, W) of the pooling's input).
PoolIndices = tuple[Tensor, tuple[int, int]]


def stride_names(strides: Sequence[int], label: str) -> list[str]:
    """``stage{log2(stride)}`` per map (``_2``, ``_3`` for repeats); :class:`StageError` naming the
    backbone ``label`` when a stride is not a power of two (the heads need powers of two)."""
    names: list[str] = []
    for stride in strides:
        if stride < 1 or stride & (stride - 1):
            raise StageError(
                f"{label}: its feature maps have strides {list(strides)}; vision-pipe's heads need powers of "
                f"two (1, 2, 4, ...) — pick out_indices without stride {stride} or another model"
            )
        base = f"stage{int(math.log2(stride))}"
        count = sum(1 for n in names if n == base or n.startswith(base + "_"))
        names.append(base if count == 0 else f"{base}_{count + 1}")
    return names


def is_weights_file(value: str) -> bool:
    """Whether a ``pretrained`` string names a local file (by its suffix or a path separator)."""
    return value.endswith(WEIGHT_FILE_SUFFIXES) or "/" in value or "\\" in value


def torchvision_weights(model: str, weights: str | None, label: str) -> Any:
    """torchvision's weights enum member of ``model`` for ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, ...);
    None for no weights or a file. :class:`StageError` naming the backbone ``label`` and the model's weights."""
    if weights is None or is_weights_file(weights):
        return None
    import torchvision

    enum = torchvision.models.get_model_weights(model)
    tags = ["DEFAULT", *(tag for tag in enum.__members__ if tag != "DEFAULT")]
    if weights not in tags:
        raise StageError(
            f"{label}: no weights {weights!r}; its weights: {', '.join(tags)}, "
            f"or a local .safetensors/.pth file." + did_you_mean(weights, tags)
        )
    return enum[weights]


def torchvision_model(model: str, pretrained: bool | str, label: str, *, load: bool = True) -> nn.Module:
    """torchvision's classification model ``model`` with the weights ``pretrained`` names: ``False`` (random
    init), ``True`` / ``DEFAULT`` or a weights name (downloaded into torch's hub cache), or a local
    ``.safetensors``/``.pth`` state dict in torchvision's format, read as weights only. ``load=False``
    (restoring from a checkpoint): the names are checked but no weights are downloaded or read.
    :class:`StageError` naming the backbone ``label`` for unknown weights, a failed download or a file
    that does not fit."""
    import torchvision

    weights = "DEFAULT" if pretrained is True else (pretrained or None)
    enum = torchvision_weights(model, weights, label)
    try:
        net = torchvision.models.get_model(model, weights=enum if load else None)
    except Exception as exc:  # a failed download
        raise StageError(f"{label}: cannot get weights {weights!r} (offline? give a local file): {exc}") from exc
    if load and weights is not None and enum is None:
        state = load_weights_file(Path(weights), what="torchvision weights file")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise StageError(f"{label}: weights {weights} do not fit the model: {exc}") from exc
    return net


def torchvision_input_stats(model: str, pretrained: bool | str, label: str) -> InputStats | None:
    """The input statistics of the torchvision weights ``pretrained`` names (a file, ``False``: the
    model's ``DEFAULT``), from their preset transforms; None when they publish none."""
    import torchvision

    weights = "DEFAULT" if pretrained is True else (pretrained or None)
    member = torchvision_weights(model, weights, label) or torchvision.models.get_model_weights(model).DEFAULT
    preset = member.transforms()
    mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
    if mean is None or std is None or len(mean) != 3:
        return None
    return InputStats.from_unit(mean, std, f"torchvision {type(member).__name__}.{member.name}")


class LibraryBackbone(Backbone):
    """A library model's feature maps as a vision-pipe backbone: (B, C, H, W) → ``Features``.

    Subclasses implement :meth:`extract` (the library's maps, finest first, and any pooling
    indices) and call :meth:`declare` once built; ``pad`` is set by :func:`probe_padding`.
    """

    def declare(self, channels: Sequence[int], strides: Sequence[int], label: str) -> None:
        """Set ``feature_info`` from the maps' channels and strides (named by :func:`stride_names`)."""
        names = stride_names(strides, label)
        self.feature_info = [
            FeatureInfo(name=n, channels=int(c), stride=int(s))
            for n, c, s in zip(names, channels, strides, strict=True)
        ]
        self.pad = False

    @abstractmethod
    def extract(self, images: Tensor) -> tuple[list[Tensor], list[PoolIndices | None]]:
        """(B, C, H, W) → the library's maps, finest first, and per map its pooling indices (or None)."""

    def forward(self, images: Tensor) -> Features:
        """(B, C, H, W) float → :class:`Features`, maps (B, C_i, ceil(H/s_i), ceil(W/s_i)) finest first."""
        h, w = int(images.shape[-2]), int(images.shape[-1])
        coarsest = self.feature_info[-1].stride
        if self.pad and (h % coarsest or w % coarsest):
            images = F.pad(images, (0, -w % coarsest, 0, -h % coarsest))
        outputs, pools = self.extract(images)
        maps: dict[str, Tensor] = {}
        pool_indices: dict[str, PoolIndices] = {}
        for info, fmap, pool in zip(self.feature_info, outputs, pools, strict=True):
            maps[info.name] = fmap[..., : math.ceil(h / info.stride), : math.ceil(w / info.stride)]
            if pool is not None:
                pool_indices[info.name] = pool
        return Features(maps=maps, pool_indices=pool_indices)


def probe_padding(backbone: LibraryBackbone, label: str) -> None:
    """Find out whether ``backbone`` rounds sizes up by itself (one forward on a small odd input);
    if not, set ``backbone.pad`` so that :meth:`LibraryBackbone.forward` pads and crops."""
    coarsest = backbone.feature_info[-1].stride
    size = 2 * coarsest + 1
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            outputs, _ = backbone.extract(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise StageError(
            f"{label}: a forward pass on a {size}×{size} input failed ({type(exc).__name__}: {exc}); "
            f"models with a fixed input size (e.g. ViTs) need their own size (kwargs: {{img_size: ...}} in timm, "
            f"or dynamic_img_size: true)"
        ) from exc
    finally:
        backbone.train(was_training)
    expected = [math.ceil(size / info.stride) for info in backbone.feature_info]
    got = [int(o.shape[-1]) for o in outputs]
    backbone.pad = got != expected
