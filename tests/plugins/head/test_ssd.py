"""The SSD detection head: map planning and extra layers, default boxes through the head, decoding
to original-image pixels, loss and gradients with empty images, evaluation outputs for the task's
metrics, chain errors, a tiny run.

The box arithmetic itself (default boxes, coding, matching, mining, loss, NMS) is tested in
``test_ssd_boxes.py``; these tests are about the head built on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_pipe import (
    Batch,
    ChainError,
    DetectionPrediction,
    Features,
    Pipeline,
    StageContext,
    StageError,
)
from vision_pipe.registry import make_entry
from vision_pipe_plugins.backbone.resnet import resnet
from vision_pipe_plugins.backbone.vgg import vgg
from vision_pipe_plugins.head.ssd import (
    MatchSpec,
    PostprocessSpec,
    SSDHead,
    SSDOutputs,
    _flatten,
    ssd,
)
from vision_pipe_plugins.head.ssd_boxes import default_boxes, encode
from vision_pipe_plugins.head.ssd_maps import extra_output_size

NAMES = ("a", "b", "c")
SSD300_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def make_context(backbone, input_size: tuple[int, int] = (32, 32), name: str = "vgg") -> StageContext:
    return StageContext(
        task="detection",
        seed=0,
        input_size=input_size,
        class_names=NAMES,
        feature_info=tuple(backbone.feature_info),
        backbone_provides=frozenset(backbone.provides),
        backbone_name=name,
    )


@pytest.fixture(scope="module")
def small_vgg():
    torch.manual_seed(0)
    return vgg(depth=8, width=4, stages=3)  # 32 px: maps 16, 8, 4 (strides 2, 4, 8)


def _batch(boxes: list[list[list[float]]], labels: list[list[int]], size: int = 32, orig=None) -> Batch:
    n = len(boxes)
    return {
        "image": torch.zeros(n, 3, size, size),
        "boxes": [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        "labels": [torch.tensor(lab, dtype=torch.int64) for lab in labels],
        "meta": [{"id": f"img{i}", "orig_size": orig or (size, size)} for i in range(n)],
    }


# ----------------------------------------------------------------------------
# maps, extra layers and default boxes
# ----------------------------------------------------------------------------


def test_extra_layers_shrink_like_ssd300() -> None:
    sizes = [(38, 38)]
    while sizes[-1] != (1, 1):
        sizes.append(extra_output_size(sizes[-1]))
    assert sizes == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert extra_output_size((2, 7)) == (1, 4)


def test_ssd300_like_config_has_8732_default_boxes() -> None:
    torch.manual_seed(0)
    backbone = vgg(depth=8, width=2, stages=5).eval()  # 300 px: stage3 38, stage4 19, stage5 10
    head = ssd(
        make_context(backbone, (300, 300)),
        feature_maps=["stage3", "stage4", "stage5"],
        num_maps=6,
        extra_channels=8,
        aspect_ratios=SSD300_RATIOS,
    ).eval()
    assert [m.size for m in head.maps] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert [m.name for m in head.maps] == ["stage3", "stage4", "stage5", "extra1", "extra2", "extra3"]
    assert head.num_defaults == 8732
    with torch.no_grad():
        out = head(backbone(torch.zeros(1, 3, 300, 300)))
    assert out.cls_logits.shape == (1, 8732, len(NAMES) + 1)
    assert out.box_offsets.shape == (1, 8732, 4)
    torch.testing.assert_close(out.defaults, default_boxes([38, 19, 10, 5, 3, 1], 300, 0.2, 0.9, SSD300_RATIOS))


def test_default_maps_are_those_of_stride_8_and_more_then_extras_down_to_1x1(small_vgg) -> None:
    head = ssd(make_context(small_vgg, (32, 32)), extra_channels=8)
    assert [(m.name, m.size, m.extra) for m in head.maps] == [
        ("stage3", (4, 4), False),
        ("extra1", (2, 2), True),
        ("extra2", (1, 1), True),
    ]
    assert head.num_defaults == (16 + 4 + 1) * 4  # ratio [2] by default: 4 boxes per cell
    # a backbone without a map of stride >= 8 gives its coarsest map
    shallow = vgg(depth=8, width=4, stages=2)
    head = ssd(make_context(shallow, (16, 16)), extra_channels=8)
    assert [m.size for m in head.maps] == [(4, 4), (2, 2), (1, 1)]


def test_extra_channels_one_per_extra_layer(small_vgg) -> None:
    # 32 px: stage3 4×4 (16 channels) → extra1 2×2, extra2 1×1
    head = ssd(make_context(small_vgg, (32, 32)), extra_channels=[12, 6], batch_norm=False).eval()
    assert [(m.name, m.channels) for m in head.maps] == [("stage3", 16), ("extra1", 12), ("extra2", 6)]
    convs = [[m for m in extra if isinstance(m, torch.nn.Conv2d)] for extra in head.extras]
    assert [[(c.in_channels, c.out_channels) for c in pair] for pair in convs] == [
        [(16, 6), (6, 12)],
        [(12, 3), (3, 6)],
    ]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in head.extras.modules())
    assert [h.in_channels for h in head.cls_heads] == [16, 12, 6]
    with torch.no_grad():
        out = head(small_vgg.eval()(torch.zeros(1, 3, 32, 32)))
    assert out.cls_logits.shape == (1, head.num_defaults, len(NAMES) + 1)


def test_extra_channels_list_of_another_length_names_the_plan(small_vgg) -> None:
    # how many extra layers follows from the backbone and the input size: a chain error
    with pytest.raises(
        ChainError,
        match=r"extra_channels lists 3 channel counts but the head adds 2 extra layers after map 'stage3' \(2×2, 1×1\); list 2 numbers",
    ):
        ssd(make_context(small_vgg, (32, 32)), extra_channels=[8, 8, 8])
    # feature_maps and num_maps fix it alone: a stage error
    with pytest.raises(StageError, match=r"extra_channels lists 1 channel counts but the head adds 2 extra layers"):
        ssd(make_context(small_vgg, (32, 32)), feature_maps=["stage2", "stage3"], num_maps=4, extra_channels=[8])
    with pytest.raises(StageError, match=r"extra_channels: .*it must be int ≥ 2 \| list\[int ≥ 2\]"):
        make_entry(ssd).build({"extra_channels": [8, 1]}, make_context(small_vgg))
    with pytest.raises(StageError, match=r"extra_channels"):
        make_entry(ssd).build({"extra_channels": []}, make_context(small_vgg))


def test_default_box_positions_through_the_head_by_hand(small_vgg) -> None:
    # maps 8×8 (stage2) and 4×4 (stage3), scales 0.25 and 0.75, ratio 1 only: 2 boxes per cell
    head = ssd(
        make_context(small_vgg, (32, 32)),
        feature_maps=["stage2", "stage3"],
        num_maps=2,
        min_scale=0.25,
        max_scale=0.75,
        aspect_ratios=[],
        clip=False,
    ).eval()
    with torch.no_grad():
        out = head(small_vgg(torch.zeros(1, 3, 32, 32)))
    defaults = out.defaults
    assert defaults.shape == (8 * 8 * 2 + 4 * 4 * 2, 4)
    extra = math.sqrt(0.25 * 0.75)
    # first cell of the 8×8 map: centre (1/16, 1/16), scale 0.25, then sqrt(0.25 * 0.75)
    torch.testing.assert_close(
        defaults[0], torch.tensor([1 / 16 - 0.125, 1 / 16 - 0.125, 1 / 16 + 0.125, 1 / 16 + 0.125])
    )
    e = extra / 2
    torch.testing.assert_close(defaults[1], torch.tensor([1 / 16 - e, 1 / 16 - e, 1 / 16 + e, 1 / 16 + e]))
    # cell (row 0, column 1): centre x 3/16
    torch.testing.assert_close(
        defaults[2], torch.tensor([3 / 16 - 0.125, 1 / 16 - 0.125, 3 / 16 + 0.125, 1 / 16 + 0.125])
    )
    # 4×4 map, cell (row 1, column 2): centre (5/8, 3/8), scale 0.75, extra sqrt(0.75 * 1)
    i = 128 + (1 * 4 + 2) * 2
    torch.testing.assert_close(defaults[i], torch.tensor([5 / 8 - 0.375, 3 / 8 - 0.375, 5 / 8 + 0.375, 3 / 8 + 0.375]))
    e = math.sqrt(0.75) / 2
    torch.testing.assert_close(defaults[i + 1], torch.tensor([5 / 8 - e, 3 / 8 - e, 5 / 8 + e, 3 / 8 + e]))


def test_flatten_orders_locations_row_major_then_boxes() -> None:
    # (B=1, n=2 boxes × 4 values, h=2, w=3): value = 1000 box + 100 coordinate + 10 row + column
    x = torch.zeros(1, 8, 2, 3)
    for box in range(2):
        for coord in range(4):
            for r in range(2):
                for c in range(3):
                    x[0, box * 4 + coord, r, c] = 1000 * box + 100 * coord + 10 * r + c
    flat = _flatten(x, 4)
    assert flat.shape == (1, 12, 4)
    # row 1, column 2, box 1 → index (1 * 3 + 2) * 2 + 1 = 11
    assert flat[0, 11].tolist() == [1012.0, 1112.0, 1212.0, 1312.0]
    assert flat[0, 2].tolist() == [1.0, 101.0, 201.0, 301.0]  # row 0, column 1, box 0


def test_resnet_backbone_works_too() -> None:
    torch.manual_seed(0)
    backbone = resnet(depth=10, width=4, stages=4).eval()  # small stem: strides 1, 2, 4, 8
    head = ssd(make_context(backbone, (24, 40), "resnet"), extra_channels=8).eval()
    assert [m.size for m in head.maps] == [(3, 5), (1, 3), (1, 1)]  # 3 → 1 by a valid 3×3 conv
    with torch.no_grad():
        out = head(backbone(torch.zeros(2, 3, 24, 40)))
    assert out.cls_logits.shape == (2, head.num_defaults, 4)
    # ratio-1 boxes are square in pixels on the non-square image
    wh = (out.defaults[:, 2:] - out.defaults[:, :2]) * torch.tensor([40.0, 24.0])
    assert math.isclose(float(wh[1, 0]), float(wh[1, 1]), rel_tol=1e-5)


# ----------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------


def _one_box_head() -> SSDHead:
    """A head on one 1×1 map at scale 0.5 with ratio 1 only: two default boxes, [0.25, 0.25, 0.75, 0.75]
    and the square of scale sqrt(0.5 * 1) (clipped)."""
    backbone = vgg(depth=8, width=2, stages=4)  # 16 px: stage4 is 1×1
    return ssd(
        make_context(backbone, (16, 16)),
        feature_maps=["stage4"],
        num_maps=1,
        min_scale=0.5,
        max_scale=0.5,
        aspect_ratios=[],
        score_thresh=0.2,
    )


def test_decode_maps_boxes_back_to_the_original_image() -> None:
    head = _one_box_head()
    defaults = head.defaults_for([(1, 1)], (16, 16), torch.zeros(1))
    # box 0: [0.25, 0.25, 0.75, 0.75]; box 1: sqrt(0.5 * 1) square, clipped
    torch.testing.assert_close(defaults[0], torch.tensor([0.25, 0.25, 0.75, 0.75]))
    logits = torch.full((1, 2, 4), -10.0)
    logits[0, 0, 2] = 10.0  # box 0: class "b" (index 1; output 2, 0 is background)
    logits[0, 1, 0] = 10.0  # box 1: background
    offsets = torch.zeros(1, 2, 4)
    offsets[0, 0, 0] = 1.0  # centre x moves by 1 * 0.1 * width 0.5 = 0.05
    offsets[0, 0, 3] = math.log(1.2) / 0.2  # height × 1.2: 0.6
    outputs = SSDOutputs(logits, offsets, defaults)
    batch = {"image": torch.zeros(1, 3, 16, 16), "meta": [{"id": "x.png", "orig_size": (100, 200)}]}
    (pred,) = head.decode(outputs, batch, NAMES)
    assert isinstance(pred, DetectionPrediction)
    assert pred.id == "x.png"
    # normalized [0.30, 0.20, 0.80, 0.80] × (w 200, h 100)
    np.testing.assert_allclose(pred.boxes, [[60.0, 20.0, 160.0, 80.0]], rtol=0, atol=1e-4)
    assert pred.boxes.dtype == np.float32
    assert pred.labels.tolist() == [1] and pred.labels.dtype == np.int64
    assert pred.class_names == ["b"]
    expected = math.exp(10) / (math.exp(10) + 3 * math.exp(-10))
    np.testing.assert_allclose(pred.scores, [expected], rtol=1e-6)


def test_decode_sorts_scores_and_caps_detections() -> None:
    head = _one_box_head()
    head.postprocess = dataclasses.replace(head.postprocess, detections_per_img=1)
    defaults = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = 3.0  # class a, lower score
    logits[0, 1, 3] = 5.0  # class c, higher score
    batch = {"image": torch.zeros(1, 3, 16, 16), "meta": [{"id": "y", "orig_size": (10, 10)}]}
    (pred,) = head.decode(SSDOutputs(logits, torch.zeros(1, 2, 4), defaults), batch, NAMES)
    assert pred.labels.tolist() == [2]
    np.testing.assert_allclose(pred.boxes, [[5.0, 5.0, 10.0, 10.0]], atol=1e-5)
    head.postprocess = dataclasses.replace(head.postprocess, detections_per_img=100)
    (pred,) = head.decode(SSDOutputs(logits, torch.zeros(1, 2, 4), defaults), batch, NAMES)
    assert pred.labels.tolist() == [2, 0]
    assert pred.scores[0] > pred.scores[1]


# ----------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------


def test_loss_is_finite_and_reaches_the_backbone_with_an_image_without_boxes(small_vgg) -> None:
    torch.manual_seed(0)
    backbone = vgg(depth=8, width=4, stages=3)
    head = ssd(make_context(backbone, (32, 32)), extra_channels=8)
    batch = _batch([[[2, 3, 14, 17], [16, 16, 30, 28]], []], [[0, 2], []])
    out = head(backbone(torch.randn(2, 3, 32, 32)))
    losses = head.loss(out, batch)
    assert set(losses) == {"loss", "loss_conf", "loss_loc"}
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert losses["loss_loc"].item() > 0 and losses["loss_conf"].item() > 0
    losses["loss"].backward()
    grad = backbone.stage1.convs[0].weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().sum().item() > 0

    # only empty images: N = 0 must not divide by zero; the hardest negatives still teach background
    backbone.zero_grad()
    empty = _batch([[], []], [[], []])
    losses = head.loss(head(backbone(torch.randn(2, 3, 32, 32))), empty)
    assert losses["loss_loc"].item() == 0.0
    assert math.isfinite(losses["loss"].item()) and losses["loss"].item() > 0
    losses["loss"].backward()
    assert backbone.stage1.convs[0].weight.grad.abs().sum().item() > 0


def test_loss_targets_are_normalized_with_shifted_labels() -> None:
    head = _one_box_head()
    batch = _batch([[[4, 4, 12, 12], [3, 3, 3, 9]]], [[2, 0]], size=16)  # the second box has no width
    boxes, labels, valid = head.targets(batch, torch.device("cpu"))
    assert valid.tolist() == [[True, False]]  # padded form: the box without width is not valid
    torch.testing.assert_close(boxes[0, :1], torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert labels[valid].tolist() == [3]  # object class 2 → output 3 (0 is background)


def test_loss_with_perfect_prediction_is_only_the_negatives() -> None:
    head = _one_box_head()
    defaults = head.defaults_for([(1, 1)], (16, 16), torch.zeros(1))
    gt = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    logits = torch.zeros(1, 2, 4)  # uniform: every CE is log 4
    offsets = torch.zeros(1, 2, 4)
    offsets[0, 0] = encode(gt, defaults[:1])[0]
    out = SSDOutputs(logits, offsets, defaults)
    losses = head.loss(out, _batch([[[4, 4, 12, 12]]], [[1]], size=16))
    # 1 positive (box 0), negatives: min(3, 1 left) = 1; N = 1
    assert losses["loss_conf"].item() == pytest.approx(2 * math.log(4), rel=1e-6)
    assert losses["loss_loc"].item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------


def _perfect_outputs(head: SSDHead, defaults: torch.Tensor, hits: list[tuple[int, int]]) -> SSDOutputs:
    """Outputs with zero offsets where default box i scores class ``label`` 0..C-1 highly."""
    logits = torch.full((1, defaults.shape[0], len(NAMES) + 1), -8.0)
    logits[0, :, 0] = 8.0
    for i, label in hits:
        logits[0, i, 0] = -8.0
        logits[0, i, label + 1] = 8.0
    return SSDOutputs(logits, torch.zeros(1, defaults.shape[0], 4), defaults)


def test_evaluation_outputs_are_the_detections_in_model_input_pixels() -> None:
    """The detection task's metrics (tests/vision_pipe/tasks/test_detection_task.py) get these."""
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(SSDHead))
    head = _one_box_head()
    defaults = torch.tensor([[0.25, 0.25, 0.5, 0.75]])
    outputs = _perfect_outputs(head, defaults, [(0, 1)])
    (det,) = head.evaluation_outputs(outputs, _batch([[[4, 4, 8, 12]]], [[1]], size=16, orig=(40, 80)))
    torch.testing.assert_close(det["boxes"], torch.tensor([[4.0, 4.0, 8.0, 12.0]]))
    assert det["labels"].tolist() == [1] and det["scores"].shape == (1,)


