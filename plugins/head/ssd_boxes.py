"""Box arithmetic for an SSD detection head: default boxes, box coding, matching, loss, decoding.

Small pure functions over tensors, in the style of ``torchvision.ops.boxes``:
boxes are ``Tensor[N, 4]`` (float) in ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and
``y1 <= y2``; every function says whether its boxes are *normalized* (``[0, 1]``
relative to the image width/height) or in *pixels*. Default boxes and targets
are normalized; :func:`postprocess` returns pixels.

References are to Liu et al., "SSD: Single Shot MultiBox Detector" (ECCV 2016,
arXiv:1512.02325v5). This module registers no stage: it is a helper for an
``ssd`` head, which owns the network and calls these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image

#: :func:`match`'s index for a default box matched to no ground truth.
BACKGROUND: int = -1
#: The class index of "background" in the classifier's ``C + 1`` outputs (objects are ``1..C``).
BACKGROUND_CLASS: int = 0
#: Box-coding variances (centre, size) of the SSD reference implementation.
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)
#: Upper bound on the decoded log-ratio of w/h before ``exp`` (as torchvision's ``BoxCoder``):
#: a box is at most 1000/16 times larger than its default box, so decoding cannot overflow.
BBOX_XFORM_CLIP: float = math.log(1000.0 / 16)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``7`` → ``(7, 7)``; ``(h, w)`` → ``(h, w)``."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def feature_scales(num_maps: int, min_scale: float, max_scale: float) -> list[float]:
    """The scales ``s_1..s_m`` of ``num_maps`` feature maps, plus ``s_{m+1} = 1``.

    ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)`` (page 6, eq. 4 of the SSD
    paper); with a single map, ``s_1 = s_min``. The extra ``s_{m+1} = 1`` gives the
    last map its additional ratio-1 box of scale ``sqrt(s_m * 1)``.
    Returns ``num_maps + 1`` floats.
    """
    if num_maps < 1:
        raise ValueError(f"need at least one feature map, got {num_maps}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    if num_maps == 1:
        return [float(min_scale), 1.0]
    step = (max_scale - min_scale) / (num_maps - 1)
    return [min_scale + step * k for k in range(num_maps)] + [1.0]


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """How many default boxes each map has per location: ``2 + 2 * len(ratios)``.

    Ratio 1 gives two boxes (scales ``s_k`` and ``sqrt(s_k s_{k+1})``), every other
    ratio ``a`` two more (``a`` and ``1/a``), so ``aspect_ratios`` lists only the
    ratios other than 1, e.g. ``[[2], [2, 3], [2, 3], [2, 3], [2], [2]]`` → ``[4, 6, 6, 6, 4, 4]``.
    """
    return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def default_boxes(
    feature_sizes: Sequence[int | Sequence[int]],
    image_size: int | Sequence[int],
    min_scale: float = 0.2,
    max_scale: float = 0.9,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    clip: bool = True,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The SSD default (prior) boxes of all feature maps, normalized xyxy (page 6 of the SSD paper).

    Args:
        feature_sizes: each map's size, ``f`` (square) or ``(f_h, f_w)``, largest map first.
        image_size: the input image, ``s`` or ``(h, w)`` pixels. Scales are relative to the
            shorter side, so a ratio-1 box is square in pixels; for a square image this is
            exactly the paper's ``w = s_k sqrt(a)``, ``h = s_k / sqrt(a)``.
        min_scale, max_scale: ``s_min``, ``s_max`` of :func:`feature_scales`.
        aspect_ratios: per map, the ratios other than 1 (see :func:`boxes_per_location`);
            ``None`` → ``[2]`` for every map.
        clip: clip the boxes to the image (``[0, 1]``).

    Returns:
        ``Tensor[D, 4]`` normalized xyxy, ``D = sum_k f_h f_w n_k``. Order: map by map;
        within a map, locations row-major (y then x), centre ``((j + .5)/f_w, (i + .5)/f_h)``;
        within a location, ``[s_k, sqrt(s_k s_{k+1})]`` squares then ``a, 1/a`` for each ratio.
        This is the order a head must flatten its ``(B, n_k * 4, f_h, f_w)`` outputs in
        (``permute(0, 2, 3, 1)``).
    """
    sizes = [_pair(f) for f in feature_sizes]
    if aspect_ratios is None:
        aspect_ratios = [[2.0]] * len(sizes)
    if len(aspect_ratios) != len(sizes):
        raise ValueError(f"{len(sizes)} feature maps but {len(aspect_ratios)} aspect-ratio lists")
    img_h, img_w = _pair(image_size)
    short = min(img_h, img_w)
    # a scale relative to the shorter side, as a fraction of the width / height
    sx, sy = short / img_w, short / img_h
    scales = feature_scales(len(sizes), min_scale, max_scale)

    per_map = []
    for k, ((f_h, f_w), ratios) in enumerate(zip(sizes, aspect_ratios, strict=True)):
        s_k, s_extra = scales[k], math.sqrt(scales[k] * scales[k + 1])
        wh = [(s_k, s_k), (s_extra, s_extra)]
        for a in ratios:
            if a <= 0:
                raise ValueError(f"aspect ratios must be positive, got {a}")
            r = math.sqrt(a)
            wh += [(s_k * r, s_k / r), (s_k / r, s_k * r)]
        aspect = torch.tensor([sx, sy], dtype=dtype, device=device)  # [2]
        wh_t = torch.tensor(wh, dtype=dtype, device=device) * aspect  # [n,2]
        cy = (torch.arange(f_h, dtype=dtype, device=device) + 0.5) / f_h  # [f_h]
        cx = (torch.arange(f_w, dtype=dtype, device=device) + 0.5) / f_w  # [f_w]
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")  # [f_h,f_w] each
        centres = torch.stack((gx, gy), dim=-1).reshape(-1, 1, 2)  # [f_h*f_w,1,2]
        centres = centres.expand(-1, wh_t.shape[0], 2)  # [f_h*f_w,n,2]
        whs = wh_t.unsqueeze(0).expand_as(centres)  # [f_h*f_w,n,2]
        cxcywh = torch.cat((centres, whs), dim=-1).reshape(-1, 4)  # [f_h*f_w*n,4]
        per_map.append(box_convert(cxcywh, "cxcywh", "xyxy"))
    boxes = torch.cat(per_map)  # [D,4]
    if clip:
        boxes = clip_boxes_to_image(boxes, (1, 1))
    return boxes


