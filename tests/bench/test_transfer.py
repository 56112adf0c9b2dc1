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


def test_autoencoder_bench_reuses_a_pretraining_and_loads_only_the_stages_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("autoencoder_pretrain")
    tiny = ["--seeds", "1", "--epochs", "1", "--train-images", "30", "--pretrain-epochs", "1", "--workers", "0"]
    first = tmp_path / "first"
    monkeypatch.setattr(
        sys, "argv", ["autoencoder_pretrain.py", *tiny, "--pretrain-images", "40", "--workdir", str(first)]
    )
    bench.main()
    capsys.readouterr()
    pretrain_runs = sorted((first / "pretrain" / "shapes_autoencoder").iterdir())
    assert len(pretrain_runs) == 1

    argv = [*tiny, "--reuse", str(first), "--load-stages", "stage1", "--tuned-set", "optimizer.backbone_lr=0.0005"]
    monkeypatch.setattr(sys, "argv", ["autoencoder_pretrain.py", *argv])
    bench.main()
    out = capsys.readouterr().out
    assert f"reused {pretrain_runs[0]}: 1 epochs" in out
    assert "pretrained arm: stages stage1, overrides optimizer.backbone_lr=0.0005" in out
    row = re.search(r"^\s+0\s+([\d.]+)\s+([\d.]+)\s.*$", out, re.MULTILINE)
    assert row is not None, out
    # stage1 of VGG-11: one conv and its batch norm (weight, bias, running mean / var, batches tracked)
    assert "6 tensors loaded" in row.group(0)
    # the unlabelled PNGs of the first run are hashed in the form the overlap check compares: the generator's
    # RGB arrays (so that the 0 below is a real check, not a mismatch of forms)
    generated = bench.synthetic_shapes(num_images=40, size=48, seed=1).load("reconstruction").splits["all"]
    assert bench.png_hashes(first / "unlabelled") == bench.image_hashes(generated)
    assert "test images among pretraining images: 0" in row.group(0)
    assert len(sorted((first / "pretrain" / "shapes_autoencoder").iterdir())) == 1  # nothing pretrained again