def test_metrics_use_original_pixels() -> None:
    head = _one_box_head()
    defaults = torch.tensor([[0.25, 0.25, 0.5, 0.75]])
    outputs = _perfect_outputs(head, defaults, [(0, 1)])
    batch = _batch([[[4, 4, 8, 12]]], [[1]], size=16, orig=(40, 80))
    metrics = head.make_metrics()
    head.update_metrics(metrics, outputs, batch)
    state = metrics["map"]  # torchmetrics keeps boxes as xywh for pycocotools
    # detection: default [0.25, 0.25, 0.5, 0.75] × (w 80, h 40); ground truth: [4, 4, 8, 12] × (80/16, 40/16)
    torch.testing.assert_close(state.detection_box[0], torch.tensor([[20.0, 10.0, 20.0, 20.0]]))
    torch.testing.assert_close(state.groundtruth_box[0], torch.tensor([[20.0, 10.0, 20.0, 20.0]]))


# ----------------------------------------------------------------------------
# chain and parameter errors
# ----------------------------------------------------------------------------


def test_unknown_feature_map_is_a_chain_error_listing_the_maps(small_vgg) -> None:
    with pytest.raises(ChainError, match=r"backbone 'vgg' has no map 'stage4'.*stage1 \(stride 2\).*stage3"):
        ssd(make_context(small_vgg), feature_maps=["stage2", "stage4"])
    with pytest.raises(ChainError, match=r"Did you mean 'stage2'"):
        ssd(make_context(small_vgg), feature_maps=["stag2"])


