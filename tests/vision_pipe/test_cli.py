"""The ``vision-pipe`` command line on tiny data: real runs through ``main``, and its error handling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vision_pipe.cli import main


def test_help_for_every_command():
    for command in ["fit", "validate", "test", "predict", "check", "stages", "plugins", "runs", "compare", "report"]:
        result = subprocess.run(
            [sys.executable, "-m", "vision_pipe.cli", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage: vision-pipe " + command in result.stdout


def test_check_prints_the_chain(tiny_config, write_yaml, capsys):
    path = write_yaml("p.yaml", tiny_config)
    assert main(["check", str(path), "model.backbone.width=6"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "train 36, val 12, test 12" in out
    assert "stage1(c=6, stride=2), stage2(c=12, stride=4)" in out


def test_stages_lists_parameters_types_defaults_and_plugin(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "  vgg  [vgg (vision-pipe)]" in out
    assert "      depth: 8 | 11 | 13 | 16 | 19 = 11" in out
    assert "      activation: 'relu' | 'leaky_relu' | 'elu' = 'relu'" in out
    assert "      stages: int in [1, 5] = 5" in out
    assert "HorizontalFlip  [albumentations (vision-pipe)]" in out
    assert main(["stages", "--kind", "augmentation"]) == 0
    assert "      p: float in [0, 1] = 0.5" in capsys.readouterr().out


def test_plugins_lists_packages_and_stages(capsys):
    assert main(["plugins", "--disable", "resnet"]) == 0
    out = capsys.readouterr().out
    assert "vgg" in out and "vision-pipe 0.1.0" in out and "backbone:vgg" in out
    assert re.search(r"disabled: .*resnet", out)


def test_fit_test_predict_end_to_end(tiny_config, write_yaml, tmp_path, capsys):
    path = write_yaml("p.yaml", tiny_config)
    assert main(["fit", str(path), "trainer.max_epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "test/acc" in out and "run directory:" in out
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    ckpt = run_dir / "checkpoints" / "best.ckpt"

    # the saved config repeats the run
    assert main(["check", str(run_dir / "config.yaml")]) == 0

    assert main(["test", str(path), "--ckpt", str(ckpt)]) == 0
    assert "test/acc" in capsys.readouterr().out

    images = tmp_path / "images"
    images.mkdir()
    from vision_pipe import Pipeline

    pipe = Pipeline.from_yaml(path)
    for i in range(3):
        cv2.imwrite(str(images / f"img{i}.png"), pipe.splits["test"][i]["image"][:, :, ::-1])
    out_dir = tmp_path / "pred"
    assert main(["predict", str(ckpt), str(images), "--out", str(out_dir)]) == 0
    records = json.loads((out_dir / "predictions.json").read_text())
    assert [r["id"] for r in records] == [str(images / f"img{i}.png") for i in range(3)]
    assert all(r["class_name"] in ("circle", "square", "triangle") for r in records)
    annotated = cv2.imread(str(out_dir / "img0_pred.png"))
    assert annotated is not None and min(annotated.shape[:2]) >= 256


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_predict_writes_task_outputs_at_the_original_size(task, tiny_config, write_yaml, tmp_path, capsys):
    tiny_config["task"] = task
    tiny_config["data"]["input_size"] = [32, 32]
    tiny_config["data"]["loader"].update(size=32, num_images=40)
    tiny_config["model"]["head"] = (
        {"name": "fcn", "upsample": "bilinear", "skips": "none"} if task == "segmentation" else {"name": "ssd", "extra_channels": 8}
    )
    tiny_config["trainer"]["max_epochs"] = 1
    path = write_yaml("p.yaml", tiny_config)
    assert main(["fit", str(path), "--no-test"]) == 0
    ckpt = next((tmp_path / "runs" / "tiny").iterdir()) / "checkpoints" / "last.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "wide.png"), rng.integers(0, 255, (45, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "tall.jpg"), rng.integers(0, 255, (61, 29, 3), dtype=np.uint8))
    out_dir = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(images), "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "tall.jpg" in printed and "wide.png" in printed
    records = {Path(r["id"]).name: r for r in json.loads((out_dir / "predictions.json").read_text())}
    assert set(records) == {"tall.jpg", "wide.png"}
    assert (out_dir / "tall_pred.png").is_file() and (out_dir / "wide_pred.png").is_file()
    if task == "segmentation":
        for name, size in [("wide", (45, 70)), ("tall", (61, 29))]:
            mask = cv2.imread(str(out_dir / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == size and mask.max() < 4  # class ids at the input's own size
            assert records[f"{name}.{'png' if name == 'wide' else 'jpg'}"]["size"] == list(size)
    else:
        coco = json.loads((out_dir / "detections_coco.json").read_text())
        assert len(coco) == sum(len(r["boxes"]) for r in records.values())
        for det in coco:
            x, y, w, h = det["bbox"]
            height, width = (45, 70) if det["file_name"].endswith("wide.png") else (61, 29)
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
            assert det["category_name"] in ("circle", "square", "triangle")


def test_errors_are_one_clear_message_with_exit_code_2(tiny_config, write_yaml, tmp_path, capsys):
    tiny_config["model"]["backbone"]["name"] = "resnt"
    path = write_yaml("p.yaml", tiny_config)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Did you mean 'resnet'" in err and "Traceback" not in err
    assert main(["fit", str(tmp_path / "missing.yaml")]) == 2
    assert "pipeline file not found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.ckpt"), str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_fit_save_json_on_a_classification_pipeline_stops_before_training(tiny_config, write_yaml, tmp_path, capsys):
    path = write_yaml("p.yaml", tiny_config)
    assert main(["fit", str(path), "--save-json"]) == 2
    err = capsys.readouterr().err
    assert "COCO results format" in err and "'tiny' solves classification" in err
    assert not (tmp_path / "runs").exists()  # nothing was trained or written


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2


def test_unreadable_image_found_in_a_worker_is_one_clear_message(tiny_config, write_yaml, tmp_path, capsys):
    import numpy as np

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name in ["a", "b"]:
        (root / name).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    broken = root / "b" / "3.png"
    broken.write_text("not an image")
    tiny_config["data"]["loader"] = {"name": "image_folder", "root": str(root)}
    tiny_config["data"]["num_workers"] = 1
    tiny_config["trainer"]["max_epochs"] = 1
    path = write_yaml("p.yaml", tiny_config)
    assert main(["check", str(path)]) == 0  # indexing does not decode
    capsys.readouterr()
    assert main(["check", str(path), "--data"]) == 2  # the pre-flight pass decodes every image
    assert f"cannot read image {broken}: not a valid image file" in capsys.readouterr().err
    assert main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {broken}: not a valid image file" in err
    assert "found 1 bad sample(s) of 10" in err and "data.on_bad_sample: skip" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # stopped before any run directory was made

    # skipped instead: the run trains on the other 9 and lists the bad one
    assert main(["fit", str(path), "data.on_bad_sample=skip", "--no-test"]) == 0
    out = capsys.readouterr().out
    assert "pre-flight: 10 samples checked" in out and "1 bad sample(s) left out" in out
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    report = json.loads((run_dir / "preflight.json").read_text())
    assert report["on_bad_sample"] == "skip" and report["checked"] == {"train": 6, "val": 2, "test": 2}
    (bad,) = report["bad"]
    assert bad["split"] == "test" and f"cannot read image {broken}" in bad["reason"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data/skipped"] == 1 and metrics["data/checked"] == 10


@pytest.mark.parametrize(
    "order",
    [
        ["fit", "{p}", "trainer.max_epochs=1", "--no-test"],
        ["fit", "--no-test", "{p}", "trainer.max_epochs=1"],
        ["fit", "{p}", "--no-test", "trainer.max_epochs=1"],
    ],
)
def test_flags_may_come_before_between_or_after_the_overrides(order, tiny_config, write_yaml, tmp_path, capsys):
    path = write_yaml("p.yaml", tiny_config)  # 2 epochs unless the override is applied
    assert main([a.format(p=path) for a in order]) == 0
    out = capsys.readouterr().out
    assert "test metrics" not in out, "--no-test was applied"
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["fit/epochs"] == 1.0, "the override was applied"


def test_check_takes_flags_anywhere_and_names_a_bad_override(tiny_config, write_yaml, capsys):
    path = write_yaml("p.yaml", tiny_config)
    assert main(["check", "--disable", "resnet", str(path), "model.backbone.width=6", "--data"]) == 0
    assert "pre-flight" in capsys.readouterr().out
    assert main(["check", str(path), "--data", "model.head.dropuot=0.2"]) == 2
    assert "override 'model.head.dropuot=0.2'" in capsys.readouterr().err