def encode(
    gt_xyxy: Tensor, defaults_xyxy: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> Tensor:
    """Regression targets of ground-truth boxes relative to their default boxes (page 5 of the SSD paper).

    Args:
        gt_xyxy: ``Tensor[D, 4]`` xyxy, the ground truth assigned to each default box, with
            ``x1 < x2`` and ``y1 < y2`` (a zero-size box would give ``-inf``).
        defaults_xyxy: ``Tensor[D, 4]`` xyxy, same units as ``gt_xyxy``, positive size.
        variances: ``(v_centre, v_size)``.

    Returns:
        ``Tensor[D, 4]``: ``((gx - dx)/(dw v_c), (gy - dy)/(dh v_c), log(gw/dw)/v_s, log(gh/dh)/v_s)``.
    """
    v_c, v_s = variances
    g = box_convert(gt_xyxy, "xyxy", "cxcywh")  # [D,4]
    d = box_convert(defaults_xyxy, "xyxy", "cxcywh")  # [D,4]
    centre = (g[..., :2] - d[..., :2]) / (d[..., 2:] * v_c)  # [D,2]
    size = torch.log(g[..., 2:] / d[..., 2:]) / v_s  # [D,2]
    return torch.cat((centre, size), dim=-1)  # [D,4]


def decode(
    offsets: Tensor, defaults_xyxy: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES
) -> Tensor:
    """Boxes from predicted offsets: the inverse of :func:`encode`.

    The size terms are clamped to :data:`BBOX_XFORM_CLIP` before ``exp`` (as torchvision's
    ``BoxCoder``), so any finite offsets give finite boxes.

    Args:
        offsets: ``Tensor[..., D, 4]`` (e.g. ``[D, 4]`` or ``[B, D, 4]``).
        defaults_xyxy: ``Tensor[D, 4]`` xyxy.
        variances: ``(v_centre, v_size)``, as given to :func:`encode`.

    Returns:
        ``Tensor[..., D, 4]`` xyxy in the units of ``defaults_xyxy`` (not clipped).
    """
    v_c, v_s = variances
    d = box_convert(defaults_xyxy, "xyxy", "cxcywh")  # [D,4]
    centre = d[..., :2] + offsets[..., :2] * v_c * d[..., 2:]  # [...,D,2]
    log_size = (offsets[..., 2:] * v_s).clamp(max=BBOX_XFORM_CLIP)  # [...,D,2]
    size = d[..., 2:] * torch.exp(log_size)  # [...,D,2]
    return torch.cat((centre - 0.5 * size, centre + 0.5 * size), dim=-1)  # [...,D,4]


def match(gt_boxes: Tensor, defaults: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Assign each default box a ground truth or :data:`BACKGROUND` (page 3, "Matching strategy").

    1. every default box whose best IoU with a ground truth is ``>= iou_threshold`` takes
       that ground truth (ties: the lower ground-truth index);
    2. every ground truth takes its best default box, even if that IoU is below the
       threshold (or zero), overriding step 1. Should two ground truths share a best
       default box, the one with the higher IoU there keeps it (ties: the later one).

    Args:
        gt_boxes: ``Tensor[G, 4]`` xyxy (``G`` may be 0).
        defaults: ``Tensor[D, 4]`` xyxy, same units.

    Returns:
        ``Tensor[D]`` int64: the index into ``gt_boxes``, or :data:`BACKGROUND`.
    """
    num_defaults = defaults.shape[0]
    matched = torch.full((num_defaults,), BACKGROUND, dtype=torch.long, device=defaults.device)  # [D]
    if gt_boxes.shape[0] == 0 or num_defaults == 0:
        return matched
    iou = box_iou(gt_boxes, defaults)  # [G,D]
    best_iou, best_gt = iou.max(dim=0)  # [D], [D]
    matched = torch.where(best_iou >= iou_threshold, best_gt, matched)  # [D]
    forced_iou, forced_default = iou.max(dim=1)  # [G], [G]
    # weakest claim first, so that the strongest claim on a shared default box is written last
    for g in torch.argsort(forced_iou, stable=True).tolist():
        matched[forced_default[g]] = g
    return matched


def hard_negative_mining(
    conf_loss: Tensor, positive: Tensor, ratio: float = 3.0, min_negatives: int = 0
) -> Tensor:
    """The negatives to train on: per image, the highest-loss ones (page 6, "Hard negative mining").

    An image with ``P`` positives keeps ``floor(ratio * P)`` negatives, at least
    ``min_negatives``, at most all its negatives. So with the default ``min_negatives=0``
    an image with no positives keeps no negatives; an ``ssd`` head passes
    ``min_negatives > 0`` for images without objects to still teach "background".
    Ties in loss go to the lower default-box index, so exactly that many are kept.

    Args:
        conf_loss: ``Tensor[B, D]`` float, per-box classification loss (no gradient is taken).
        positive: ``Tensor[B, D]`` bool.

    Returns:
        ``Tensor[B, D]`` bool: the kept negatives (never a positive box).
    """
    loss = conf_loss.detach().masked_fill(positive, float("-inf"))  # [B,D]
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices  # [B,D]
    rank = torch.argsort(order, dim=1)  # [B,D] position of each box in `order`
    num_pos = positive.sum(dim=1)  # [B]
    num_neg = torch.floor(num_pos.to(torch.float64) * ratio).long()  # [B]
    num_neg = num_neg.clamp(min=min_negatives)
    num_neg = torch.minimum(num_neg, positive.shape[1] - num_pos)  # [B]
    return rank < num_neg.unsqueeze(1)  # [B,D]


def ssd_loss(
    cls_logits: Tensor,
    box_offsets: Tensor,
    targets: Sequence[tuple[Tensor, Tensor]],
    defaults: Tensor,
    *,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 3,
    alpha: float = 1.0,
) -> dict[str, Tensor]:
    """The SSD training loss ``L = (L_conf + alpha L_loc) / N`` (page 5, eq. 1 of the SSD paper).

    ``L_conf`` is softmax cross-entropy over the positives and the hard negatives of
    :func:`hard_negative_mining` (``neg_pos_ratio`` : 1); ``L_loc`` is smooth-L1 between
    ``box_offsets`` and :func:`encode`'s targets, on positives only; ``N`` is the number of
    matched (positive) default boxes in the batch, taken as 1 when it is 0, so the loss
    stays finite. An image without objects has no positives and contributes only its
    ``min_negatives`` hardest negatives.

    Args:
        cls_logits: ``Tensor[B, D, C + 1]``, class :data:`BACKGROUND_CLASS` (0) is background.
        box_offsets: ``Tensor[B, D, 4]``, predicted :func:`encode` offsets.
        targets: per image ``(boxes, labels)``: ``Tensor[G, 4]`` normalized xyxy (the units of
            ``defaults``) and ``Tensor[G]`` int64 in ``1..C``; ``G`` may be 0.
        defaults: ``Tensor[D, 4]`` normalized xyxy, from :func:`default_boxes`.

    Returns:
        ``{"loss", "loss_conf", "loss_loc"}`` scalar tensors, ``loss = loss_conf + alpha * loss_loc``
        (each already divided by ``N``).
    """
    batch, num_defaults, num_outputs = cls_logits.shape
    if len(targets) != batch:
        raise ValueError(f"{batch} images of logits but {len(targets)} targets")
    cls_targets, box_targets = [], []
    for boxes, labels in targets:
        boxes = boxes.to(defaults)  # [G,4]
        matched = match(boxes, defaults, iou_threshold)  # [D]
        if boxes.shape[0] == 0:
            cls_targets.append(torch.full_like(matched, BACKGROUND_CLASS))
            box_targets.append(torch.zeros_like(defaults))
            continue
        pos = matched != BACKGROUND  # [D]
        safe = matched.clamp(min=0)  # [D] background → gt 0, masked out below
        labels = labels.to(device=defaults.device, dtype=torch.long)
        cls_targets.append(torch.where(pos, labels[safe], BACKGROUND_CLASS))  # [D]
        box_targets.append(encode(boxes[safe], defaults, variances))  # [D,4]
    cls_target = torch.stack(cls_targets)  # [B,D]
    box_target = torch.stack(box_targets)  # [B,D,4]
    positive = cls_target != BACKGROUND_CLASS  # [B,D]

    ce = F.cross_entropy(
        cls_logits.reshape(-1, num_outputs), cls_target.reshape(-1), reduction="none"
    ).view(batch, num_defaults)  # [B,D]
    negative = hard_negative_mining(ce, positive, neg_pos_ratio, min_negatives)  # [B,D]
    loss_conf = ce[positive | negative].sum()
    loss_loc = F.smooth_l1_loss(box_offsets[positive], box_target[positive], reduction="sum", beta=1.0)
    n = positive.sum().clamp(min=1).to(cls_logits.dtype)
    loss_conf, loss_loc = loss_conf / n, loss_loc / n
    return {"loss": loss_conf + alpha * loss_loc, "loss_conf": loss_conf, "loss_loc": loss_loc}


def postprocess(
    cls_logits: Tensor,
    box_offsets: Tensor,
    defaults: Tensor,
    image_size: int | Sequence[int],
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    topk_candidates: int = 400,
    detections_per_img: int = 200,
    variances: Sequence[float] = DEFAULT_VARIANCES,
) -> list[dict[str, Tensor]]:
    """Detections from the head's outputs (as torchvision's ``SSD.postprocess_detections``).

    Per image: softmax → decode and clip to the image → per class ``1..C``: keep scores
    ``> score_thresh``, the ``topk_candidates`` best → class-wise NMS
    (:func:`torchvision.ops.batched_nms`, IoU ``> nms_thresh`` suppressed) → the
    ``detections_per_img`` best. Equal scores are ordered by class, then default-box
    index (lower first), so the result does not depend on how a sort breaks ties.

    Args:
        cls_logits: ``Tensor[B, D, C + 1]`` (class 0 is background).
        box_offsets: ``Tensor[B, D, 4]``.
        defaults: ``Tensor[D, 4]`` normalized xyxy.
        image_size: ``s`` or ``(h, w)``, the pixels the boxes are returned in.

    Returns:
        per image ``{"boxes": Tensor[K, 4] float pixels xyxy, "scores": Tensor[K] float,
        "labels": Tensor[K] int64 in 1..C}``, by decreasing score.
    """
    img_h, img_w = _pair(image_size)
    scale = torch.tensor([img_w, img_h, img_w, img_h], dtype=box_offsets.dtype, device=box_offsets.device)
    probs = F.softmax(cls_logits, dim=-1)  # [B,D,C+1]
    boxes_all = decode(box_offsets, defaults, variances) * scale  # [B,D,4] pixels
    boxes_all = clip_boxes_to_image(boxes_all, (img_h, img_w))  # [B,D,4]
    num_classes = cls_logits.shape[-1] - 1

    results = []
    for boxes, scores in zip(boxes_all, probs, strict=True):  # [D,4], [D,C+1]
        cand_boxes, cand_scores, cand_labels = [], [], []
        for label in range(1, num_classes + 1):
            score = scores[:, label]  # [D]
            idx = torch.nonzero(score > score_thresh).squeeze(1)  # [n] ascending
            order = torch.sort(score[idx], descending=True, stable=True).indices[:topk_candidates]  # [k]
            idx = idx[order]
            cand_boxes.append(boxes[idx])
            cand_scores.append(score[idx])
            cand_labels.append(torch.full_like(idx, label))
        c_boxes = torch.cat(cand_boxes)  # [M,4]
        c_scores = torch.cat(cand_scores)  # [M]
        c_labels = torch.cat(cand_labels)  # [M]
        # one total order (score, then class, then default index) handed to NMS as strictly
        # decreasing ranks, so NMS's own (unstable) sort cannot reorder ties
        order = torch.sort(c_scores, descending=True, stable=True).indices  # [M]
        c_boxes, c_scores, c_labels = c_boxes[order], c_scores[order], c_labels[order]
        ranks = torch.arange(c_scores.numel(), 0, -1, dtype=torch.float32, device=c_scores.device)  # [M]
        keep = batched_nms(c_boxes, ranks, c_labels, nms_thresh)[:detections_per_img]  # [K]
        results.append({"boxes": c_boxes[keep], "scores": c_scores[keep], "labels": c_labels[keep]})
    return results