def test_feature_maps_out_of_order_is_a_chain_error(small_vgg) -> None:
    with pytest.raises(ChainError, match=r"finest first.*strides \[8, 4\].*\['stage2', 'stage3'\]"):
        ssd(make_context(small_vgg), feature_maps=["stage3", "stage2"])


def test_more_maps_than_the_input_allows_is_a_chain_error_saying_the_maximum(small_vgg) -> None:
    # 32 px: stage3 is 4×4 → extras 2×2, 1×1: at most 3 maps
    with pytest.raises(ChainError, match=r"num_maps 5 .*use num_maps <= 3.*larger input_size"):
        ssd(make_context(small_vgg, (32, 32)), num_maps=5)
    assert len(ssd(make_context(small_vgg, (32, 32)), num_maps=3).maps) == 3


def test_fewer_maps_than_backbone_maps_used_is_a_chain_error(small_vgg) -> None:
    with pytest.raises(ChainError, match=r"num_maps is 1 but 2 maps .*set num_maps >= 2"):
        ssd(make_context(small_vgg), feature_maps=["stage2", "stage3"], num_maps=1)


def test_aspect_ratio_lists_must_match_the_maps(small_vgg) -> None:
    with pytest.raises(ChainError, match=r"aspect_ratios has 2 lists but the head predicts on 3 maps \(stage3 4×4"):
        ssd(make_context(small_vgg), aspect_ratios=[[2], [2]])
    with pytest.raises(StageError, match=r"aspect_ratios has 2 lists"):
        ssd(make_context(small_vgg), num_maps=3, aspect_ratios=[[2], [2]])
    head = ssd(make_context(small_vgg), aspect_ratios=[2, 3], extra_channels=8)  # flat: for every map
    assert head.aspect_ratios == [[2.0, 3.0]] * 3
    assert head.num_defaults == (16 + 4 + 1) * 6


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"min_scale": 0.0}, "min_scale"),
        ({"min_scale": 0.8, "max_scale": 0.5}, "min_scale"),
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"nms_thresh": 0.0}, "nms_thresh"),
        ({"score_thresh": 1.0}, "score_thresh"),
        ({"variances": (0.1, -0.2)}, "variances"),
        ({"num_maps": 0}, "num_maps"),
        ({"detections_per_img": 0}, "detections_per_img"),
        ({"aspect_ratios": [2, -1]}, "aspect_ratios"),
        ({"feature_maps": []}, "feature_maps"),
    ],
)
def test_bad_parameters_are_stage_errors(small_vgg, params: dict, word: str) -> None:
    with pytest.raises(StageError, match=word):
        make_entry(ssd).build(params, make_context(small_vgg))


