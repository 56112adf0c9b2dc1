"""The timm and torchvision backbone stages: contract, map names, weights from files, errors, runs, CLI."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from vision_pipe import ChainError, Pipeline, StageContext, StageError, load_weights_file
from vision_pipe.cli import main
from vision_pipe.registry import make_entry
from vision_pipe.testing import check_backbone
from vision_pipe_plugins.backbone.library import stride_names
from vision_pipe_plugins.backbone.timm_backbone import timm_backbone
from vision_pipe_plugins.backbone.torchvision_backbone import torchvision_backbone


def _build(factory: Any, *, restoring: bool = False, **params: Any) -> Any:
    """Build through the registry, as a pipeline does (parameters validated)."""
    context = StageContext(task="classification", seed=0, input_size=(32, 32), restoring=restoring)
    return make_entry(factory).build(params, context).eval()


@pytest.mark.parametrize(
    ("factory", "model"),
    [
        (timm_backbone, "resnet18"),
        (timm_backbone, "mobilenetv3_small_050"),
        (timm_backbone, "convnext_atto"),  # patchify stem: rounds down, padded to meet the contract
        (torchvision_backbone, "resnet18"),
        (torchvision_backbone, "vgg11"),
        (torchvision_backbone, "mobilenet_v3_small"),
    ],
)
def test_contract_check_passes(factory: Any, model: str) -> None:
    backbone = check_backbone(factory, input_size=(32, 32), model=model)
    assert backbone.provides == (frozenset({"pool_indices"}) if model == "vgg11" else frozenset())


def test_map_names_are_by_stride_and_stable() -> None:
    full = _build(timm_backbone, model="resnet18")
    assert [(f.name, f.stride) for f in full.feature_info] == [(f"stage{k}", 2**k) for k in range(1, 6)]
    assert [f.name for f in _build(timm_backbone, model="resnet18", out_indices=[2, 4]).feature_info] == [
        "stage3",
        "stage5",
    ]
    tv = _build(torchvision_backbone, model="resnet18")
    assert tv.feature_info == full.feature_info  # same names, channels and strides from both libraries
    assert [f.name for f in _build(timm_backbone, model="convnext_atto").feature_info] == [
        f"stage{k}" for k in (2, 3, 4, 5)
    ]
    assert stride_names([16, 16, 16], "x") == ["stage4", "stage4_2", "stage4_3"]
    with pytest.raises(StageError, match="powers of two"):
        stride_names([4, 14], "x")


def test_odd_sizes_round_up_for_a_model_that_rounds_down() -> None:
    backbone = _build(timm_backbone, model="convnext_atto")
    assert backbone.pad  # the probe found that ConvNeXt rounds down
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 33, 47))
    for info in backbone.feature_info:
        assert out.maps[info.name].shape[-2:] == (math.ceil(33 / info.stride), math.ceil(47 / info.stride))


def test_timm_weights_from_a_file_give_the_source_models_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet10t").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_features(x)  # layer4: stride 32
    save_file(source.state_dict(), str(tmp_path / "r10t.safetensors"))
    torch.save(source.state_dict(), tmp_path / "r10t.pth")
    for name in ("r10t.safetensors", "r10t.pth"):
        backbone = _build(timm_backbone, model="resnet10t", pretrained=str(tmp_path / name))
        with torch.no_grad():
            assert torch.equal(backbone(x).maps["stage5"], expected), name
    fresh = _build(timm_backbone, model="resnet10t")
    with torch.no_grad():
        assert not torch.equal(fresh(x).maps["stage5"], expected)


def test_torchvision_weights_from_a_file_give_the_source_models_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.layer4(
            source.layer3(source.layer2(source.layer1(source.maxpool(source.relu(source.bn1(source.conv1(x)))))))
        )
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    backbone = _build(torchvision_backbone, model="resnet18", pretrained=str(tmp_path / "r18.safetensors"))
    with torch.no_grad():
        assert torch.equal(backbone(x).maps["stage5"], expected)
    with pytest.raises(StageError, match=r"weights .*r18.safetensors do not fit the model"):
        _build(torchvision_backbone, model="resnet34", pretrained=str(tmp_path / "r18.safetensors"))


def test_library_backbones_publish_their_weights_input_statistics(tmp_path: Path) -> None:
    imagenet = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    timm_r18 = _build(timm_backbone, model="resnet18")
    assert not timm_r18.pretrained
    assert timm_r18.input_stats.source == "timm resnet18.a1_in1k"  # the default tag's, also without weights
    assert torch.allclose(torch.tensor(timm_r18.input_stats.mean), torch.tensor(imagenet[0]))
    assert torch.allclose(torch.tensor(timm_r18.input_stats.std), torch.tensor(imagenet[1]))
    tv_feat = _build(torchvision_backbone, model="vgg16", restoring=True, pretrained="IMAGENET1K_FEATURES")
    assert tv_feat.input_stats.source == "torchvision VGG16_Weights.IMAGENET1K_FEATURES"
    assert torch.allclose(torch.tensor(tv_feat.input_stats.std), torch.ones(3))  # Caffe-style: 0..255 kept
    assert torch.allclose(torch.tensor(tv_feat.input_stats.mean), torch.tensor([123.0, 117.0, 104.0]), atol=0.1)
    save_file(torchvision.models.resnet18().state_dict(), str(tmp_path / "r18.safetensors"))
    tv = _build(torchvision_backbone, model="resnet18", pretrained=str(tmp_path / "r18.safetensors"))
    assert tv.pretrained and tv.input_stats.source == "torchvision ResNet18_Weights.IMAGENET1K_V1"


def test_restoring_reads_and_downloads_no_weights(tmp_path: Path) -> None:
    """Built to receive a checkpoint's state, a backbone asks for no weights: none are downloaded
    (a tag would need the network) and a weights file that is gone is not an error."""
    gone = str(tmp_path / "gone.safetensors")
    for factory, model, tag in ((timm_backbone, "resnet10t", "c3_in1k"), (torchvision_backbone, "resnet18", "DEFAULT")):
        for pretrained in (True, tag, gone):
            backbone = _build(factory, model=model, pretrained=pretrained, restoring=True)
            assert backbone.pretrained and backbone.input_stats is not None
        with pytest.raises(StageError, match="gone.safetensors"):
            _build(factory, model=model, pretrained=gone)
    tagged = _build(timm_backbone, model="resnet10t", pretrained="c3_in1k", restoring=True)
    assert tagged.input_stats.source == "timm resnet10t.c3_in1k"


def test_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"unknown model 'resnet19x'.*Did you mean 'resnet18'"):
        _build(timm_backbone, model="resnet19x")
    with pytest.raises(StageError, match=r"no pretrained tag 'a1_in2k'; its tags: .*a1_in1k"):
        _build(timm_backbone, model="resnet18", pretrained="a1_in2k")
    with pytest.raises(StageError, match=r"out_indices \[7\] out of range: 'resnet18' has 5 feature levels \(0..4\)"):
        _build(timm_backbone, model="resnet18", out_indices=[7])
    with pytest.raises(StageError, match="not found: .*missing.safetensors"):
        _build(timm_backbone, model="resnet18", pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(StageError, match=r"unsupported model 'alexnet'; supported: .*vgg16_bn"):
        _build(torchvision_backbone, model="alexnet")
    with pytest.raises(StageError, match=r"no weights 'IMAGENET2K_V1'; its weights: DEFAULT, IMAGENET1K_V1"):
        _build(torchvision_backbone, model="resnet18", pretrained="IMAGENET2K_V1")


class _RunsCode:
    """Unpickling this creates ``marker``: what a hostile weights file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pretrained_files_are_read_as_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _RunsCode(marker)}, hostile)
    for factory in (timm_backbone, torchvision_backbone):
        with pytest.raises(StageError, match=r"hostile.pth: refusing to load .*--trust-checkpoint"):
            _build(factory, model="resnet18", pretrained=str(hostile))
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert list(load_weights_file(tmp_path / "wrapped.pt")) == ["w"]
    torch.save({"w": "text"}, tmp_path / "odd.pt")
    with pytest.raises(StageError, match=r"odd.pt: not a weights file: expected a mapping of parameter names"):
        load_weights_file(tmp_path / "odd.pt")


