"""The SSD head's export-time decoding: :func:`export_detections`, traceable, with one NMS for the whole batch.

What :func:`.ssd_boxes.postprocess` does per image with a Python loop (softmax,
decoding, clipping, per class the ``topk_candidates`` best above ``score_thresh``,
per-class NMS, the ``detections_per_img`` best), as tensor operations of fixed
shape for every batch size: one :func:`torchvision.ops.nms` over all images and
classes at once (boxes of different (image, class) pairs moved apart so they
never overlap), which exports to ONNX's own ``NonMaxSuppression``; then the
kept candidates' scores per image, the ``detections_per_img`` best of them,
padded (score 0, label -1, box 0) with a ``count``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms

from .ssd_boxes import decode


def export_detections(
    cls_logits: Tensor,
    box_offsets: Tensor,
    defaults: Tensor,
    input_size: Sequence[int],
    *,
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    detections_per_img: int,
    variances: Sequence[float],
) -> dict[str, Tensor]:
    """``{"boxes": (B, K, 4) xyxy input pixels, "scores": (B, K), "labels": (B, K) int64 in 0..C-1 (-1 for
    padding), "count": (B,) int64}`` with ``K = detections_per_img`` (at most classes × candidates)."""
    height, width = int(input_size[0]), int(input_size[1])
    batch, num_defaults, _ = cls_logits.shape
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    probs = F.softmax(cls_logits.float(), dim=-1)[..., 1:].transpose(1, 2)  # [B,C,D], background dropped
    boxes = decode(box_offsets.float(), defaults, variances) * scale  # [B,D,4] pixels
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    num_classes = probs.shape[1]
    k = min(topk_candidates, num_defaults)
    scores, index = probs.topk(k, dim=2)  # [B,C,k]
    cand = torch.gather(boxes[:, None].expand(-1, num_classes, -1, -1), 2, index[..., None].expand(-1, -1, -1, 4))
    flat_boxes = cand.reshape(-1, 4)  # [B*C*k, 4]
    flat_scores = scores.reshape(-1)
    group = torch.arange(batch * num_classes, dtype=torch.float32).repeat_interleave(k)  # (image, class) pair
    offset = group[:, None] * (max(width, height) + 1.0)
    keep = nms(flat_boxes + offset, flat_scores, nms_thresh)  # [M]
    kept = torch.zeros_like(flat_scores).index_put((keep,), flat_scores[keep])
    kept = torch.where(kept > score_thresh, kept, torch.zeros_like(kept)).reshape(batch, num_classes * k)
    top = min(detections_per_img, num_classes * k)
    top_scores, top_index = kept.topk(top, dim=1)  # [B,K]
    valid = top_scores > 0
    out_boxes = torch.gather(cand.reshape(batch, num_classes * k, 4), 1, top_index[..., None].expand(-1, -1, 4))
    labels = torch.div(top_index, k, rounding_mode="floor")
    return {
        "boxes": torch.where(valid[..., None], out_boxes, torch.zeros_like(out_boxes)),
        "scores": top_scores,
        "labels": torch.where(valid, labels, torch.full_like(labels, -1)),
        "count": valid.sum(dim=1),
    }


__all__ = ["export_detections"]
