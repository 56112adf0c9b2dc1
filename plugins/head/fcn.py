"""The built-in segmentation head: a fully convolutional decoder (FCN / SegNet / U-Net-like).

The decoder starts from the backbone's coarsest map and goes back to the input
size one factor of two at a time, through every stride the backbone has:

- ``upsample="transposed"``: ``ConvTranspose2d(k=4, s=2, p=1)`` initialised to
  bilinear upsampling, as in the FCN paper (Long et al. 2015, section 3.3);
- ``upsample="unpool"``: ``max_unpool2d`` with the backbone's recorded pooling
  indices (SegNet, Badrinarayanan et al. 2017), then a 3×3 conv;
- ``upsample="bilinear"``: ``F.interpolate`` then a 3×3 conv.

Skips: ``none`` (FCN-32s: score the coarsest map, upsample the scores),
``fcn16`` / ``fcn8`` (FCN-16s / 8s: scores of the 2nd / 2nd and 3rd coarsest
maps are added on the way up), ``concat`` (U-Net-like: the decoder carries
``channels`` features, concatenates every backbone map it passes, applies a
3×3 conv, and scores at the end).

Loss is pixel-wise cross-entropy (``ignore_index`` pixels ignored, optional class
weights). Metrics (per-class IoU, mean IoU, pixel accuracy, ``ignore_index``
pixels ignored) are the segmentation task's (``vision_pipe.tasks.segmentation``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    ChainError,
    FeatureInfo,
    Features,
    Head,
    SegmentationPrediction,
    StageContext,
    StageError,
    hookimpl,
    stage,
)

#: How many maps besides the coarsest each FCN skip mode scores and adds.
_SCORE_SKIPS = {"none": 0, "fcn16": 1, "fcn8": 2}


def bilinear_kernel(channels: int, size: int = 4) -> Tensor:
    """(channels, channels, size, size) weights that make a ``ConvTranspose2d`` with
    stride ``(size + 1) // 2`` upsample each channel bilinearly (no mixing of channels).

    With ``size=4, stride=2, padding=1`` this equals ``F.interpolate(scale_factor=2,
    mode="bilinear", align_corners=False)`` away from the borders (FCN's ``upsample_filt``).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor  # (size,)
    filt = filt1d[:, None] * filt1d[None, :]  # (size, size)
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = filt
    return weight


def fit_size(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop ``x`` (B, C, h, w) to ``size`` where it is larger, interpolate (bilinear) where smaller."""
    h, w = size
    x = x[..., :h, :w]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x


def decoder_strides(coarsest: int) -> list[int]:
    """The strides a decoder passes from a map of stride ``coarsest`` back to the image: coarsest, coarsest/2, ..., 1."""
    strides = []
    s = coarsest
    while s > 1:
        strides.append(s)
        s //= 2
    return [*strides, 1]


def image_size(infos: Sequence[FeatureInfo], input_size: tuple[int, int], features: Features) -> tuple[int, int]:
    """The (H, W) of the images ``features`` come from (``infos`` finest first): recorded by the first pooling
    when there is one, else ``input_size`` when the finest map has its size at ``input_size``, else that map's
    size times its stride (images of another size, e.g. an export at another input size)."""
    finest = infos[0]
    if finest.stride == 2 and finest.name in features.pool_indices:
        h, w = features.pool_indices[finest.name][1]
        return int(h), int(w)
    h, w = (int(v) for v in features.maps[finest.name].shape[-2:])
    if (h, w) == tuple(math.ceil(v / finest.stride) for v in input_size):
        return input_size
    return h * finest.stride, w * finest.stride


def step_size(
    by_stride: dict[int, FeatureInfo], features: Features, stride: int, out: tuple[int, int]
) -> tuple[int, int]:
    """The (h, w) a decoder step to ``stride`` produces: the size of the backbone's map at that stride
    when there is one (so skips line up), else ``out`` (the image size) divided by ``stride``, rounded up."""
    if stride in by_stride and by_stride[stride].name in features.maps:
        h, w = features.maps[by_stride[stride].name].shape[-2:]
        return int(h), int(w)
    return math.ceil(out[0] / stride), math.ceil(out[1] / stride)


def step_pool(
    by_stride: dict[int, FeatureInfo], features: Features, stride: int
) -> tuple[Tensor, tuple[int, int]] | None:
    """The pooling indices that produced the backbone's map at ``stride`` (what an ``unpool`` step from it
    undoes), or None."""
    return features.pool_indices.get(by_stride[stride].name) if stride in by_stride else None


def require_pool_indices(context: StageContext, head: str) -> None:
    """:class:`ChainError` for ``upsample: unpool`` when the backbone records no max-pooling indices."""
    if "pool_indices" not in context.backbone_provides:
        raise ChainError(
            f"head '{head}': upsample 'unpool' needs max-pooling indices, which backbone "
            f"'{context.backbone_name}' does not provide; backbones providing pool indices ('vgg', or 'torchvision' "
            f"with a VGG model such as vgg16_bn) can, "
            f"or use upsample 'transposed' or 'bilinear'"
        )


class UpStep(nn.Module):
    """One ×2 step of the decoder: (B, C, h, w) → (B, C, H, W) for a given (H, W) ≤ (2h, 2w).

    ``unpool_channels``: in ``unpool`` mode, the channels of the pooling indices used
    (a 1×1 conv maps ``C`` to them before unpooling, a 3×3 conv maps back after).
    A step without recorded indices falls back to bilinear interpolation + the conv.
    """

    def __init__(self, mode: str, channels: int, *, unpool_channels: int = 0, relu: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.relu = relu
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False)
            with torch.no_grad():
                self.up.weight.copy_(bilinear_kernel(channels, 4))
        elif mode == "unpool":
            self.pre = nn.Conv2d(channels, unpool_channels, kernel_size=1)
            self.conv = nn.Conv2d(unpool_channels, channels, kernel_size=3, padding=1)
            self.fallback = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        else:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int], pool: tuple[Tensor, tuple[int, int]] | None = None) -> Tensor:
        if self.mode == "transposed":
            return fit_size(self.up(x), size)  # (B, C, 2h, 2w) cropped to (H, W)
        if self.mode == "unpool" and pool is not None:
            indices, out_size = pool
            x = self.pre(x)  # (B, C_pool, h, w), the shape of the indices
            x = F.max_unpool2d(x, indices, kernel_size=(2, 2), stride=(2, 2), output_size=out_size)
            x = fit_size(self.conv(x), size)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = self.fallback(x) if self.mode == "unpool" else self.conv(x)
        return F.relu(x) if self.relu else x


def up_steps(
    mode: str, width: int, strides: Sequence[int], by_stride: dict[int, FeatureInfo], *, relu: bool
) -> nn.ModuleList:
    """One :class:`UpStep` of ``width`` channels per ×2 step down ``strides`` (:func:`decoder_strides`); an
    ``unpool`` step from a backbone map unpools to the channels of the pooling that produced that map."""
    return nn.ModuleList(
        UpStep(mode, width, unpool_channels=by_stride[s].channels if s in by_stride else width, relu=relu)
        for s in strides[:-1]
    )


class FCNHead(Head):
    """Features → per-pixel logits (B, num_classes, H, W) at the input size.

    The output size is the (H, W) recorded in ``features.pool_indices`` for the
    finest map when that map has stride 2 (the input of the first pooling is the
    image itself, so any size, odd ones included, comes back exactly); otherwise
    ``input_size``, the size every image is resized to before the model.
    """

    task = "segmentation"
    class_weights: Tensor | None  #: (num_classes,) cross-entropy weights (a non-persistent buffer), or None

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        input_size: tuple[int, int],
        *,
        upsample: str = "transposed",
        skips: str = "fcn8",
        channels: int = 64,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.infos = list(feature_info)  # finest first
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.upsample = upsample
        self.skips = skips
        self.ignore_index = ignore_index
        weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dropout = nn.Dropout2d(dropout)
        coarsest = self.infos[-1]
        self.by_stride = {info.stride: info for info in self.infos}
        concat = skips == "concat"
        width = channels if concat else num_classes  # what the decoder carries

        self.strides = decoder_strides(coarsest.stride)  # coarsest, coarsest/2, ..., 1

        self.entry = nn.Conv2d(coarsest.channels, width, kernel_size=1)  # score (or project) the coarsest map
        self.steps = up_steps(upsample, width, self.strides, self.by_stride, relu=concat)
        # Skip layers, keyed by map name.
        self.skip_names = (
            [info.name for info in self.infos[:-1]]
            if concat
            else [info.name for info in self.infos[-1 - _SCORE_SKIPS[skips] : -1]]
        )
        in_ch = {info.name: info.channels for info in self.infos}
        if concat:
            self.skip_layers = nn.ModuleDict(
                {n: nn.Conv2d(width + in_ch[n], width, kernel_size=3, padding=1) for n in self.skip_names}
            )
            self.classifier: nn.Module = nn.Conv2d(width, num_classes, kernel_size=1)
        else:
            # FCN: score layers start at zero, so training starts from the coarser prediction.
            self.skip_layers = nn.ModuleDict(
                {n: nn.Conv2d(in_ch[n], num_classes, kernel_size=1) for n in self.skip_names}
            )
            for layer in self.skip_layers.values():
                for param in layer.parameters():  # weight and bias
                    nn.init.zeros_(param)
            self.classifier = nn.Identity()

    # -- model ---------------------------------------------------------------

    def output_size(self, features: Features) -> tuple[int, int]:
        """The (H, W) of the input images (:func:`image_size`)."""
        return image_size(self.infos, self.input_size, features)

    def forward(self, features: Features) -> Tensor:
        """:class:`Features` → logits (B, num_classes, H, W), (H, W) as :meth:`output_size`."""
        out_h, out_w = self.output_size(features)
        maps = features.maps
        skip_at = {info.stride: info.name for info in self.infos if info.name in self.skip_layers}  # stride → map
        x = self.entry(self.dropout(maps[self.infos[-1].name]))
        for step, s in zip(self.steps, self.strides[:-1], strict=True):
            t = s // 2
            x = step(x, step_size(self.by_stride, features, t, (out_h, out_w)), step_pool(self.by_stride, features, s))
            if t in skip_at:
                name = skip_at[t]
                if self.skips == "concat":
                    x = F.relu(self.skip_layers[name](torch.cat([x, maps[name]], dim=1)))
                else:
                    x = x + self.skip_layers[name](maps[name])
        return fit_size(self.classifier(x), (out_h, out_w))

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of logits (B, num_classes, H, W) against ``batch["mask"]`` (B, H, W), averaged
        over the pixels that are not ``ignore_index`` (weighted by class weights when given); 0 when none is.
        A masked mean, with nothing read back to the host (a GPU step never waits for it)."""
        target = batch["mask"].long()
        valid = target != self.ignore_index  # (B, H, W)
        per_pixel = F.cross_entropy(
            outputs, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none"
        )  # (B, H, W), 0 where ignored
        if self.class_weights is None:
            weight = valid.sum()
        else:
            weight = (self.class_weights[torch.where(valid, target, 0)] * valid).sum()
        return {"loss": per_pixel.sum() / weight.clamp(min=1e-12).to(per_pixel.dtype)}

    # -- predictions ---------------------------------------------------------

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[SegmentationPrediction]:
        """Logits (B, num_classes, H, W) → one :class:`SegmentationPrediction` per image, the argmax
        mask resized to ``batch["meta"][i]["orig_size"]`` by nearest neighbour sampled at pixel centres
        (``nearest-exact``: output pixel x takes input pixel floor((x + 0.5) * in / out), aligned with the
        bilinear resize of the image; plain ``nearest``, floor(x * in / out), shifts by up to half a pixel)."""
        labels = outputs.detach().argmax(dim=1)  # (B, H, W)
        predictions = []
        for i, meta in enumerate(batch["meta"]):
            h, w = (int(v) for v in meta["orig_size"])
            mask = F.interpolate(labels[i][None, None].float(), size=(h, w), mode="nearest-exact")[0, 0]
            predictions.append(
                SegmentationPrediction(
                    id=str(meta["id"]),
                    mask=mask.to(torch.int64).cpu().numpy(),
                    class_names=list(class_names),
                )
            )
        return predictions


@stage("head", "fcn")
def fcn(
    context: StageContext,
    upsample: Literal["transposed", "unpool", "bilinear"] = "transposed",
    skips: Literal["none", "fcn16", "fcn8", "concat"] = "fcn8",
    channels: Annotated[int, Field(ge=1)] = 64,
    ignore_index: int = 255,
    class_weights: list[float] | None = None,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> FCNHead:
    """Segment images with a fully convolutional decoder over the backbone's maps.

    Args:
        upsample: ``transposed`` (bilinear-initialised transposed convs, FCN), ``unpool``
            (max unpooling with the backbone's pooling indices, SegNet; needs a backbone
            that provides ``pool_indices``, e.g. ``vgg``) or ``bilinear`` (interpolate + conv).
        skips: ``none`` (FCN-32s), ``fcn16``, ``fcn8`` (scores of the 2nd / 2nd and 3rd
            coarsest maps added), ``concat`` (U-Net-like concatenation of every map).
        channels: decoder width in ``concat`` mode (other modes carry the class scores).
        ignore_index: mask value of pixels without a label (ignored by loss and metrics).
        class_weights: one cross-entropy weight per class (background included).
        dropout: channel dropout on the coarsest map.
    """
    if context.num_classes < 2:
        raise StageError(
            f"head 'fcn' needs at least 2 classes (background included), the loader gives "
            f"{context.num_classes}: {list(context.classes)}"
        )
    if class_weights is not None and len(class_weights) != context.num_classes:
        raise StageError(
            f"head 'fcn': class_weights has {len(class_weights)} values but there are {context.num_classes} "
            f"classes (background included): {list(context.classes)}"
        )
    infos = sorted(context.features, key=lambda info: info.stride)
    names = [info.name for info in infos]
    if upsample == "unpool":
        require_pool_indices(context, "fcn")
    needed = _SCORE_SKIPS.get(skips, 0) + 1
    if len(infos) < needed:
        raise ChainError(
            f"head 'fcn': skips {skips!r} needs {needed} feature maps but backbone '{context.backbone_name}' "
            f"has {len(infos)}: {names}; use skips 'none'{', fcn16' if len(infos) >= 2 else ''} or a deeper backbone"
        )
    return FCNHead(
        infos,
        context.num_classes,
        context.input_size,
        upsample=upsample,
        skips=skips,
        channels=channels,
        ignore_index=ignore_index,
        class_weights=class_weights,
        dropout=dropout,
    )


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [fcn]