# ----------------------------------------------------------------------------
# under the three heads
# ----------------------------------------------------------------------------


def _config(tiny_config: dict[str, Any], task: str, backbone: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    tiny_config["task"] = task
    tiny_config["data"]["loader"] = {"name": "synthetic_shapes", "num_images": 16, "size": 32, "seed": 0}
    tiny_config["data"]["input_size"] = [32, 32]
    tiny_config["data"]["batch_size"] = 8
    tiny_config["data"]["augmentation"] = []
    tiny_config["model"] = {"backbone": backbone, "head": head}
    tiny_config["trainer"]["max_epochs"] = 1
    tiny_config["trainer"]["limit_train_batches"] = 1
    tiny_config["trainer"]["limit_val_batches"] = 1
    return tiny_config


RUNS = [
    ("classification", {"name": "timm", "model": "resnet18"}, {"name": "classification"}),
    ("segmentation", {"name": "timm", "model": "mobilenetv3_small_050"}, {"name": "fcn", "upsample": "transposed"}),
    ("segmentation", {"name": "torchvision", "model": "vgg11"}, {"name": "fcn", "upsample": "unpool"}),
    ("detection", {"name": "torchvision", "model": "resnet18"}, {"name": "ssd", "extra_channels": 8}),
    ("detection", {"name": "timm", "model": "mobilenetv3_small_050"}, {"name": "ssd", "extra_channels": 8}),
]


@pytest.mark.parametrize(
    ("task", "backbone", "head"), RUNS, ids=[f"{b['name']}-{b['model']}-{h['name']}" for _, b, h in RUNS]
)
def test_one_epoch_fit_under_each_head(tiny_config, task: str, backbone: dict, head: dict) -> None:
    pipe = Pipeline.from_dict(_config(tiny_config, task, backbone, head))
    metrics = pipe.fit()
    assert math.isfinite(metrics["train/loss"] if "train/loss" in metrics else metrics["val/loss"])
    assert (pipe.run_dir / "checkpoints" / "last.ckpt").is_file()


def test_unpool_without_pool_indices_names_the_alternatives(tiny_config) -> None:
    config = _config(
        tiny_config, "segmentation", {"name": "timm", "model": "resnet18"}, {"name": "fcn", "upsample": "unpool"}
    )
    with pytest.raises(ChainError, match=r"'torchvision' with a VGG model.*'transposed' or 'bilinear'"):
        Pipeline.from_dict(config)


# ----------------------------------------------------------------------------
# CLI and the network
# ----------------------------------------------------------------------------


def test_backbones_command_lists_matching_models(capsys) -> None:
    assert main(["backbones", "resnet1*"]) == 0
    out = capsys.readouterr().out
    assert "backbone 'timm'" in out and "backbone 'torchvision'" in out
    listed = {line.strip() for line in out.splitlines() if line.startswith("  ")}
    assert {"resnet18", "resnet10t", "resnet101"} <= listed and "resnet50" not in listed
    assert main(["backbones", "VGG16_BN", "--pretrained"]) == 0
    assert "vgg16_bn.IMAGENET1K_V1" in capsys.readouterr().out.split()


def _online(host: str = "huggingface.co") -> bool:
    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _online(), reason="offline: downloading a real pretrained tag needs the network")
def test_download_a_real_pretrained_tag() -> None:
    backbone = _build(timm_backbone, model="resnet18", pretrained="a1_in1k")
    reference = timm.create_model("resnet18.a1_in1k", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x).maps["stage5"], reference.forward_features(x))
