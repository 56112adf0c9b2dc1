"""Learning from unlabelled images end to end, with real Lightning runs: pipelines/shapes_autoencoder.yaml
(reduced to a few steps) pretrains, its run's backbone initializes pipelines/shapes_from_autoencoder.yaml,
``check`` works on both, ``predict`` writes reconstructions, denoising noise reaches the model in training steps
only, and a wrong chain is one clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vision_pipe import Pipeline
from vision_pipe.checkpoints import load_torch_file
from vision_pipe.cli import main

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
#: The shapes pipelines reduced to a few CPU steps.
SMALL = [
    "data.loader.num_images=40",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """shapes_autoencoder.yaml fitted for 4 epochs of 3 steps and tested; its runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    pipe = Pipeline.from_yaml(
        PIPELINES / "shapes_autoencoder.yaml", [*SMALL, "trainer.max_epochs=4", f"output_dir={runs}"]
    )
    pipe.fit()
    metrics = pipe.test()
    return pipe, metrics, runs


def _epoch_losses(run: Path) -> list[float]:
    with (run / "logs" / "csv" / "metrics.csv").open() as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_a_reconstruction_fit_reduces_the_loss_and_pictures_the_test_split(pretrained):
    pipe, metrics, _ = pretrained
    losses = _epoch_losses(pipe.run_dir)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert set(metrics) >= {"test/psnr", "test/mse", "test/loss"}
    assert metrics["test/mse"] == pytest.approx(10 ** (-metrics["test/psnr"] / 10), rel=1e-5)
    grid = cv2.imread(str(pipe.run_dir / "plots" / "test" / "reconstructions.png"))
    # 8 test images of 32 px enlarged to 64, in 3 rows (input / noisy input / output), 2 px gaps
    assert grid.shape == (3 * 64 + 4 * 2, 8 * 64 + 9 * 2, 3)


def test_the_autoencoders_backbone_initializes_the_classification_pipeline(pretrained, tmp_path):
    pipe, _, runs = pretrained
    ckpt = load_torch_file(pipe.run_dir / "checkpoints" / "best.ckpt")
    saved = {k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    tuned = Pipeline.from_yaml(
        PIPELINES / "shapes_from_autoencoder.yaml",
        [
            *SMALL,
            "trainer.max_epochs=1",
            f"model.backbone.weights={runs / 'shapes_autoencoder'}",
            f"output_dir={tmp_path}",
        ],
    )
    own = tuned.module.backbone.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in own)
    tuned.fit()
    report = json.loads((tuned.run_dir / "weights.json").read_text())
    assert report["file"] == str(pipe.run_dir / "checkpoints" / "best.ckpt")
    assert report["loaded"] == len(saved) and report["missing"] == report["unexpected"] == []


def test_check_works_on_both_pipelines(pretrained, tmp_path, capsys):
    _, _, runs = pretrained
    assert main(["check", str(PIPELINES / "shapes_autoencoder.yaml"), f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "task reconstruction" in out and "images only, no classes" in out and "head          autoencoder" in out
    weights = f"model.backbone.weights={runs / 'shapes_autoencoder'}"
    assert main(["check", str(PIPELINES / "shapes_from_autoencoder.yaml"), weights, f"output_dir={tmp_path}"]) == 0
    assert "task classification" in capsys.readouterr().out


def test_predict_writes_reconstructions_at_the_original_size(pretrained, tmp_path, capsys):
    pipe, _, _ = pretrained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "wide.png"), rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    assert main(["predict", str(pipe.run_dir / "checkpoints" / "best.ckpt"), str(images), "--out", str(out)]) == 0
    assert "wide.png: reconstruction 50x30, PSNR" in capsys.readouterr().out
    written = cv2.imread(str(out / "wide_reconstruction.png"))
    assert written is not None and written.shape == (30, 50, 3)
    (record,) = json.loads((out / "predictions.json").read_text())
    assert record["size"] == [30, 50] and record["psnr"] > 0


def test_denoising_noise_reaches_the_model_in_training_steps_only(tiny_config):
    tiny_config["task"] = "reconstruction"
    tiny_config["data"]["normalization"] = None  # the backbone sees the pixels as they are
    tiny_config["data"]["augmentation"] = []
    tiny_config["model"]["head"] = {"name": "autoencoder", "channels": 4, "noise": {"mask": 0.5}}
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    hidden: dict[bool, list[float]] = {True: [], False: []}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        hidden[module.training].append(float((args[0] == 0).all(dim=1).float().mean()))  # pixels set to 0

    pipe.module.backbone.register_forward_pre_hook(record)
    pipe.fit()
    assert hidden[True] and all(0.4 < f < 0.6 for f in hidden[True])  # mask 0.5 in training steps
    assert hidden[False] and all(f < 0.01 for f in hidden[False])  # validation: the clean images


def test_a_wrong_chain_is_one_clear_error(tiny_config, write_yaml, capsys):
    tiny_config["task"] = "reconstruction"
    tiny_config["data"]["loader"] = {"name": "image_folder", "root": str(ROOT / "assets" / "imagefolder_tiny")}
    tiny_config["model"]["head"] = {"name": "autoencoder"}
    assert main(["check", str(write_yaml("a.yaml", tiny_config))]) == 2
    err = capsys.readouterr().err
    assert (
        "loading stage 'image_folder' provides classification data, but the pipeline's task is 'reconstruction'" in err
    )
    tiny_config["task"] = "classification"
    assert main(["check", str(write_yaml("b.yaml", tiny_config))]) == 2
    err = capsys.readouterr().err
    assert "head 'autoencoder' solves reconstruction, but the pipeline's task is 'classification'" in err
    tiny_config["task"] = "reconstruction"
    tiny_config["data"]["loader"] = {"name": "synthetic_shapes", "num_images": 8, "size": 16}
    tiny_config["model"]["head"] = {"name": "autoencoder", "noise": {"gausian": 0.1}}
    assert main(["check", str(write_yaml("c.yaml", tiny_config))]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "head stage 'autoencoder': noise must be" in err and "'gausian'" in err
    assert "Traceback" not in err
