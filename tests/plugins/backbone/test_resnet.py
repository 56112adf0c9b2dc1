"""The built-in ResNet-style backbone: contract, reference sizes, options, errors."""

import math

import pytest
import torch
import torchvision
from torch import nn

from vision_pipe import Backbone, Features, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.backbone import resnet as resnet_module
from vision_pipe_plugins.backbone.common import he_std
from vision_pipe_plugins.backbone.resnet import DEPTHS, Bottleneck, resnet

SIZES = [(32, 32), (97, 131), (33, 17), (5, 7)]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_by_hook() -> None:
    assert resnet_module.vision_pipe_stages() == [resnet]
    assert resnet.__vision_pipe_stage__.kind == "backbone"
    assert resnet.__vision_pipe_stage__.name == "resnet"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("stem", "strides"), [("small", [1, 2, 4, 8]), ("imagenet", [4, 8, 16, 32])])
def test_feature_info_matches_output(size: tuple[int, int], stem: str, strides: list[int]) -> None:
    model = resnet(depth=10, width=8, stem=stem).eval()
    assert isinstance(model, Backbone)
    assert model.provides == frozenset()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert isinstance(out, Features) and out.pool_indices == {}
    assert [f.name for f in model.feature_info] == list(out.maps) == ["stage1", "stage2", "stage3", "stage4"]
    assert [f.stride for f in model.feature_info] == strides
    assert [f.channels for f in model.feature_info] == [8, 16, 32, 64]
    for info in model.feature_info:
        assert out.maps[info.name].shape == (2, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))


def test_bottleneck_channels_and_truncation() -> None:
    model = resnet(depth=50, width=4, stages=2, stem="imagenet").eval()
    assert [f.channels for f in model.feature_info] == [16, 32]
    out = model(torch.randn(1, 3, 37, 37))
    assert list(out.maps) == ["stage1", "stage2"]
    assert out.maps["stage2"].shape == (1, 32, 5, 5)
    assert any(isinstance(m, Bottleneck) for m in model.modules())


@pytest.mark.parametrize(("depth", "reference"), [(18, torchvision.models.resnet18), (34, torchvision.models.resnet34)])
def test_matches_torchvision_without_fc(depth: int, reference) -> None:
    with torch.device("meta"):  # shapes only: skips allocating and initialising the weights
        ours = resnet(depth=depth, width=64, stem="imagenet")
        theirs = reference(weights=None)
    theirs.fc = nn.Identity()
    assert _count(ours) == _count(theirs)
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in theirs.parameters())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in theirs.modules()
    )


def test_bottleneck_matches_torchvision_resnet50_count() -> None:
    with torch.device("meta"):
        theirs = torchvision.models.resnet50(weights=None)
        ours = resnet(depth=50, stem="imagenet")
    assert _count(ours) == _count(theirs) - _count(theirs.fc)


@pytest.mark.parametrize(("depth", "blocks"), [(10, 4), (18, 8), (34, 16)])
def test_depth_presets(depth: int, blocks: int) -> None:
    model = resnet(depth=depth, width=4)
    # stem conv + two convs per basic block + three 1×1 shortcuts (stages 2..4)
    assert len(_convs(model)) == 1 + 2 * blocks + 3
    assert sum(DEPTHS[depth][1]) == blocks


def test_small_stem_has_no_pooling_and_imagenet_stem_does() -> None:
    small, imagenet = resnet(depth=10, width=4, stem="small"), resnet(depth=10, width=4, stem="imagenet")
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert imagenet.stem[0].kernel_size == (7, 7) and imagenet.stem[0].stride == (2, 2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in imagenet.modules()) == 1


@pytest.mark.parametrize(
    ("activation", "module_type"), [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU)]
)
def test_activation_choices(activation: str, module_type: type[nn.Module]) -> None:
    model = resnet(depth=10, width=4, activation=activation)
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU))]
    assert len(acts) == 1 + 2 * 4 and all(type(m) is module_type for m in acts)


def test_batch_norm_false_uses_identity_and_biases() -> None:
    model = resnet(depth=18, width=4, batch_norm=False, zero_init_residual=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(c.bias is not None for c in _convs(model))
    out = model(torch.randn(1, 3, 16, 16))
    assert out.maps["stage4"].shape == (1, 32, 2, 2)


def test_zero_init_residual() -> None:
    model = resnet(depth=18, width=8)
    assert all(torch.all(block[-1].bn2.weight == 0) for block in (model.stage1, model.stage4))
    assert torch.all(model.stem[1].weight == 1)
    plain = resnet(depth=18, width=8, zero_init_residual=False)
    assert torch.all(plain.stage1[0].bn2.weight == 1)
    no_bn = resnet(depth=10, width=8, batch_norm=False)
    assert torch.all(no_bn.stage1[0].conv2.weight == 0) and no_bn.stage1[0].conv1.weight.abs().sum() > 0
    # a zero-initialised basic block without downsampling is the identity (after the activation)
    block = model.stage1[1].eval()
    x = torch.rand(1, 8, 6, 6)
    assert torch.allclose(block(x), x)


def test_he_and_xavier_std() -> None:
    torch.manual_seed(0)
    he = resnet(depth=10, width=32, init="he")
    xavier = resnet(depth=10, width=32, init="xavier")
    he_conv, xavier_conv = he.stage4[0].conv1, xavier.stage4[0].conv1  # 128 → 256 channels, 3×3
    fan_in, fan_out = 128 * 9, 256 * 9
    assert he_conv.weight.std().item() == pytest.approx(he_std(fan_out, "relu"), rel=0.1)
    assert he_std(fan_out, "relu") == pytest.approx(math.sqrt(2 / fan_out))
    assert xavier_conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_gradients_reach_first_conv(batch_norm: bool) -> None:
    model = resnet(depth=18, width=16, batch_norm=batch_norm).train()
    out = model(torch.randn(2, 3, 32, 32))
    out.maps["stage4"].sum().backward()
    first = model.stem[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"depth": 20}, ["depth", "20", "10", "18", "34", "50"]),
        ({"activation": "gelu"}, ["activation", "'relu'", "'leaky_relu'", "'elu'"]),
        ({"init": "orthogonal"}, ["init", "'he'", "'xavier'"]),
        ({"stem": "big"}, ["stem", "'small'", "'imagenet'"]),
        ({"stages": 5}, ["stages", "1", "4"]),
    ],
)
def test_invalid_parameters(params: dict, words: list[str]) -> None:
    with pytest.raises(StageError) as info:
        make_entry(resnet).build(params)
    message = str(info.value)
    assert "resnet" in message
    for word in words:
        assert word in message
