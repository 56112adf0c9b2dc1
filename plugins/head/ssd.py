"""The built-in detection head: SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016).

A 3×3 convolutional predictor on each of several feature maps gives, for every
default box, ``C + 1`` class scores (class 0 is background, internal to the
head) and 4 box offsets. The maps are backbone maps (``feature_maps``, finest
first) followed by extra down-sampling layers (1×1 conv + 3×3 stride-2 conv,
as the paper's conv8..conv11, page 4 Fig. 2) when the backbone has fewer scales
than the head predicts on.

The box arithmetic — default boxes, box coding, matching, hard negative mining,
the loss and post-processing — lives in :mod:`vision_pipe_plugins.head.ssd_boxes`;
which maps it predicts on (backbone maps, extra layers, box ratios per map) is
planned at build time by :mod:`vision_pipe_plugins.head.ssd_maps`.
Every box the head works with internally is *normalized* xyxy (``[0, 1]`` of the
image width/height), so a prediction made on the resized model input maps back to
the original image by multiplying with the original width and height.

Metrics (COCO mAP@[.5:.95] ``map``, ``map_50``, ``map_75``, ``mar_100``, per class
``ap/<class>`` and ``ap_50/<class>``; ``difficult`` objects ignored as VOC does) are
the detection task's (``vision_pipe.tasks.detection``), fed with
:meth:`SSDHead.evaluation_outputs`: the detections in pixels of the model input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    DetectionPrediction,
    Features,
    Head,
    StageContext,
    StageError,
    hookimpl,
    pack_targets,
    stage,
)

from .ssd_boxes import boxes_per_location, default_boxes, postprocess, ssd_loss_padded
from .ssd_export import export_detections
from .ssd_maps import MapSpec, extra_layer_geometry, plan_maps, resolve_aspect_ratios

#: A fraction of the image, or an IoU: in (0, 1].
Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
AtLeastOne = Annotated[int, Field(ge=1)]


@dataclass(frozen=True)
class DefaultBoxSpec:
    """How the default boxes are laid out (paper section 2.2; torchvision's ``DefaultBoxGenerator``).

    ``aspect_ratios``: per map, the ratios besides 1 (each ``a`` gives boxes ``a`` and ``1/a``);
    ``min_scale``, ``max_scale``: scales of the finest and coarsest map as fractions of the
    image's shorter side, linear in between (eq. 4); ``clip``: clip the boxes to the image.
    """

    aspect_ratios: tuple[tuple[float, ...], ...]
    min_scale: float = 0.2
    max_scale: float = 0.9
    clip: bool = True


@dataclass(frozen=True)
class MatchSpec:
    """Matching, box coding and the loss (torchvision's ``SSDMatcher`` + ``BoxCoder`` + loss weights);
    the keywords of :func:`~vision_pipe_plugins.head.ssd_boxes.ssd_loss`.

    ``iou_threshold``: a default box with IoU >= this with a ground truth is matched to it;
    ``variances``: box-coding variances (centre, size); ``neg_pos_ratio``: hard negatives per
    positive; ``min_negatives``: hard negatives per image at least; ``alpha``: weight of the
    localization loss.
    """

    iou_threshold: float = 0.5
    variances: tuple[float, float] = (0.1, 0.2)
    neg_pos_ratio: float = 3.0
    min_negatives: int = 3
    alpha: float = 1.0


@dataclass(frozen=True)
class PostprocessSpec:
    """Post-processing (score filter → top-k → per-class NMS → cap per image); the keywords of
    :func:`~vision_pipe_plugins.head.ssd_boxes.postprocess` besides ``variances``."""

    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    topk_candidates: int = 400
    detections_per_img: int = 100


@dataclass
class SSDOutputs:
    """What :meth:`SSDHead.forward` returns.

    - ``cls_logits``: (B, D, C + 1) float, class 0 is background;
    - ``box_offsets``: (B, D, 4) float, :func:`~vision_pipe_plugins.head.ssd_boxes.encode` offsets;
    - ``defaults``: (D, 4) float normalized xyxy default boxes of these maps.
    """

    cls_logits: Tensor
    box_offsets: Tensor
    defaults: Tensor


# ----------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------


class ExtraLayer(nn.Sequential):
    """1×1 conv to ``channels // 2`` then a 3×3 conv to ``channels`` that down-samples an (h, w) map
    as :func:`extra_output_size` (page 4, Fig. 2: SSD's conv8_2 .. conv11_2), each + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int, size: tuple[int, int], batch_norm: bool = True) -> None:
        mid = max(1, channels // 2)
        (kh, sh, ph), (kw, sw, pw) = extra_layer_geometry(size[0]), extra_layer_geometry(size[1])
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid, 1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(mid)] if batch_norm else []
        layers += [nn.ReLU(inplace=True), nn.Conv2d(mid, channels, (kh, kw), (sh, sw), (ph, pw), bias=not batch_norm)]
        layers += [nn.BatchNorm2d(channels)] if batch_norm else []
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _flatten(x: Tensor, per_box: int) -> Tensor:
    """(B, n * per_box, h, w) → (B, h * w * n, per_box): locations row-major, then boxes,
    the order of :func:`~vision_pipe_plugins.head.ssd_boxes.default_boxes`."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, per_box)


class SSDHead(Head):
    """SSD: maps → per default box (C + 1) class logits and 4 offsets; loss, decoding (metrics: the task's).

    Training contract (as torchvision's SSD): :meth:`forward` returns :class:`SSDOutputs`;
    :meth:`loss` gives ``{"loss", "loss_conf", "loss_loc"}``; :meth:`detect` / :meth:`decode`
    give per image boxes, scores (descending) and labels ``0..C-1`` (background removed).
    Its numbers come grouped: :class:`DefaultBoxSpec` (``boxes``), :class:`MatchSpec`
    (``match``) and :class:`PostprocessSpec` (``postprocess``), each with SSD's defaults.
    """

    task = "detection"

    def __init__(
        self,
        maps: Sequence[MapSpec],
        num_classes: int,
        input_size: tuple[int, int],
        first_stride: int,
        boxes: DefaultBoxSpec,
        *,
        match: MatchSpec = MatchSpec(),
        postprocess: PostprocessSpec = PostprocessSpec(),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.maps = list(maps)
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.first_stride = int(first_stride)
        self.boxes, self.match, self.postprocess = boxes, match, postprocess
        self.aspect_ratios = [list(r) for r in boxes.aspect_ratios]
        self.backbone_maps = [m.name for m in self.maps if not m.extra]

        extras: list[nn.Module] = []
        previous = next(m for m in reversed(self.maps) if not m.extra)
        for spec in (m for m in self.maps if m.extra):
            extras.append(ExtraLayer(previous.channels, spec.channels, previous.size, batch_norm))
            previous = spec
        self.extras = nn.ModuleList(extras)
        per_location = boxes_per_location(self.aspect_ratios)
        self.cls_heads = nn.ModuleList(
            nn.Conv2d(m.channels, n * (num_classes + 1), 3, padding=1)
            for m, n in zip(self.maps, per_location, strict=True)
        )
        self.box_heads = nn.ModuleList(
            nn.Conv2d(m.channels, n * 4, 3, padding=1) for m, n in zip(self.maps, per_location, strict=True)
        )
        for conv in [*self.cls_heads, *self.box_heads]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        self._defaults_cache: dict[tuple[Any, ...], Tensor] = {}

    @property
    def num_defaults(self) -> int:
        """D, the number of default boxes at the pipeline's input size."""
        return sum(
            h * w * n
            for m, n in zip(self.maps, boxes_per_location(self.aspect_ratios), strict=True)
            for h, w in [m.size]
        )

    def defaults_for(self, sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], like: Tensor) -> Tensor:
        """(D, 4) normalized xyxy default boxes of maps of ``sizes`` on an image of ``image_size`` (h, w),
        on ``like``'s device, float32; cached."""
        key = (tuple(sizes), tuple(image_size), like.device)
        if key not in self._defaults_cache:
            b = self.boxes
            self._defaults_cache[key] = default_boxes(
                sizes, image_size, b.min_scale, b.max_scale, self.aspect_ratios, b.clip, device=like.device
            )
        return self._defaults_cache[key]

    # -- model ---------------------------------------------------------------

    def forward(self, features: Features) -> SSDOutputs:
        """:class:`Features` with the backbone maps → :class:`SSDOutputs` (B, D, C + 1), (B, D, 4), (D, 4)."""
        xs = [features.maps[name] for name in self.backbone_maps]
        x = xs[-1]
        for extra in self.extras:
            x = extra(x)
            xs.append(x)
        logits = [_flatten(head(x), self.num_classes + 1) for head, x in zip(self.cls_heads, xs, strict=True)]
        offsets = [_flatten(head(x), 4) for head, x in zip(self.box_heads, xs, strict=True)]
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in xs]
        defaults = self.defaults_for(sizes, self._image_size(sizes[0]), xs[0])
        return SSDOutputs(torch.cat(logits, dim=1), torch.cat(offsets, dim=1), defaults)

    def _image_size(self, first: tuple[int, int]) -> tuple[int, int]:
        """The input (h, w) in pixels (it sets the default boxes' aspect): ``input_size`` when the first
        map has its planned size, else that map's size times its stride (another input size)."""
        if first == self.maps[0].size:
            return self.input_size
        return first[0] * self.first_stride, first[1] * self.first_stride

    def loss(self, outputs: SSDOutputs, batch: Batch) -> dict[str, Tensor]:
        """``L = (L_conf + alpha L_loc) / N`` against the batch's boxes (pixels of the model input) and
        labels (0..C-1); terms ``loss``, ``loss_conf``, ``loss_loc`` (see :func:`~.ssd_boxes.ssd_loss_padded`). No host
        synchronization: the targets come packed (:func:`vision_pipe.pack_targets`)."""
        boxes, labels, valid = self.targets(batch, outputs.cls_logits.device)
        return ssd_loss_padded(
            outputs.cls_logits.float(),
            outputs.box_offsets.float(),
            boxes,
            labels,
            valid,
            outputs.defaults,
            **asdict(self.match),
        )

    def targets(self, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The batch's ground truths padded to one count G: boxes (B, G, 4) normalized xyxy, labels
        (B, G) int64 in 1..C and valid (B, G) bool; padding and boxes without area (left by a crop
        that cut an object to a line) are not valid. From the packed ``box_targets`` /
        ``label_targets`` when the batch has them (collated batches do), else packed here."""
        if "box_targets" in batch and "label_targets" in batch:
            boxes, labels = batch["box_targets"], batch["label_targets"]
        else:
            empty = [torch.zeros(len(x), dtype=torch.bool) for x in batch["labels"]]
            packed = pack_targets(batch["boxes"], [x.cpu() for x in batch["labels"]], empty)
            boxes, labels = packed["box_targets"], packed["label_targets"]
        boxes = boxes.to(device=device, dtype=torch.float32, non_blocking=True)  # (B, G, 4) pixels
        labels = labels.to(device=device, non_blocking=True)  # (B, G), -1 for padding
        h, w = batch["image"].shape[-2:]
        boxes = torch.stack((boxes[..., 0] / w, boxes[..., 1] / h, boxes[..., 2] / w, boxes[..., 3] / h), dim=-1)
        valid = (labels >= 0) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # (B, G)
        return boxes, torch.where(valid, labels + 1, 0), valid

    # -- detections ----------------------------------------------------------

    @torch.no_grad()
    def detect(self, outputs: SSDOutputs) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (K, 4) float normalized xyxy, "scores": (K,) descending,
        "labels": (K,) int64 in 0..C-1}`` after score threshold, top-k, per-class NMS and the cap."""
        results = postprocess(
            outputs.cls_logits.detach().float(),
            outputs.box_offsets.detach().float(),
            outputs.defaults,
            1,  # normalized coordinates: an image of 1 × 1
            **asdict(self.postprocess),
            variances=self.match.variances,
        )
        for r in results:
            r["labels"] = r["labels"] - 1  # 1..C → 0..C-1 (background is internal)
        return results

    def evaluation_outputs(self, outputs: SSDOutputs, batch: Batch) -> list[dict[str, Tensor]]:
        """:meth:`detect`'s detections with boxes in pixels of the model input (``batch["image"]``'s
        (H, W)): the detection task's evaluation form."""
        h, w = batch["image"].shape[-2:]
        detections = self.detect(outputs)
        for det in detections:
            det["boxes"] = det["boxes"] * torch.tensor([w, h, w, h], dtype=torch.float32, device=det["boxes"].device)
        return detections

    def export_outputs(self, outputs: SSDOutputs, input_size: tuple[int, int]) -> dict[str, Tensor]:
        """The exported model's detections (see :func:`.ssd_export.export_detections`): ``boxes``, ``scores``,
        ``labels`` padded to ``detections_per_img``, and ``count``."""
        return export_detections(
            outputs.cls_logits,
            outputs.box_offsets,
            outputs.defaults,
            input_size,
            **asdict(self.postprocess),
            variances=self.match.variances,
        )

    def decode(self, outputs: SSDOutputs, batch: Batch, class_names: Sequence[str]) -> list[DetectionPrediction]:
        """One :class:`DetectionPrediction` per image, boxes (N, 4) float32 xyxy in pixels of the
        original image (``batch["meta"][i]["orig_size"]``), scores descending, labels 0..C-1."""
        predictions = []
        for det, meta in zip(self.detect(outputs), batch["meta"], strict=True):
            h, w = (int(v) for v in meta["orig_size"])
            boxes = det["boxes"].cpu() * torch.tensor([w, h, w, h], dtype=torch.float32)
            labels = det["labels"].cpu().numpy().astype(np.int64)
            predictions.append(
                DetectionPrediction(
                    id=str(meta["id"]),
                    boxes=boxes.numpy().astype(np.float32).reshape(-1, 4),
                    labels=labels,
                    scores=det["scores"].cpu().numpy().astype(np.float32),
                    class_names=[class_names[int(i)] for i in labels],
                )
            )
        return predictions


# ----------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------


@stage("head", "ssd")
def ssd(
    context: StageContext,
    feature_maps: Annotated[list[str], Field(min_length=1)] | None = None,
    num_maps: AtLeastOne | None = None,
    extra_channels: Annotated[int, Field(ge=2)]
    | Annotated[list[Annotated[int, Field(ge=2)]], Field(min_length=1)] = 256,
    batch_norm: bool = True,
    min_scale: Fraction = 0.2,
    max_scale: Fraction = 0.9,
    aspect_ratios: list[Positive] | list[list[Positive]] | None = None,
    clip: bool = True,
    iou_threshold: Fraction = 0.5,
    variances: tuple[Positive, Positive] = (0.1, 0.2),
    neg_pos_ratio: NonNegative = 3.0,
    min_negatives: Annotated[int, Field(ge=0)] = 3,
    alpha: NonNegative = 1.0,
    score_thresh: Annotated[float, Field(ge=0, lt=1)] = 0.01,
    nms_thresh: Fraction = 0.45,
    topk_candidates: AtLeastOne = 400,
    detections_per_img: AtLeastOne = 100,
) -> SSDHead:
    """Detect objects with SSD: class scores and box offsets for default boxes on several maps.

    Args:
        feature_maps: backbone maps to predict on, finest first; by default those of stride >= 8
            (SSD300's first map has stride 8), or the coarsest if none has.
        num_maps: how many maps in all; extra down-sampling layers follow the last backbone map
            when it is more than ``feature_maps`` (default: add them until a map is 1×1).
        extra_channels: channels of each extra layer (1×1 conv to half of it, then a 3×3 conv): one
            number for all, or one per extra layer (SSD300: ``[512, 256, 256, 256]``).
        batch_norm: batch norm in the extra layers.
        min_scale, max_scale: default-box scales of the finest and coarsest map, as fractions of the
            image's shorter side, spaced linearly in between (paper eq. 4: 0.2, 0.9).
        aspect_ratios: ratios besides 1 of the default boxes, per map (``[[2], [2, 3], ...]``) or one
            flat list for every map; each ratio ``a`` gives boxes ``a`` and ``1/a``, and ratio 1 gives
            two (scales ``s_k`` and ``sqrt(s_k s_k+1)``). Default ``[2]`` for every map.
        clip: clip default boxes to the image.
        iou_threshold: a default box with IoU >= this with a ground truth is matched to it (besides
            every ground truth's best default box).
        variances: box-coding variances (centre, size).
        neg_pos_ratio: hard negatives kept per positive in the classification loss.
        min_negatives: hard negatives kept per image at least (what images without objects contribute).
        alpha: weight of the localization loss.
        score_thresh: detections need a class probability above this.
        nms_thresh: per-class NMS suppresses boxes with IoU above this with a better one.
        topk_candidates: best boxes per class considered for NMS.
        detections_per_img: detections kept per image (COCO evaluates at most 100).
    """
    if min_scale > max_scale:
        raise StageError(
            f"head 'ssd': min_scale ({min_scale}) must be <= max_scale ({max_scale}); "
            "they are the default-box scales of the finest and the coarsest map"
        )
    if context.num_classes < 1:
        raise StageError("head 'ssd' needs at least one object class; the loader gives none")
    specs = plan_maps(context, feature_maps, num_maps, extra_channels)
    ratios = resolve_aspect_ratios(aspect_ratios, specs, num_maps)
    first = context.feature(specs[0].name)
    return SSDHead(
        specs,
        context.num_classes,
        context.input_size,
        first.stride,
        DefaultBoxSpec(ratios, min_scale, max_scale, clip),
        match=MatchSpec(iou_threshold, (float(variances[0]), float(variances[1])), neg_pos_ratio, min_negatives, alpha),
        postprocess=PostprocessSpec(score_thresh, nms_thresh, topk_candidates, detections_per_img),
        batch_norm=batch_norm,
    )


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [ssd]