def test_parameter_errors_name_the_stage_the_parameter_and_its_constraint(small_vgg) -> None:
    entry = make_entry(ssd)
    with pytest.raises(StageError) as info:
        entry.build({"nms_thresh": 2}, make_context(small_vgg))
    assert str(info.value) == "head stage 'ssd': nms_thresh must be in (0, 1], got 2"
    with pytest.raises(StageError, match=r"variances\[1\] must be > 0, got -0.2"):
        entry.build({"variances": (0.1, -0.2)}, make_context(small_vgg))
    types = {p.name: p.type_str() for p in entry.parameters}
    assert types["nms_thresh"] == "float in (0, 1]" and types["score_thresh"] == "float in [0, 1)"
    assert types["num_maps"] == "int ≥ 1 | None" and types["variances"] == "tuple[float > 0, float > 0]"


def test_the_head_groups_its_numbers_in_spec_objects(small_vgg) -> None:
    head = make_entry(ssd).build({"nms_thresh": 0.3, "min_scale": 0.1, "iou_threshold": 0.6}, make_context(small_vgg))
    assert head.postprocess == PostprocessSpec(nms_thresh=0.3)
    assert head.match == MatchSpec(iou_threshold=0.6)
    assert head.boxes.min_scale == 0.1 and head.boxes.max_scale == 0.9 and head.boxes.clip
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.postprocess.nms_thresh = 0.5  # type: ignore[misc]


