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
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image, nms

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


def encode(gt_xyxy: Tensor, defaults_xyxy: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
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


def decode(offsets: Tensor, defaults_xyxy: Tensor, variances: Sequence[float] = DEFAULT_VARIANCES) -> Tensor:
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
    valid = torch.ones(1, gt_boxes.shape[0], dtype=torch.bool, device=defaults.device)
    return match_batch(gt_boxes.unsqueeze(0).to(defaults), valid, defaults, iou_threshold)[0]


def match_batch(gt_boxes: Tensor, valid: Tensor, defaults: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """:func:`match` for a batch of images at once, their ground truths padded to the same count.

    Args:
        gt_boxes: ``Tensor[B, G, 4]`` xyxy; rows where ``valid`` is False are padding (any values).
        valid: ``Tensor[B, G]`` bool.
        defaults: ``Tensor[D, 4]`` xyxy, same units.

    Returns:
        ``Tensor[B, D]`` int64: per image, the index into its ``G`` ground truths, or :data:`BACKGROUND`.
    """
    batch, num_gt = valid.shape
    num_defaults = defaults.shape[0]
    matched = torch.full((batch, num_defaults), BACKGROUND, dtype=torch.long, device=defaults.device)  # [B,D]
    if num_gt == 0 or num_defaults == 0:
        return matched
    iou = box_iou(gt_boxes.reshape(-1, 4), defaults).view(batch, num_gt, num_defaults)  # [B,G,D]
    iou = iou.masked_fill(~valid.unsqueeze(2), -1.0)  # padding never wins
    best_iou, best_gt = iou.max(dim=1)  # [B,D], [B,D]
    matched = torch.where(best_iou >= iou_threshold, best_gt, matched)  # [B,D]
    # every valid ground truth claims its best default box; on a shared box the higher IoU wins,
    # ties go to the later ground truth
    forced_iou, forced_default = iou.max(dim=2)  # [B,G], [B,G]
    claims = torch.zeros(batch, num_gt, num_defaults, dtype=torch.bool, device=defaults.device)  # [B,G,D]
    claims = claims.scatter_(2, forced_default.unsqueeze(2), True) & valid.unsqueeze(2)  # (one_hot would sync)
    claim_iou = torch.where(claims, forced_iou.unsqueeze(2), float("-inf"))  # [B,G,D]
    strongest = claims & (claim_iou == claim_iou.max(dim=1, keepdim=True).values)  # [B,G,D]
    gt_index = torch.arange(num_gt, device=defaults.device).view(1, -1, 1)  # [1,G,1]
    winner = torch.where(strongest, gt_index, -1).max(dim=1).values  # [B,D], -1 where unclaimed
    return torch.where(winner >= 0, winner, matched)  # [B,D]


def hard_negative_mining(conf_loss: Tensor, positive: Tensor, ratio: float = 3.0, min_negatives: int = 0) -> Tensor:
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


def _pad_targets(targets: Sequence[tuple[Tensor, Tensor]], defaults: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``(boxes [G_i, 4], labels [G_i])`` → padded ``boxes [B, G, 4]`` (padding: zeros),
    ``labels [B, G]`` int64 and ``valid [B, G]`` bool, ``G = max G_i``."""
    device = defaults.device
    boxes = pad_sequence([b.to(defaults).reshape(-1, 4) for b, _ in targets], batch_first=True)  # [B,G,4]
    labels = pad_sequence([lab.to(device=device, dtype=torch.long).reshape(-1) for _, lab in targets], batch_first=True)
    counts = torch.tensor([int(b.shape[0]) for b, _ in targets], device=device)  # [B]
    valid = torch.arange(boxes.shape[1], device=device).unsqueeze(0) < counts.unsqueeze(1)  # [B,G]
    return boxes, labels, valid


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
        (each already divided by ``N``). :func:`ssd_loss_padded` is the same on padded targets.
    """
    if len(targets) != cls_logits.shape[0]:
        raise ValueError(f"{cls_logits.shape[0]} images of logits but {len(targets)} targets")
    gt_boxes, gt_labels, valid = _pad_targets(targets, defaults)  # [B,G,4], [B,G], [B,G]
    return ssd_loss_padded(
        cls_logits,
        box_offsets,
        gt_boxes,
        gt_labels,
        valid,
        defaults,
        iou_threshold=iou_threshold,
        variances=variances,
        neg_pos_ratio=neg_pos_ratio,
        min_negatives=min_negatives,
        alpha=alpha,
    )


def ssd_loss_padded(
    cls_logits: Tensor,
    box_offsets: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    valid: Tensor,
    defaults: Tensor,
    *,
    iou_threshold: float = 0.5,
    variances: Sequence[float] = DEFAULT_VARIANCES,
    neg_pos_ratio: float = 3.0,
    min_negatives: int = 3,
    alpha: float = 1.0,
) -> dict[str, Tensor]:
    """:func:`ssd_loss` on the ground truths of a batch padded to one count ``G``, without a host
    synchronization (masked sums, no boolean indexing, nothing read back), so a GPU step never waits.

    Args:
        gt_boxes: ``Tensor[B, G, 4]`` normalized xyxy; rows where ``valid`` is False are padding (any
            finite values).
        gt_labels: ``Tensor[B, G]`` int64 in ``1..C`` where valid.
        valid: ``Tensor[B, G]`` bool.
    """
    batch, num_defaults, num_outputs = cls_logits.shape
    # padding rows become the unit box, so that encoding the boxes stays finite everywhere
    unit = torch.zeros_like(gt_boxes)
    unit[..., 2:] = 1.0
    gt_boxes = torch.where(valid.unsqueeze(2), gt_boxes.to(defaults), unit)  # [B,G,4]
    matched = match_batch(gt_boxes, valid, defaults, iou_threshold)  # [B,D]
    safe = matched.clamp(min=0)  # [B,D] background → gt 0, masked out below
    assigned_labels = gt_labels.gather(1, safe) if gt_labels.shape[1] else torch.zeros_like(safe)  # [B,D]
    cls_target = torch.where(matched != BACKGROUND, assigned_labels, BACKGROUND_CLASS)  # [B,D]
    if gt_boxes.shape[1]:
        assigned = gt_boxes.gather(1, safe.unsqueeze(2).expand(-1, -1, 4))  # [B,D,4]
        box_target = encode(assigned, defaults, variances)  # [B,D,4] (finite: padding is a unit box)
    else:
        box_target = torch.zeros_like(box_offsets)
    positive = matched != BACKGROUND  # [B,D]

    ce = F.cross_entropy(cls_logits.reshape(-1, num_outputs), cls_target.reshape(-1), reduction="none").view(
        batch, num_defaults
    )  # [B,D]
    negative = hard_negative_mining(ce, positive, neg_pos_ratio, min_negatives)  # [B,D]
    loss_conf = (ce * (positive | negative)).sum()
    smooth = F.smooth_l1_loss(box_offsets, box_target.to(box_offsets), reduction="none", beta=1.0)  # [B,D,4]
    loss_loc = (smooth.sum(dim=2) * positive).sum()
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
    probs = F.softmax(cls_logits, dim=-1)  # [B,D,C+1]
    batch, num_defaults, num_outputs = probs.shape
    num_classes = num_outputs - 1

    # candidates of all images and classes at once: (image, class, default) above the threshold, in
    # row-major order (so by default index within an image and class) ...
    scores = probs[..., 1:].transpose(1, 2)  # [B,C,D]
    image, cls, index = torch.nonzero(scores > score_thresh, as_tuple=True)  # [M] each
    c_scores = scores[image, cls, index]  # [M]
    # ... ordered by (image, class), then score (equal scores by default index: the sort is stable) ...
    group = image * num_classes + cls  # [M] one id per (image, class)
    order = torch.sort(_descending_key(group, c_scores), stable=True).indices  # [M]
    group = group[order]
    # ... and cut to the topk_candidates best of each (image, class)
    order = order[_rank_in_group(group, batch * num_classes) < topk_candidates]
    image, cls, index, c_scores = image[order], cls[order], index[order], c_scores[order]

    # one total order per image: score, then class, then default index (what the stable sort keeps of
    # the order above); as strictly decreasing ranks, so that NMS's own (unstable) sort cannot reorder
    # ties, and its result comes out grouped by image
    order = torch.sort(_descending_key(image, c_scores), stable=True).indices  # [M]
    image, cls, index, c_scores = image[order], cls[order], index[order], c_scores[order]
    offsets = box_offsets[image, index]  # [M,4]
    boxes = decode(offsets, defaults[index], variances)  # [M,4] normalized
    scale = torch.stack([boxes.new_full((), float(v)) for v in (img_w, img_h, img_w, img_h)])
    boxes = clip_boxes_to_image(boxes * scale, (img_h, img_w))  # [M,4] pixels
    ranks = torch.arange(c_scores.numel(), 0, -1, dtype=torch.float32, device=c_scores.device)  # [M]
    # class-wise NMS for the whole batch: image × class ids never suppress across images
    keep = _capped_nms(boxes, ranks, image, image * num_classes + cls, batch, nms_thresh, detections_per_img)
    counts = torch.bincount(image[keep], minlength=batch).tolist()  # detections per image
    labels = cls + 1
    return [{"boxes": boxes[k], "scores": c_scores[k], "labels": labels[k]} for k in keep.split(counts)]


def _capped_nms(
    boxes: Tensor, ranks: Tensor, image: Tensor, ids: Tensor, batch: int, iou_threshold: float, cap: int
) -> Tensor:
    """The first ``cap`` survivors per image of class-wise NMS over ``ids`` (``Tensor[M]`` each; candidates
    grouped by ``image``, by decreasing ``ranks`` within it), as indices ``Tensor[K]`` in that order.

    Whether a candidate survives depends only on the better-ranked ones, so NMS over each image's best
    :data:`_PREFIX_FACTOR` × ``cap`` candidates keeps exactly what NMS over all of them keeps among those:
    when that already gives ``cap`` survivors (or covers every candidate) the rest cannot change the
    result. Only images that need more get a second pass over all their candidates. At 1k SSD default
    boxes and 20 classes this skips most of the per-class NMS work (bench/postprocess.py).
    """
    position = _rank_in_group(image, batch)  # [M] 0 for each image's best candidate
    first = torch.nonzero(position < _PREFIX_FACTOR * cap).squeeze(1)  # [P]
    keep = first[_class_wise_nms(boxes[first], ranks[first], ids[first], iou_threshold)]  # [K1]
    kept = torch.bincount(image[keep], minlength=batch)  # [B]
    candidates = torch.bincount(image, minlength=batch)  # [B]
    unfinished = (kept < cap) & (candidates > _PREFIX_FACTOR * cap)  # [B]
    # unconditionally (usually on no candidate): a branch on the data would cost a GPU a synchronization
    # whose count depended on the images
    rest = torch.nonzero(unfinished[image]).squeeze(1)  # every candidate of those images
    again = rest[_class_wise_nms(boxes[rest], ranks[rest], ids[rest], iou_threshold)]
    keep = torch.sort(torch.cat((keep[~unfinished[image[keep]]], again))).values  # by image, then rank
    return keep[_rank_in_group(image[keep], batch) < cap]


#: How many times the per-image cap of candidates :func:`_capped_nms` gives NMS first.
_PREFIX_FACTOR = 2


def _class_wise_nms(boxes: Tensor, ranks: Tensor, ids: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each id (``Tensor[M]`` int64) of ``boxes`` ``[M, 4]`` with distinct ``ranks`` ``[M]``;
    the kept indices by decreasing rank. On a GPU one :func:`torchvision.ops.batched_nms` call; on the
    CPU one ``nms`` per id over its own slice (``batched_nms`` falls back there to one mask over all
    ``M`` boxes per id, which for a batch of images costs the number of images times more)."""
    if boxes.device.type != "cpu":
        return batched_nms(boxes, ranks, ids, iou_threshold)
    by_id = torch.sort(ids, stable=True).indices  # [M]
    counts = torch.bincount(ids[by_id]).tolist() if ids.numel() else []
    kept = [idx[nms(boxes[idx], ranks[idx], iou_threshold)] for idx in by_id.split(counts) if idx.numel()]
    if not kept:
        return by_id[:0]
    keep = torch.cat(kept)
    return keep[torch.argsort(ranks[keep], descending=True)]


def _descending_key(group: Tensor, scores: Tensor) -> Tensor:
    """An int64 sort key (``Tensor[M]``): ascending ``group`` (int64 ``>= 0``), then descending ``scores``
    (float in ``[0, 1]``): the bits of a non-negative float32 order like its value, so one integer sort
    does what two stable sorts would."""
    bits = scores.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)  # [M] in [0, 2^31)
    return (group << 31) | ((1 << 31) - 1 - bits)


def _rank_in_group(group: Tensor, num_groups: int) -> Tensor:
    """For ``group`` ids sorted in non-decreasing order (``Tensor[M]`` int64 in ``0..num_groups-1``), each
    element's position within its group (0 for the first of each group), without leaving the device."""
    counts = torch.bincount(group, minlength=num_groups)  # [G]
    starts = torch.cumsum(counts, 0) - counts  # [G]
    return torch.arange(group.numel(), device=group.device) - starts[group]
