"""bench/transfer.py and bench/autoencoder_pretrain.py at a tiny size: the pretraining run's checkpoint
loads into the fine-tuned arm's backbone, every tensor of it."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(
    ("script", "pretrain_images", "pretraining_line"),
    [
        ("transfer", 60, None),
        ("autoencoder_pretrain", 40, "pretraining (autoencoder, unlabelled_folder): 32 training images"),
    ],
)
def test_the_fine_tuned_arm_loads_every_backbone_tensor_of_the_pretraining_run(
    script: str,
    pretrain_images: int,
    pretraining_line: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module(script)
    tiny = ["--seeds", "1", "--epochs", "1", "--train-images", "30", "--pretrain-epochs", "1"]
    monkeypatch.setattr(
        sys, "argv", [f"{script}.py", *tiny, "--pretrain-images", str(pretrain_images), "--workers", "0"]
    )
    bench.main()
    out = capsys.readouterr().out
    row = re.search(r"^\s+0\s+([\d.]+)\s+([\d.]+)\s.*$", out, re.MULTILINE)
    assert row is not None, out
    # the VGG-11 backbone's 36 tensors (convs, batch norm incl. running statistics), strictly: none missing
    assert "36 tensors loaded, 0 missing" in row.group(0)
    assert "test images among pretraining images: 0" in row.group(0)
    assert "train / val / test 30 / 10 / 60 images" in out
    if pretraining_line is not None:
        assert pretraining_line in out
