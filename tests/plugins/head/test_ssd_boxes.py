"""SSD box helpers: default boxes, box coding, matching, hard negative mining, loss, post-processing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, clip_boxes_to_image

from vision_pipe_plugins.head.ssd_boxes import (
    BACKGROUND,
    BBOX_XFORM_CLIP,
    boxes_per_location,
    decode,
    default_boxes,
    encode,
    feature_scales,
    hard_negative_mining,
    match,
    match_batch,
    postprocess,
    ssd_loss,
)

SSD300_MAPS = [38, 19, 10, 5, 3, 1]
SSD300_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def _random_boxes(n: int, generator: torch.Generator, lo: float = 0.05, hi: float = 0.5) -> torch.Tensor:
    """``n`` normalized xyxy boxes of positive size."""
    centre = torch.rand(n, 2, generator=generator)
    size = lo + (hi - lo) * torch.rand(n, 2, generator=generator)
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


# ----------------------------------------------------------------------------
# default boxes
# ----------------------------------------------------------------------------


def test_feature_scales_are_linear_with_a_final_one() -> None:
    scales = feature_scales(6, 0.2, 0.9)
    assert scales == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    assert feature_scales(1, 0.3, 0.9) == pytest.approx([0.3, 1.0])


def test_default_boxes_small_map_by_hand() -> None:
    # one 2×2 map, s = 0.5, extra scale sqrt(0.5 * 1), ratios 1 and 2 (and 1/2)
    boxes = default_boxes([2], 100, min_scale=0.5, max_scale=0.5, aspect_ratios=[[2]], clip=False)
    assert boxes.shape == (2 * 2 * 4, 4)
    s, e, r = 0.5, math.sqrt(0.5), math.sqrt(2)
    per_location = [(s, s), (e, e), (s * r, s / r), (s / r, s * r)]
    expected = []
    for cy in (0.25, 0.75):  # row-major: y, then x
        for cx in (0.25, 0.75):
            for w, h in per_location:
                expected.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    torch.testing.assert_close(boxes, torch.tensor(expected), atol=1e-6, rtol=0)

    clipped = default_boxes([2], 100, min_scale=0.5, max_scale=0.5, aspect_ratios=[[2]])
    torch.testing.assert_close(clipped, torch.tensor(expected).clamp(0, 1), atol=1e-6, rtol=0)
    # first location, ratio 2: x from 0.25 - 0.3536 → 0 (clipped), y from 0.25 - 0.1768
    torch.testing.assert_close(clipped[2], torch.tensor([0.0, 0.0732233, 0.6035534, 0.4267767]))


def test_default_boxes_ssd300_count() -> None:
    assert boxes_per_location(SSD300_RATIOS) == [4, 6, 6, 6, 4, 4]
    boxes = default_boxes(SSD300_MAPS, 300, 0.2, 0.9, SSD300_RATIOS)
    assert boxes.shape == (8732, 4)
    assert boxes.dtype == torch.float32
    assert bool((boxes >= 0).all() and (boxes <= 1).all())
    assert bool((boxes[:, 2:] > boxes[:, :2]).all())
    unclipped = default_boxes(SSD300_MAPS, 300, 0.2, 0.9, SSD300_RATIOS, clip=False)
    assert bool((unclipped < 0).any() and (unclipped > 1).any())
    # the last map (1×1) is centred and its first box has scale s_max
    last = unclipped[-4]
    torch.testing.assert_close(last, torch.tensor([0.05, 0.05, 0.95, 0.95]))


def test_default_boxes_ratio_one_is_square_in_pixels() -> None:
    boxes = default_boxes([(2, 4)], (100, 200), 0.4, 0.4, [[]], clip=False)
    assert boxes.shape == (2 * 4 * 2, 4)
    w = (boxes[:, 2] - boxes[:, 0]) * 200
    h = (boxes[:, 3] - boxes[:, 1]) * 100
    torch.testing.assert_close(w, h)
    torch.testing.assert_close(h[0], torch.tensor(40.0))


def test_default_boxes_rejects_mismatched_ratio_lists() -> None:
    with pytest.raises(ValueError, match="aspect-ratio"):
        default_boxes([4, 2], 64, 0.2, 0.9, [[2]])


# ----------------------------------------------------------------------------
# box coding
# ----------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    gt = _random_boxes(500, g)
    defaults = _random_boxes(500, g)
    offsets = encode(gt, defaults, (0.1, 0.2))
    assert offsets.shape == (500, 4)
    torch.testing.assert_close(decode(offsets, defaults, (0.1, 0.2)), gt, atol=1e-5, rtol=0)
    # batched offsets broadcast over the default boxes
    batched = decode(torch.stack((offsets, offsets)), defaults)
    assert batched.shape == (2, 500, 4)
    torch.testing.assert_close(batched[1], gt, atol=1e-5, rtol=0)


def test_encode_by_hand() -> None:
    default = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # centre (1, 1), size 2
    gt = torch.tensor([[0.5, 1.0, 2.5, 5.0]])  # centre (1.5, 3), size (2, 4)
    expected = torch.tensor([[0.5 / 2 / 0.1, 2.0 / 2 / 0.1, 0.0, math.log(2) / 0.2]])
    torch.testing.assert_close(encode(gt, default), expected)


def test_decode_clamps_before_exp() -> None:
    defaults = torch.tensor([[0.0, 0.0, 0.1, 0.2], [0.4, 0.4, 0.6, 0.6]])
    huge = torch.full((2, 4), 1e6)
    boxes = decode(huge, defaults)
    assert bool(torch.isfinite(boxes).all())
    widths = boxes[:, 2] - boxes[:, 0]
    expected = torch.tensor([0.1, 0.2]) * math.exp(BBOX_XFORM_CLIP)
    torch.testing.assert_close(widths, expected, rtol=1e-4, atol=0)
    tiny = decode(torch.full((2, 4), -1e6), defaults)
    assert bool(torch.isfinite(tiny).all())


# ----------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------


def test_match_by_hand() -> None:
    defaults = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],  # gt0: IoU 1
            [1.0, 0.0, 3.0, 2.0],  # gt0: IoU 2/6 < 0.5 and not gt0's best → background
            [4.0, 4.0, 6.0, 6.0],  # gt1: IoU 4/9 < 0.5, but gt1's best → matched anyway
            [10.0, 10.0, 12.0, 12.0],  # nothing → background
            [0.0, 0.0, 2.0, 2.2],  # gt0: IoU 4/4.4 ≥ 0.5 → gt0
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 7.0, 7.0]])
    matched = match(gt, defaults, 0.5)
    assert matched.dtype == torch.long
    assert matched.tolist() == [0, BACKGROUND, 1, BACKGROUND, 0]
    # lowering the threshold lets default 1 take gt0
    assert match(gt, defaults, 0.3).tolist() == [0, 0, 1, BACKGROUND, 0]


def test_match_shared_best_default_goes_to_the_stronger_claim() -> None:
    defaults = torch.tensor([[0.0, 0.0, 4.0, 4.0], [20.0, 20.0, 21.0, 21.0]])
    gt = torch.tensor([[0.0, 0.0, 4.0, 3.0], [0.0, 0.0, 1.0, 1.0]])  # IoU 0.75 and 1/16 with default 0
    assert match(gt, defaults, 0.5).tolist() == [0, BACKGROUND]
    assert match(gt.flip(0), defaults, 0.5).tolist() == [1, BACKGROUND]


def test_match_without_ground_truth() -> None:
    defaults = default_boxes([2], 8, 0.5, 0.5, [[]])
    assert match(torch.zeros(0, 4), defaults, 0.5).tolist() == [BACKGROUND] * defaults.shape[0]


# ----------------------------------------------------------------------------
# hard negative mining
# ----------------------------------------------------------------------------


def test_hard_negative_mining_keeps_three_per_positive() -> None:
    g = torch.Generator().manual_seed(1)
    loss = torch.rand(2, 20, generator=g)
    positive = torch.zeros(2, 20, dtype=torch.bool)
    positive[0, [3, 7]] = True  # 2 positives → 6 negatives
    positive[1, 5] = True  # 1 positive → 3 negatives
    loss[0, 3] = 10.0  # a positive's high loss must not take a negative's place
    negative = hard_negative_mining(loss, positive, ratio=3)
    assert negative.sum(dim=1).tolist() == [6, 3]
    assert not bool((negative & positive).any())
    for b in range(2):
        candidates = loss[b].masked_fill(positive[b], float("-inf"))
        expected = set(torch.topk(candidates, int(negative[b].sum())).indices.tolist())
        assert set(torch.nonzero(negative[b]).squeeze(1).tolist()) == expected


def test_hard_negative_mining_without_positives_and_with_few_negatives() -> None:
    loss = torch.arange(10.0).repeat(3, 1)  # [3,10]
    positive = torch.zeros(3, 10, dtype=torch.bool)
    positive[2, :8] = True  # 8 positives want 24 negatives; only 2 exist
    negative = hard_negative_mining(loss, positive, ratio=3)
    assert negative.sum(dim=1).tolist() == [0, 0, 2]  # no positives → no negatives (documented default)
    with_min = hard_negative_mining(loss, positive, ratio=3, min_negatives=2)
    assert torch.nonzero(with_min[0]).squeeze(1).tolist() == [8, 9]  # the two highest losses
    assert with_min[2].tolist() == [False] * 8 + [True, True]


def test_hard_negative_mining_ties_keep_exactly_the_count() -> None:
    loss = torch.ones(1, 12)
    positive = torch.zeros(1, 12, dtype=torch.bool)
    positive[0, 0] = True
    negative = hard_negative_mining(loss, positive, ratio=3)
    assert torch.nonzero(negative[0]).squeeze(1).tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------


def _small_defaults() -> torch.Tensor:
    return default_boxes([4, 2], 32, 0.3, 0.8, [[2], [2]])  # 4*4*4 + 2*2*4 = 80


def test_loss_with_only_empty_images_is_finite() -> None:
    defaults = _small_defaults()
    num_classes = 3
    logits = torch.randn(2, defaults.shape[0], num_classes + 1, requires_grad=True)
    offsets = torch.randn(2, defaults.shape[0], 4, requires_grad=True)
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    out = ssd_loss(logits, offsets, [empty, empty], defaults)
    assert set(out) == {"loss", "loss_conf", "loss_loc"}
    assert all(bool(torch.isfinite(v)) for v in out.values())
    assert out["loss_loc"].item() == 0.0
    assert out["loss_conf"].item() > 0  # the hardest negatives still teach "background"
    out["loss"].backward()
    assert bool(torch.isfinite(logits.grad).all()) and bool(torch.isfinite(offsets.grad).all())

    # without a minimum, empty images contribute nothing at all — still no division by zero
    none = ssd_loss(logits, offsets, [empty, empty], defaults, min_negatives=0)
    assert none["loss"].item() == 0.0


def test_loss_by_hand_with_uniform_logits_and_perfect_offsets() -> None:
    defaults = _small_defaults()
    num_classes = 4
    gt = torch.tensor([[0.1, 0.1, 0.45, 0.5], [0.5, 0.55, 0.95, 0.9]])
    labels = torch.tensor([2, 4])
    matched = match(gt, defaults, 0.5)
    positive = matched != BACKGROUND
    num_pos = int(positive.sum())
    assert num_pos >= 2

    logits = torch.zeros(2, defaults.shape[0], num_classes + 1)  # every CE = log(C + 1)
    offsets = torch.zeros(2, defaults.shape[0], 4)
    offsets[0, positive] = encode(gt[matched[positive]], defaults[positive])
    empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    out = ssd_loss(logits, offsets, [(gt, labels), empty], defaults, min_negatives=3, alpha=1.0)
    # image 0: P positives + 3P negatives; image 1: 3 negatives; divided by N = P
    expected_conf = (4 * num_pos + 3) * math.log(num_classes + 1) / num_pos
    assert out["loss_conf"].item() == pytest.approx(expected_conf, rel=1e-5)
    assert out["loss_loc"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(expected_conf, rel=1e-5)


# ----------------------------------------------------------------------------
# post-processing
# ----------------------------------------------------------------------------


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_postprocess(
    boxes: torch.Tensor, scores: torch.Tensor, score_thresh: float, nms_thresh: float, topk: int, cap: int
) -> list[tuple[float, int, int]]:
    """Plain greedy per-class NMS; ties in score → lower class, then lower default index first."""
    candidates = []  # (score, label, index)
    for label in range(1, scores.shape[1]):
        above = torch.nonzero(scores[:, label] > score_thresh).squeeze(1).tolist()
        cls = [(scores[i, label].item(), label, i) for i in above]
        cls.sort(key=lambda c: (-c[0], c[2]))
        candidates += cls[:topk]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    box_list = boxes.tolist()
    kept: list[tuple[float, int, int]] = []
    for cand in candidates:
        if all(k[1] != cand[1] or _iou(box_list[k[2]], box_list[cand[2]]) <= nms_thresh for k in kept):
            kept.append(cand)
    return kept[:cap]


@pytest.mark.parametrize(("topk", "cap"), [(400, 200), (7, 10)])
def test_postprocess_equals_greedy_per_class_nms(topk: int, cap: int) -> None:
    g = torch.Generator().manual_seed(2)
    num_defaults, num_classes, image_size = 120, 3, (48, 64)
    defaults = _random_boxes(num_defaults, g, 0.15, 0.45)
    # few distinct logit values → many exactly equal scores
    logits = torch.randint(0, 3, (2, num_defaults, num_classes + 1), generator=g).float()
    offsets = 0.5 * torch.randn(2, num_defaults, 4, generator=g)
    out = postprocess(
        logits,
        offsets,
        defaults,
        image_size,
        score_thresh=0.2,
        nms_thresh=0.45,
        topk_candidates=topk,
        detections_per_img=cap,
    )
    assert len(out) == 2
    scale = torch.tensor([64.0, 48.0, 64.0, 48.0])
    total_suppressed = 0
    for b in range(2):
        boxes = clip_boxes_to_image(decode(offsets[b], defaults) * scale, image_size)
        scores = F.softmax(logits[b], dim=-1)
        expected = _reference_postprocess(boxes, scores, 0.2, 0.45, topk, cap)
        got = out[b]
        assert got["labels"].dtype == torch.long
        assert got["boxes"].shape == (len(expected), 4)
        assert got["labels"].tolist() == [c[1] for c in expected]
        assert got["scores"].tolist() == [c[0] for c in expected]
        torch.testing.assert_close(got["boxes"], boxes[[c[2] for c in expected]])
        assert bool((got["boxes"] >= 0).all())
        assert bool((got["boxes"][:, 0::2] <= 64).all() and (got["boxes"][:, 1::2] <= 48).all())
        above = int((scores[:, 1:] > 0.2).sum())
        total_suppressed += above - len(expected)
        assert len(set(got["scores"].tolist())) < len(expected)  # the test really had ties
    assert total_suppressed > 0


def test_postprocess_looks_past_the_first_candidates_when_nms_removes_most_of_them() -> None:
    """NMS first runs on each image's best candidates only (:data:`_PREFIX_FACTOR` × the cap); an image
    whose best candidates are near-copies of one box needs the rest, and gets them: the result still
    equals plain greedy NMS over all candidates, for that image and for the others in the batch."""
    from vision_pipe_plugins.head.ssd_boxes import _PREFIX_FACTOR

    g = torch.Generator().manual_seed(5)
    num_defaults, num_classes, cap = 200, 2, 6
    copies = torch.tensor([[0.3, 0.3, 0.6, 0.6]]) + 0.002 * torch.rand(100, 4, generator=g)
    defaults = torch.cat((copies, _random_boxes(num_defaults - 100, g)))
    logits = torch.randn(3, num_defaults, num_classes + 1, generator=g)
    logits[0, :100, 1] += 6.0  # image 0: its 100 best candidates are one box, over and over
    logits[2, :, 1:] -= 4.0  # image 2: few candidates
    offsets = torch.zeros(3, num_defaults, 4)
    out = postprocess(logits, offsets, defaults, 32, score_thresh=0.1, nms_thresh=0.45, detections_per_img=cap)
    beyond_prefix = 0
    for b in range(3):
        boxes = clip_boxes_to_image(defaults * 32, (32, 32))
        scores = F.softmax(logits[b], dim=-1)
        expected = _reference_postprocess(boxes, scores, 0.1, 0.45, 400, cap)
        assert out[b]["labels"].tolist() == [c[1] for c in expected]
        assert out[b]["scores"].tolist() == [c[0] for c in expected]
        ordered = sorted(scores[:, 1:].flatten().tolist(), reverse=True)
        beyond_prefix += sum(ordered.index(c[0]) >= _PREFIX_FACTOR * cap for c in expected)
    assert len(out[0]["scores"]) == cap
    assert beyond_prefix > 0  # the test needed the second pass


def test_postprocess_with_nothing_above_threshold() -> None:
    defaults = _small_defaults()
    logits = torch.zeros(1, defaults.shape[0], 3)
    logits[..., 0] = 20.0  # everything is background
    out = postprocess(logits, torch.zeros(1, defaults.shape[0], 4), defaults, 32)
    assert out[0]["boxes"].shape == (0, 4)
    assert out[0]["scores"].shape == (0,) and out[0]["labels"].shape == (0,)


def test_match_batch_equals_match_per_image_with_padding() -> None:
    g = torch.Generator().manual_seed(3)
    defaults = _small_defaults()  # 80 boxes
    counts = [3, 0, 1, 5]
    images = [_random_boxes(n, g, 0.1, 0.6) for n in counts]
    images[0] = torch.cat((images[0], images[0][:1]))  # a duplicate ground truth: a tie on its best box
    gt = torch.zeros(4, 5, 4)
    valid = torch.zeros(4, 5, dtype=torch.bool)
    for i, boxes in enumerate(images):
        gt[i, : len(boxes)] = boxes
        valid[i, : len(boxes)] = True
    gt[~valid] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # padding that would match well if it counted
    batched = match_batch(gt, valid, defaults, 0.5)
    assert batched.shape == (4, 80)
    for i, boxes in enumerate(images):
        assert batched[i].tolist() == match(boxes, defaults, 0.5).tolist()
    assert batched[1].tolist() == [BACKGROUND] * 80
    # gt 3 duplicates gt 0: the later one wins gt 0's best default box (equal claims), so that box is 3
    best = int(torch.argmax(box_iou(images[0][:1], defaults)))
    assert batched[0, best].item() == 3


@pytest.mark.parametrize("seed", range(4))
def test_postprocess_of_a_batch_equals_each_image_alone(seed: int) -> None:
    """One pass over the batch (one class-wise NMS over image × class ids) gives each image what
    post-processing it alone gives, ties included (odd seeds round the logits to make many)."""
    g = torch.Generator().manual_seed(seed)
    batch, num_defaults, num_classes = 5, 300, 4
    logits = torch.randn(batch, num_defaults, num_classes + 1, generator=g)
    logits[..., 0] += 1.5
    if seed % 2:
        logits = (logits * 2).round() / 2
    offsets = 0.3 * torch.randn(batch, num_defaults, 4, generator=g)
    logits[3, :, 1:] = -20.0  # an image with nothing above the threshold
    defaults = _random_boxes(num_defaults, g).clamp(0, 1)
    kwargs = {"score_thresh": 0.05, "nms_thresh": 0.45, "topk_candidates": 40, "detections_per_img": 25}
    together = postprocess(logits, offsets, defaults, (48, 64), **kwargs)
    assert len(together) == batch and together[3]["scores"].numel() == 0
    assert max(len(r["scores"]) for r in together) == 25  # the cap applies per image
    for i in range(batch):
        alone = postprocess(logits[i : i + 1], offsets[i : i + 1], defaults, (48, 64), **kwargs)[0]
        assert torch.equal(together[i]["labels"], alone["labels"]) and torch.equal(together[i]["scores"], alone["scores"])
        torch.testing.assert_close(together[i]["boxes"], alone["boxes"])


def test_padded_loss_equals_the_loss_of_per_image_targets() -> None:
    from vision_pipe_plugins.head.ssd_boxes import ssd_loss_padded

    g = torch.Generator().manual_seed(0)
    defaults = default_boxes([(4, 4), (2, 2)], 32, aspect_ratios=[[2], [2]])
    logits = torch.randn(3, defaults.shape[0], 4, generator=g)
    offsets = torch.randn(3, defaults.shape[0], 4, generator=g)
    targets = [(_random_boxes(3, g), torch.tensor([1, 3, 2])), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]
    targets.append((_random_boxes(1, g), torch.tensor([2])))
    listed = ssd_loss(logits, offsets, targets, defaults)
    boxes = torch.full((3, 3, 4), 7.0)  # padding rows hold anything finite
    labels = torch.zeros(3, 3, dtype=torch.long)
    valid = torch.zeros(3, 3, dtype=torch.bool)
    for i, (b, lab) in enumerate(targets):
        boxes[i, : len(lab)], labels[i, : len(lab)], valid[i, : len(lab)] = b, lab, True
    padded = ssd_loss_padded(logits, offsets, boxes, labels, valid, defaults)
    for key in ("loss", "loss_conf", "loss_loc"):
        torch.testing.assert_close(padded[key], listed[key])
    assert listed["loss_loc"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (host synchronizations)")
def test_the_training_loss_never_synchronizes_and_detection_a_constant_number_of_times() -> None:
    import warnings

    from vision_pipe import pack_targets
    from vision_pipe_plugins.head.ssd_boxes import ssd_loss_padded

    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    defaults = default_boxes([(s, s) for s in SSD300_MAPS], 300, aspect_ratios=SSD300_RATIOS).to(device)

    def inputs(batch: int) -> tuple[torch.Tensor, ...]:
        logits = torch.randn(batch, defaults.shape[0], 21, generator=g).to(device).requires_grad_(True)
        offsets = torch.randn(batch, defaults.shape[0], 4, generator=g).to(device).requires_grad_(True)
        boxes = [_random_boxes(1 + i % 4, g) * 300 for i in range(batch)]
        labels = [torch.randint(0, 20, (len(b),), generator=g) for b in boxes]
        packed = pack_targets(boxes, labels, [torch.zeros(len(b), dtype=torch.bool) for b in boxes])
        return logits, offsets, packed["box_targets"].to(device) / 300, packed["label_targets"].to(device)

    logits, offsets, boxes, labels = inputs(8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        valid = labels >= 0
        out = ssd_loss_padded(logits, offsets, boxes, torch.where(valid, labels + 1, 0), valid, defaults)
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    def syncs(batch: int) -> int:
        logits, offsets, _, _ = inputs(batch)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                postprocess(logits.detach(), offsets.detach(), defaults, 300)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(2) == syncs(16)  # per batch, not per image
