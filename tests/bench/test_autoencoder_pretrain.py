"""bench/autoencoder_pretrain.py at a tiny size: the autoencoder run's backbone loads into the classification arm."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_pretrained_arm_loads_every_backbone_tensor_of_the_autoencoder_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("autoencoder_pretrain")
    tiny = [
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--train-images",
        "30",
        "--pretrain-epochs",
        "1",
        "--pretrain-images",
        "40",
    ]
    monkeypatch.setattr(sys, "argv", ["autoencoder_pretrain.py", *tiny, "--workers", "0"])
    bench.main()
    out = capsys.readouterr().out
    row = re.search(r"^\s+0\s+([\d.]+)\s+([\d.]+)\s.*$", out, re.MULTILINE)
    assert row is not None, out
    # the VGG-11 backbone's 36 tensors (convs, batch norm incl. running statistics), strictly: none missing
    assert "36 tensors loaded, 0 missing" in row.group(0)
    assert "test images among pretraining images: 0" in row.group(0)
    assert "pretraining (autoencoder, unlabelled_folder): 32 training images" in out
    assert "train / val / test 30 / 10 / 60 images" in out
