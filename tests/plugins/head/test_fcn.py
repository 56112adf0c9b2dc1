"""The built-in FCN segmentation head: output sizes, unpooling, bilinear init, skips, build errors,
loss, the task's metrics with the head's ignore index, and decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision_pipe import Batch, ChainError, SegmentationPrediction, StageContext, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.backbone.resnet import resnet
from vision_pipe_plugins.backbone.vgg import vgg
from vision_pipe_plugins.head.fcn import FCNHead, UpStep, bilinear_kernel, fcn

NAMES = ("background", "a", "b")


def make_context(backbone, name: str = "vgg", input_size: tuple[int, int] = (32, 32)) -> StageContext:
    return StageContext(
        task="segmentation",
        seed=0,
        input_size=input_size,
        class_names=NAMES,
        feature_info=tuple(backbone.feature_info),
        backbone_provides=frozenset(backbone.provides),
        backbone_name=name,
    )


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return vgg(width=4, stages=3).eval()


@pytest.mark.parametrize("upsample", ["transposed", "unpool", "bilinear"])
@pytest.mark.parametrize("skips", ["none", "fcn16", "fcn8", "concat"])
@pytest.mark.parametrize("size", [(97, 131), (17, 9)])
def test_output_has_the_input_size(backbone, upsample: str, skips: str, size: tuple[int, int]) -> None:
    head = fcn(make_context(backbone), upsample=upsample, skips=skips, channels=8).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = head(backbone(images))
    assert logits.shape == (1, len(NAMES), *size)
    assert torch.isfinite(logits).all()


def test_output_size_falls_back_to_input_size_without_pool_indices() -> None:
    torch.manual_seed(0)
    backbone = resnet(depth=10, width=4, stages=3, stem="imagenet").eval()
    head = fcn(make_context(backbone, "resnet", input_size=(45, 37)), skips="fcn8").eval()
    with torch.no_grad():
        logits = head(backbone(torch.randn(1, 3, 45, 37)))
    assert logits.shape == (1, 3, 45, 37)


def test_output_size_without_pool_indices_follows_the_finest_map_at_another_input_size() -> None:
    """Images of another size than ``input_size`` (an export at another size): the finest map's size times its
    stride (resnet's imagenet stem: stride 4), not ``input_size``."""
    torch.manual_seed(0)
    backbone = resnet(depth=10, width=4, stages=3, stem="imagenet").eval()
    head = fcn(make_context(backbone, "resnet", input_size=(32, 32)), skips="fcn8").eval()
    with torch.no_grad():
        assert head(backbone(torch.randn(1, 3, 64, 48))).shape == (1, 3, 64, 48)
        assert head(backbone(torch.randn(1, 3, 65, 50))).shape == (1, 3, 68, 52)


def test_unpool_places_values_at_the_recorded_argmax_positions() -> None:
    x = torch.tensor([[[[1.0, 5.0, 2.0], [3.0, 0.0, 4.0], [9.0, 6.0, 7.0]]]])  # (1, 1, 3, 3)
    pooled, indices = F.max_pool2d(x, 2, stride=2, return_indices=True, ceil_mode=True)  # (1, 1, 2, 2)
    assert pooled.flatten().tolist() == [5.0, 4.0, 9.0, 7.0]
    step = UpStep("unpool", 1, unpool_channels=1)
    with torch.no_grad():  # make pre and conv identities so the step is a pure unpooling
        step.pre.weight.fill_(1.0)
        step.pre.bias.zero_()
        step.conv.weight.zero_()
        step.conv.weight[0, 0, 1, 1] = 1.0
        step.conv.bias.zero_()
        out = step(pooled, (3, 3), (indices, (3, 3)))
    expected = F.max_unpool2d(pooled, indices, 2, stride=2, output_size=(3, 3))
    hand = torch.tensor([[[[0.0, 5.0, 0.0], [0.0, 0.0, 4.0], [9.0, 0.0, 7.0]]]])
    assert torch.equal(expected, hand)
    assert torch.equal(out, hand)


def test_transposed_conv_is_initialised_to_bilinear_upsampling() -> None:
    step = UpStep("transposed", 3)
    assert torch.equal(step.up.weight, bilinear_kernel(3, 4))
    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        ours = step(x, (14, 18))
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])


@pytest.mark.parametrize(
    ("upsample", "skips"), [("transposed", "fcn16"), ("unpool", "fcn8"), ("bilinear", "fcn8"), ("transposed", "concat")]
)
def test_gradients_reach_the_skip_layers(backbone, upsample: str, skips: str) -> None:
    head = fcn(make_context(backbone), upsample=upsample, skips=skips, channels=8)
    mask = torch.randint(0, 3, (1, 13, 11))
    logits = head(backbone(torch.randn(1, 3, 13, 11)))
    head.loss(logits, Batch(mask=mask))["loss"].backward()
    expected = {"fcn16": ["stage2"], "fcn8": ["stage1", "stage2"], "concat": ["stage1", "stage2"]}[skips]
    assert sorted(head.skip_layers) == expected
    for name, layer in head.skip_layers.items():
        assert layer.weight.grad is not None, name
        assert layer.weight.grad.abs().sum() > 0, name


