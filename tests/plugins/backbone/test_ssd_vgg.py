"""The ssd_vgg backbone stage: SSD's VGG (conv4_3 L2-normalized, pool5 3×3 s1, conv6 dilated, conv7),
its map sizes, the fc6 / fc7 decimation from a torchvision weights file, and its errors.

Weights come from a randomly initialised torchvision VGG saved to a temporary file: nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from vision_pipe import StageContext, StageError
from vision_pipe.registry import make_entry
from vision_pipe.testing import check_backbone
from vision_pipe_plugins.backbone.ssd_vgg import SSDVGG, decimate_fc, ssd_vgg


def _build(*, restoring: bool = False, **params: Any) -> SSDVGG:
    """Build through the registry, as a pipeline does (parameters validated)."""
    context = StageContext(task="detection", seed=0, input_size=(300, 300), restoring=restoring)
    return make_entry(ssd_vgg).build(params, context).eval()


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A randomly initialised torchvision vgg16 (eval mode) and its state dict saved as a .pth file."""
    torch.manual_seed(0)
    source = torchvision.models.vgg16().eval()
    path = tmp_path_factory.mktemp("weights") / "vgg16_random.pth"
    torch.save(source.state_dict(), path)
    return source, path


def test_contract_check_passes_and_sizes_round_up() -> None:
    backbone = check_backbone(ssd_vgg, input_size=(40, 56), model="vgg11")
    assert [(f.name, f.channels, f.stride) for f in backbone.feature_info] == [("stage3", 512, 8), ("stage4", 1024, 16)]
    assert backbone.provides == frozenset() and not backbone.pad  # ceil-mode poolings round up by themselves
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 33, 47))
    for info in backbone.feature_info:
        assert out.maps[info.name].shape[-2:] == (math.ceil(33 / info.stride), math.ceil(47 / info.stride))


def test_ssd300_layers_as_the_paper() -> None:
    backbone = _build()
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pools] == [(2, 2, 0, True)] * 4 + [
        (3, 1, 1, False)
    ]
    conv4_3 = backbone.features[backbone.conv4_3 - 1]
    assert isinstance(conv4_3, nn.Conv2d) and backbone.conv4_3 == 22  # torchvision's index of conv4_3's ReLU
    c6, c7 = backbone.conv6, backbone.conv7
    assert (c6.in_channels, c6.out_channels, c6.kernel_size, c6.dilation, c6.padding) == (
        512,
        1024,
        (3, 3),
        (6, 6),
        (6, 6),
    )
    assert (c7.in_channels, c7.out_channels, c7.kernel_size) == (1024, 1024, (1, 1))
    # conv4_3's L2 norm: a learnable per-channel scale, initialised to 20
    scale = backbone.l2norm.weight
    assert scale.shape == (512,) and torch.equal(scale, torch.full((512,), 20.0))
    assert scale.requires_grad and any(p is scale for p in backbone.parameters())
    assert not backbone.fc_decimated  # pretrained false: conv6 / conv7 start random


def test_maps_are_38_and_19_at_300_px_and_conv4_3_has_norm_the_scale() -> None:
    backbone = _build(l2norm_scale=10.0)
    torch.manual_seed(0)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 300, 300))
    assert out.maps["stage3"].shape == (1, 512, 38, 38) and out.maps["stage4"].shape == (1, 1024, 19, 19)
    norms = out.maps["stage3"].norm(dim=1)  # (1, 38, 38) over the channels
    assert torch.allclose(norms[norms > 0], torch.tensor(10.0), atol=1e-4)


def test_fc6_fc7_are_decimated_from_a_weights_file(source_file: tuple[Any, Path]) -> None:
    source, path = source_file
    backbone = _build(pretrained=str(path))
    assert backbone.fc_decimated
    fc6, fc7 = source.classifier[0], source.classifier[3]
    assert torch.equal(backbone.conv6.weight, fc6.weight.view(4096, 512, 7, 7)[::4, :, ::3, ::3])
    assert torch.equal(backbone.conv6.bias, fc6.bias[::4])
    assert torch.equal(backbone.conv7.weight, fc7.weight[::4, ::4].reshape(1024, 1024, 1, 1))
    assert torch.equal(backbone.conv7.bias, fc7.bias[::4])
    # by hand: conv6 filter 5 is fc6 row 20, input channel c, taps (3i, 3j) of its 7×7 view
    row = fc6.weight[20].view(512, 7, 7)
    assert torch.equal(backbone.conv6.weight[5, 7], row[7][[0, 3, 6]][:, [0, 3, 6]])
    assert torch.equal(backbone.conv7.weight[3, 9, 0, 0], fc7.weight[12, 36])
    # the feature layers are the source's: conv4_3 (after its ReLU) is the source's, L2-normalized × 20
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.features[:23](x)  # conv1_1 .. conv4_3 + ReLU, 2×2 pools (64 px: no rounding)
        got = backbone(x).maps["stage3"]
    assert torch.allclose(got, torch.nn.functional.normalize(expected, dim=1) * 20.0, atol=1e-5)


def test_a_classifier_that_is_not_finite_is_not_decimated(source_file: tuple[Any, Path]) -> None:
    source, _ = source_file
    nan = copy.deepcopy(source.classifier)
    with torch.no_grad():
        nan[0].weight.fill_(float("nan"))  # as torchvision's IMAGENET1K_FEATURES
    assert decimate_fc(nan) is None
    backbone = _build()
    before = backbone.conv6.weight.clone()
    assert not backbone.load_fc(nan) and not backbone.fc_decimated
    assert torch.equal(backbone.conv6.weight, before)
    assert decimate_fc(source.classifier) is not None


def test_errors_name_the_stage_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"model must be one of .*'vgg16_bn'"):
        _build(model="resnet18")
    with pytest.raises(
        StageError,
        match=r"backbone 'ssd_vgg' \(model 'vgg16'\): no weights 'IMAGENET2K_V1'; its weights: DEFAULT, .*IMAGENET1K_FEATURES",
    ):
        _build(pretrained="IMAGENET2K_V1")
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(
        StageError, match=r"backbone 'ssd_vgg' \(model 'vgg16'\): weights .*other.pth do not fit the model"
    ):
        _build(pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(StageError, match="l2norm_scale must be > 0"):
        _build(l2norm_scale=0.0)


def test_stage_is_registered_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="vision_pipe.plugins")}
    assert names.get("ssd_vgg") == "vision_pipe_plugins.backbone.ssd_vgg"


def test_publishes_the_input_statistics_of_its_weights(source_file: tuple[nn.Module, Path]) -> None:
    """Caffe-style statistics (std 1: pixel values kept) for IMAGENET1K_FEATURES, ImageNet's for a file;
    restoring from a checkpoint neither downloads a named weights set nor reads a file."""
    features = _build(pretrained="IMAGENET1K_FEATURES", restoring=True)
    assert features.pretrained and features.input_stats.source == "torchvision VGG16_Weights.IMAGENET1K_FEATURES"
    assert features.input_stats.std == pytest.approx((1.0, 1.0, 1.0))
    _, path = source_file
    from_file = _build(pretrained=str(path))
    assert from_file.pretrained and from_file.input_stats.source == "torchvision VGG16_Weights.IMAGENET1K_V1"
    restored = _build(pretrained=str(path.with_name("gone.pth")), restoring=True)
    assert restored.input_stats == from_file.input_stats
