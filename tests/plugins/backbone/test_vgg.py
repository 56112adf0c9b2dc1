"""The built-in VGG-style backbone: contract, pooling indices, options, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision_pipe import Backbone, Features, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.backbone import vgg as vgg_module
from vision_pipe_plugins.backbone.common import he_std
from vision_pipe_plugins.backbone.vgg import DEPTHS, vgg

SIZES = [(32, 32), (97, 131), (33, 17), (64, 48), (5, 7)]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_registered_by_hook() -> None:
    assert vgg_module.vision_pipe_stages() == [vgg]
    assert vgg.__vision_pipe_stage__.kind == "backbone"
    assert vgg.__vision_pipe_stage__.name == "vgg"


@pytest.mark.parametrize("size", SIZES)
def test_feature_info_matches_output(size: tuple[int, int]) -> None:
    model = vgg(depth=11, width=8).eval()
    assert isinstance(model, Backbone)
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert isinstance(out, Features)
    assert [f.name for f in model.feature_info] == list(out.maps) == [f"stage{i}" for i in range(1, 6)]
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f.channels for f in model.feature_info] == [8, 16, 32, 64, 64]
    for info in model.feature_info:
        assert out.maps[info.name].shape == (2, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))


def test_truncated_stages_and_width_cap() -> None:
    model = vgg(depth=8, width=16, stages=3).eval()
    out = model(torch.randn(1, 3, 20, 20))
    assert list(out.maps) == ["stage1", "stage2", "stage3"]
    assert [f.channels for f in model.feature_info] == [16, 32, 64]
    assert [out.maps[n].shape[-1] for n in out.maps] == [10, 5, 3]
    assert [f.channels for f in vgg(depth=8, width=4).feature_info] == [4, 8, 16, 32, 32]


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_depth_presets(depth: int) -> None:
    model = vgg(depth=depth, width=4)
    assert len(_convs(model)) == sum(DEPTHS[depth]) == depth - 3
    assert [len(_convs(getattr(model, f"stage{i}"))) for i in range(1, 6)] == list(DEPTHS[depth])


def test_pool_indices_unpool_and_match_max_pool() -> None:
    torch.manual_seed(0)
    model = vgg(depth=11, width=8).eval()
    assert "pool_indices" in model.provides
    pre_pool: dict[str, torch.Tensor] = {}

    def keep_input(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        pre_pool["x"] = inputs[0].detach().clone()

    model.stage1.pool.register_forward_hook(keep_input)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 97, 131))
    assert set(out.pool_indices) == set(out.maps)
    indices, size = out.pool_indices["stage1"]
    pooled = out.maps["stage1"]
    assert size == (97, 131) and pre_pool["x"].shape[-2:] == size
    assert indices.shape == pooled.shape and indices.dtype == torch.int64

    ref_pooled, ref_indices = F.max_pool2d(pre_pool["x"], 2, 2, return_indices=True, ceil_mode=True)
    assert torch.equal(indices, ref_indices)
    assert torch.equal(pooled, ref_pooled)

    unpooled = F.max_unpool2d(pooled, indices, 2, 2, output_size=size)
    assert unpooled.shape[-2:] == size
    assert torch.equal(F.max_pool2d(unpooled, 2, 2, ceil_mode=True), pooled)
    # the values sit exactly at the argmax positions of the pre-pool activation
    flat = unpooled.flatten(2)
    assert torch.equal(flat.gather(2, indices.flatten(2)), pre_pool["x"].flatten(2).gather(2, indices.flatten(2)))

    # every stage's (indices, input size) unpools back to its input size
    previous = (97, 131)
    for name, (idx, in_size) in out.pool_indices.items():
        assert in_size == previous
        assert F.max_unpool2d(out.maps[name], idx, 2, 2, output_size=in_size).shape[-2:] == in_size
        previous = tuple(out.maps[name].shape[-2:])


@pytest.mark.parametrize(
    ("activation", "module_type"), [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU)]
)
def test_activation_choices(activation: str, module_type: type[nn.Module]) -> None:
    model = vgg(depth=8, width=4, activation=activation, leaky_slope=0.2)
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU))]
    assert len(acts) == 5 and all(type(m) is module_type for m in acts)
    if activation == "leaky_relu":
        assert all(m.negative_slope == 0.2 for m in acts)


def test_batch_norm_switch() -> None:
    with_bn = vgg(depth=11, width=4)
    without = vgg(depth=11, width=4, batch_norm=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert all(c.bias is None for c in _convs(with_bn))
    assert all(c.bias is not None and not c.bias.any() for c in _convs(without))
    for bn in (m for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_he_and_xavier_std(activation: str) -> None:
    torch.manual_seed(0)
    he = vgg(depth=11, width=32, activation=activation, leaky_slope=0.3, init="he", batch_norm=False)
    xavier = vgg(depth=11, width=32, activation=activation, leaky_slope=0.3, init="xavier", batch_norm=False)
    # stage4's second conv: 256 → 256 channels, 3×3
    he_conv, xavier_conv = _convs(he.stage4)[1], _convs(xavier.stage4)[1]
    fan_in = fan_out = 256 * 9
    assert he_conv.weight.std().item() == pytest.approx(he_std(fan_out, activation, 0.3), rel=0.1)
    expected_he = math.sqrt(2.0 / ((1 + 0.3**2) if activation == "leaky_relu" else 1.0) / fan_out)
    assert he_std(fan_out, activation, 0.3) == pytest.approx(expected_he)
    assert xavier_conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.1)
    assert he_conv.weight.std() > 1.2 * xavier_conv.weight.std()


def test_gradients_reach_first_conv() -> None:
    model = vgg(depth=11, width=16).train()
    out = model(torch.randn(2, 3, 32, 32))
    out.maps["stage5"].sum().backward()
    first = _convs(model)[0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"depth": 12}, ["depth", "12", "8", "11", "13", "16", "19"]),
        ({"activation": "gelu"}, ["activation", "'relu'", "'leaky_relu'", "'elu'"]),
        ({"init": "kaiming"}, ["init", "'he'", "'xavier'"]),
        ({"stages": 6}, ["stages", "1", "5"]),
        ({"width": 0}, ["width"]),
    ],
)
def test_invalid_parameters(params: dict, words: list[str]) -> None:
    with pytest.raises(StageError) as info:
        make_entry(vgg).build(params)
    message = str(info.value)
    assert "vgg" in message
    for word in words:
        assert word in message