def test_unpool_with_a_backbone_without_pool_indices_is_a_chain_error() -> None:
    backbone = resnet(depth=10, width=4, stages=2)
    with pytest.raises(ChainError, match="resnet") as info:
        fcn(make_context(backbone, "resnet"), upsample="unpool")
    assert "'vgg'" in str(info.value)


def test_skip_from_a_missing_stage_is_a_chain_error() -> None:
    backbone = vgg(width=4, stages=2)
    with pytest.raises(ChainError, match="vgg") as info:
        fcn(make_context(backbone), skips="fcn8")
    assert "stage1" in str(info.value) and "stage2" in str(info.value)
    fcn(make_context(backbone), skips="fcn16")  # two maps are enough for FCN-16s


def test_bad_parameters_are_stage_errors(backbone) -> None:
    with pytest.raises(StageError, match="class_weights"):
        fcn(make_context(backbone), class_weights=[1.0, 2.0])
    with pytest.raises(StageError, match=r"head stage 'fcn': dropout must be in \[0, 1\), got 1.0"):
        make_entry(fcn).build({"dropout": 1.0}, make_context(backbone))


def _head() -> FCNHead:
    return fcn(make_context(vgg(width=4, stages=3)))


def test_loss_ignores_255_pixels() -> None:
    head = _head()
    # two pixels: the first labelled 1, the second ignored
    logits = torch.tensor([[1.0, 2.0], [0.0, 5.0], [0.5, -3.0]])[None, :, None, :]  # (1, 3, 1, 2)
    mask = torch.tensor([[[1, 255]]])
    loss = head.loss(logits, Batch(mask=mask))["loss"]
    hand = -(0.0 - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(0.5)))  # pixel 0 only
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    all_ignored = head.loss(logits, Batch(mask=torch.full((1, 1, 2), 255)))["loss"]
    assert all_ignored.item() == 0.0


def test_class_weights_weight_the_loss() -> None:
    head = fcn(make_context(vgg(width=4, stages=3)), class_weights=[1.0, 3.0, 1.0])
    logits = torch.zeros(1, 3, 1, 2)
    mask = torch.tensor([[[0, 1]]])
    ref = F.cross_entropy(logits, mask, weight=torch.tensor([1.0, 3.0, 1.0]))
    assert head.loss(logits, Batch(mask=mask))["loss"].item() == pytest.approx(ref.item())
    # masks collated as uint8 give the same loss
    assert head.loss(logits, Batch(mask=mask.to(torch.uint8)))["loss"].item() == pytest.approx(ref.item())
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    mask[0, :2] = 255  # ignored pixels are left out of the weighted mean
    ref = F.cross_entropy(logits, mask, weight=torch.tensor([1.0, 3.0, 1.0]), ignore_index=255)
    assert head.loss(logits, Batch(mask=mask))["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_metrics_are_the_segmentation_tasks_with_the_heads_ignore_index() -> None:
    """The metrics themselves are tested in tests/vision_pipe/tasks/test_segmentation_task.py."""
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(FCNHead))
    head = fcn(make_context(vgg(width=4, stages=3)), ignore_index=0)
    pred = torch.tensor([[[0, 1]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    metrics = head.make_metrics()
    head.update_metrics(metrics, logits, Batch(mask=torch.tensor([[[0, 2]]])))
    out = head.summarize(metrics.compute(), NAMES, None)
    assert out["pixel_acc"] == pytest.approx(0.0)  # pixel 0 (class 0) is ignored, pixel 1 is wrong
    assert set(out) == {"miou", "pixel_acc", "iou/background", "iou/a", "iou/b"}


def test_decode_resizes_the_mask_to_the_original_size() -> None:
    head = _head()
    labels = torch.tensor([[[0, 1], [2, 1]]])  # (1, 2, 2)
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    batch = Batch(meta=[{"id": "x.png", "orig_size": (4, 6)}])
    (prediction,) = head.decode(logits, batch, NAMES)
    assert isinstance(prediction, SegmentationPrediction)
    assert prediction.id == "x.png"
    assert prediction.mask.dtype == np.int64
    assert prediction.mask.shape == (4, 6)
    assert prediction.mask.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 1, 1, 1]] * 2
    assert prediction.class_names == list(NAMES)


def test_decode_samples_the_mask_at_pixel_centres() -> None:
    head = _head()
    labels = torch.tensor([[[0, 1, 2]]])  # (1, 1, 3): one row of three classes
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    (prediction,) = head.decode(logits, Batch(meta=[{"id": "x", "orig_size": (1, 2)}]), NAMES)
    # 3 → 2 columns: output column j covers input [1.5 j, 1.5 (j + 1)), centre 1.5 j + 0.75 → columns 0 and 2
    assert prediction.mask.tolist() == [[0, 2]]


def test_stage_is_registered_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vision_pipe.plugins")}
    assert names.get("fcn") == "vision_pipe_plugins.head.fcn"
