"""The papers' setups as pipelines: ``pipelines/ssd300_vgg16.yaml`` (SSD300, Liu et al. 2016) and
``pipelines/fcn8s_vgg16.yaml`` (FCN-8s, Long et al. 2015) build and check offline.

Each YAML is loaded as a user would, with the loader pointed at the shipped test assets and
``model.backbone.pretrained=false`` (nothing is downloaded); the tests check the architecture the
papers describe, with one forward at the pipelines' input size on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vision_pipe import Pipeline
from vision_pipe.cli import main
from vision_pipe_plugins.backbone.ssd_vgg import SSDVGG

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT / "tests" / "assets" / "detection" / "voc"
SEG = ROOT / "tests" / "assets" / "segmentation"
IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]

OVERRIDES = {
    "ssd300_vgg16.yaml": [f"data.loader.root={VOC}", "model.backbone.pretrained=false"],
    "fcn8s_vgg16.yaml": [
        f"data.loader.images={SEG / 'images'}",
        f"data.loader.masks={SEG / 'palette_masks'}",
        f"data.loader.split_files.train={SEG / 'splits' / 'train.txt'}",
        f"data.loader.split_files.test={SEG / 'splits' / 'val.txt'}",
        "data.loader.classes=[background,circle,square]",
        "model.backbone.pretrained=false",
    ],
}


def _pipeline(name: str, tmp_path: Path) -> Pipeline:
    return Pipeline.from_yaml(ROOT / "pipelines" / name, [*OVERRIDES[name], f"output_dir={tmp_path / 'runs'}"])


@pytest.fixture(scope="module")
def ssd300(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return _pipeline("ssd300_vgg16.yaml", tmp_path_factory.mktemp("ssd300"))


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return _pipeline("fcn8s_vgg16.yaml", tmp_path_factory.mktemp("fcn8s"))


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_vision_pipe_check_passes_offline(name: str, tmp_path: Path, capsys: Any) -> None:
    assert main(["check", str(ROOT / "pipelines" / name), *OVERRIDES[name], f"output_dir={tmp_path}"]) == 0
    assert f"pipelines/{name}: OK" in capsys.readouterr().out


def _stats(pipe: Pipeline) -> list[float]:
    """The normalization's mean then std, in pixel units."""
    norm: Any = pipe.stages["normalization"]
    return [*norm.mean.tolist(), *norm.std.tolist()]


# ----------------------------------------------------------------------------
# SSD300
# ----------------------------------------------------------------------------


def test_ssd300_maps_boxes_and_extra_layers(ssd300: Pipeline) -> None:
    backbone, head = ssd300.stages["backbone"], ssd300.stages["head"]
    assert isinstance(backbone, SSDVGG)
    assert [(m.name, m.channels, m.size) for m in head.maps] == [
        ("stage3", 512, (38, 38)),  # conv4_3
        ("stage4", 1024, (19, 19)),  # conv7
        ("extra1", 512, (10, 10)),  # conv8_2
        ("extra2", 256, (5, 5)),  # conv9_2
        ("extra3", 256, (3, 3)),  # conv10_2
        ("extra4", 256, (1, 1)),  # conv11_2
    ]
    assert head.num_defaults == 8732
    mids = [[m.out_channels for m in extra if isinstance(m, nn.Conv2d)][0] for extra in head.extras]
    assert mids == [256, 128, 128, 128]  # the 1×1 convs halve
    assert not any(isinstance(m, nn.BatchNorm2d) for m in head.extras.modules())
    assert backbone.conv6.dilation == (6, 6) and backbone.conv6.padding == (6, 6)
    assert torch.equal(backbone.l2norm.weight, torch.full((512,), 20.0)) and backbone.l2norm.weight.requires_grad
    assert _stats(ssd300) == pytest.approx(IMAGENET_MEAN + IMAGENET_STD)
    assert tuple(ssd300.config.data.input_size) == (300, 300)


def test_ssd300_forward_and_loss_at_300_px_reach_the_l2norm_scale(ssd300: Pipeline) -> None:
    backbone, head = ssd300.stages["backbone"], ssd300.stages["head"]
    normalizer = ssd300.stages["normalization"]
    backbone.train()
    head.train()
    torch.manual_seed(0)
    images = torch.rand(1, 3, 300, 300) * 255
    features = backbone(normalizer(images))
    assert features.maps["stage3"].shape == (1, 512, 38, 38) and features.maps["stage4"].shape == (1, 1024, 19, 19)
    outputs = head(features)
    assert outputs.cls_logits.shape == (1, 8732, 21) and outputs.box_offsets.shape == (1, 8732, 4)
    batch = {
        "image": images,
        "boxes": [torch.tensor([[30.0, 40.0, 200.0, 260.0]])],
        "labels": [torch.tensor([11])],
        "meta": [{"id": "x", "orig_size": (300, 300)}],
    }
    loss = head.loss(outputs, batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    grad = backbone.l2norm.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)
    backbone.zero_grad()
    head.zero_grad()


# ----------------------------------------------------------------------------
# FCN-8s
# ----------------------------------------------------------------------------


def test_fcn8s_skips_and_output_size(fcn8s: Pipeline) -> None:
    backbone, head = fcn8s.stages["backbone"], fcn8s.stages["head"]
    strides = {f.name: f.stride for f in backbone.feature_info}
    assert head.skips == "fcn8" and head.upsample == "transposed"
    assert [strides[n] for n in head.skip_names] == [8, 16] and head.infos[-1].stride == 32  # pool3, pool4, pool5
    assert "pool_indices" in backbone.provides  # upsample: unpool would work too
    assert _stats(fcn8s) == pytest.approx(IMAGENET_MEAN + IMAGENET_STD)
    optimizer = fcn8s.config.optimizer
    assert (optimizer.name, optimizer.momentum, optimizer.backbone_lr) == ("sgd", 0.9, 0.001)
    assert optimizer.backbone_lr < optimizer.lr
    h, w = fcn8s.config.data.input_size
    backbone.eval()
    head.eval()
    with torch.no_grad():
        logits = head(backbone(fcn8s.stages["normalization"](torch.rand(2, 3, h, w) * 255)))
    assert logits.shape == (2, 3, h, w)  # (B, C, H, W): background, circle, square
