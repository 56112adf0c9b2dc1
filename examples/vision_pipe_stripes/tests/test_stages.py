"""The plugin's own tests: vision-pipe's testing kit checks each stage's contract."""

import pytest
import torch
from vision_pipe_stripes.stages import TinyConvNet, multiscale, per_image, stripes, tiny_convnet

from vision_pipe import StageError
from vision_pipe.testing import check_backbone, check_head, check_loader, check_normalization, check_stage, load_plugin


def test_stripes_keeps_the_loader_contract():
    check_loader(stripes, "classification", num_images=6, size=16)


def test_per_image_keeps_the_normalization_contract():
    norm = check_normalization(per_image, input_size=(12, 20))
    images = torch.rand(2, 3, 12, 20) * 255
    out = norm(images)
    assert torch.allclose(out.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3), correction=0), torch.ones(2, 3), atol=1e-3)
    assert not norm.needs_fit and norm.state_dict() == {}


def test_tiny_convnet_keeps_the_backbone_contract():
    backbone = check_backbone(tiny_convnet, width=4)
    assert [f.stride for f in backbone.feature_info] == [2, 4]


def test_multiscale_keeps_the_head_contract_on_the_plugins_backbone():
    head = check_head(multiscale, "classification", backbone=TinyConvNet(4), pooling="max")
    assert head.classifier[-1].in_features == 4 + 8  # both maps of the backbone


def test_the_signatures_constraints_are_validated():
    with pytest.raises(StageError, match="width must be ≥ 1, got 0"):
        check_backbone(tiny_convnet, width=0)
    with pytest.raises(StageError, match="pooling must be one of .avg., .max., got .median."):
        check_head(multiscale, pooling="median")


def test_the_installed_package_registers_its_four_stages():
    manager = load_plugin("stripes")  # the entry point's name, alone: no other plugin is loaded
    params = {"loading": {"num_images": 4}, "normalization": {}, "backbone": {"width": 2}, "head": {}}
    assert manager.plugins["stripes"].stages == [
        ("loading", "stripes"),
        ("normalization", "per_image"),
        ("backbone", "tiny_convnet"),
        ("head", "multiscale"),
    ]
    for kind, name in manager.plugins["stripes"].stages:
        entry = manager.registry.get(kind, name)
        assert entry.distribution == "vision-pipe-stripes"
        check_stage(entry, **params[kind])