def test_chain_error_comes_from_the_pipeline_before_training(tiny_config) -> None:
    tiny_config["task"] = "detection"
    tiny_config["model"]["head"] = {"name": "ssd", "num_maps": 6}
    with pytest.raises(ChainError, match=r"model\.head.*num_maps 6 .*use num_maps <= 3"):
        Pipeline.from_dict(tiny_config)


# ----------------------------------------------------------------------------
# a real run
# ----------------------------------------------------------------------------


def test_tiny_detection_run_writes_map_metrics(tiny_config) -> None:
    tiny_config["task"] = "detection"
    tiny_config["data"]["loader"].update(num_images=48, size=24, empty_fraction=0.1)
    tiny_config["data"]["input_size"] = [24, 24]
    tiny_config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "aspect_ratios": []}
    tiny_config["checkpoint"] = {"monitor": "val/map_50", "mode": "max"}
    pipe = Pipeline.from_dict(tiny_config)
    pipe.fit()
    metrics = pipe.test()
    for key in ("test/map_50", "test/map", "test/map_75", "test/loss", "test/ap_50/circle", "test/ap/triangle"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/map"] <= metrics["test/map_50"] <= 1.0
    saved = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert saved["test/map_50"] == pytest.approx(metrics["test/map_50"])
    assert "val/map_50" in saved
    assert (pipe.run_dir / "plots" / "test" / "precision_recall.png").is_file()
    assert (pipe.run_dir / "checkpoints" / "best.ckpt").is_file()

    preds = pipe.predict([np.zeros((30, 60, 3), np.uint8)])
    assert isinstance(preds[0], DetectionPrediction)
    if len(preds[0].boxes):
        assert float(preds[0].boxes[:, 0::2].max()) <= 60 and float(preds[0].boxes[:, 1::2].max()) <= 30


def test_stage_is_registered_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vision_pipe.plugins")}
    assert names.get("ssd") == "vision_pipe_plugins.head.ssd"


def test_features_without_extras_use_the_backbone_maps_only(small_vgg) -> None:
    head = ssd(make_context(small_vgg), feature_maps=["stage2", "stage3"], num_maps=2).eval()
    assert len(head.extras) == 0
    maps = {"stage2": torch.zeros(1, 8, 8, 8), "stage3": torch.zeros(1, 16, 4, 4)}
    out = head(Features(maps=maps))
    assert out.cls_logits.shape == (1, (64 + 16) * 4, 4)


def test_ssd300_gpu_pipeline_builds_with_8732_default_boxes() -> None:
    root = Path(__file__).resolve().parents[3]
    pipe = Pipeline.from_yaml(root / "pipelines" / "ssd300_gpu.yaml", ["data.loader.num_images=10"])
    head = pipe.stages["head"]
    assert [m.size for m in head.maps] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert head.num_defaults == 8732
    assert pipe.config.trainer["accelerator"] == "gpu" and pipe.config.trainer["precision"] == "bf16-mixed"
