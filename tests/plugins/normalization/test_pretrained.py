"""The ``pretrained`` normalization: the backbone's weights' input statistics, and the check's warning."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch

from vision_pipe import ChainError, Pipeline


def _timm_config(tiny_config: dict[str, Any], weights: Path, normalization: dict[str, Any] | None) -> dict[str, Any]:
    tiny_config["data"]["loader"] = {"name": "synthetic_shapes", "num_images": 24, "size": 32, "seed": 0}
    tiny_config["data"]["input_size"] = [32, 32]
    tiny_config["data"]["normalization"] = normalization
    tiny_config["model"]["backbone"] = {"name": "timm", "model": "resnet10t", "pretrained": str(weights)}
    tiny_config["trainer"].update(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    return tiny_config


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A randomly initialized timm resnet10t's state dict (offline stand-in for ImageNet weights)."""
    torch.manual_seed(0)
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), path)
    return path


def test_applies_the_backbones_statistics(tiny_config, weights: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="vision_pipe"):
        pipe = Pipeline.from_dict(_timm_config(tiny_config, weights, {"name": "pretrained"}))
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]
    norm = pipe.stages["normalization"]
    assert not norm.needs_fit
    stats = pipe.stages["backbone"].input_stats
    assert stats.source == "timm resnet10t.c3_in1k"
    image = torch.full((1, 3, 2, 2), 255.0)
    expected = (255.0 - torch.tensor(stats.mean)) / torch.tensor(stats.std)  # ImageNet's: (1 - 0.485) / 0.229, ...
    assert torch.allclose(expected, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    assert torch.allclose(norm(image)[0, :, 0, 0], expected)


def test_travels_in_the_checkpoint_and_restores_offline(tiny_config, weights: Path) -> None:
    """A fit with ``pretrained: <file>`` then ``Pipeline.load`` after the file is gone: the backbone
    reads no weights when restoring, the normalization comes back, predictions are equal."""
    pipe = Pipeline.from_dict(_timm_config(tiny_config, weights, {"name": "pretrained"}))
    pipe.fit()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    before = pipe.predict([image], ckpt=pipe.run_dir / "checkpoints" / "last.ckpt")[0]
    weights.unlink()
    loaded = Pipeline.load(pipe.run_dir / "checkpoints" / "last.ckpt")
    after = loaded.predict([image])[0]
    assert after.label == before.label
    assert np.allclose(after.scores, before.scores, atol=1e-6)


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [
        ({"name": "mean_image"}, r"normalization 'mean_image' is fitted on your training images"),
        ({"name": "channel_stats"}, r"normalization 'channel_stats' is fitted on your training images"),
        (None, r"there is no normalization \(it sees raw pixel values 0..255\)"),
        (
            {"name": "channel_stats", "mean": [128, 128, 128], "std": [64, 64, 64]},
            r"normalization 'channel_stats' applies mean \[128.0, 128.0, 128.0\] std \[64.0, 64.0, 64.0\]",
        ),
    ],
)
def test_check_warns_when_a_pretrained_backbone_gets_other_statistics(
    tiny_config, weights: Path, caplog, normalization: dict[str, Any] | None, expected: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="vision_pipe"):
        Pipeline.from_dict(_timm_config(tiny_config, weights, normalization))
    messages = [r.getMessage() for r in caplog.records if "pretrained weights" in r.getMessage()]
    assert len(messages) == 1
    assert "model.backbone (backbone stage 'timm') holds pretrained weights" in messages[0]
    assert re.search(expected, messages[0])
    assert "expect mean [123.7, 116.3, 103.5] std [58.4, 57.1, 57.4]" in messages[0]
    assert "`normalization: {name: pretrained}` applies them" in messages[0]


def test_same_statistics_given_by_hand_and_random_init_do_not_warn(tiny_config, weights: Path, caplog) -> None:
    imagenet = {"name": "channel_stats", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    config = _timm_config(tiny_config, weights, {"name": "mean_image"})
    with caplog.at_level(logging.WARNING, logger="vision_pipe"):
        Pipeline.from_dict(_timm_config(tiny_config, weights, imagenet))
        config["model"]["backbone"]["pretrained"] = False  # random init: any normalization is fine
        Pipeline.from_dict(config)
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]


def test_a_backbone_without_statistics_is_a_chain_error(tiny_config) -> None:
    tiny_config["data"]["normalization"] = {"name": "pretrained"}
    with pytest.raises(ChainError, match=r"data.normalization .*backbone 'vgg' publishes no input statistics"):
        Pipeline.from_dict(tiny_config)
