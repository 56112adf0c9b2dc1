"""`vision-pipe check` finds what `fit` would stop on (issue #11, section 5): trainer values, data bounds,
disabled plugins, prediction writers."""

from __future__ import annotations

import os

import pytest

from vision_pipe import ConfigError, Pipeline, VisionPipeError
from vision_pipe.cli import main


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("max_epochs", "3", "not a valid value of Trainer(max_epochs=...), which takes int | None"),
        ("max_epochs", -5, "`max_epochs` must be a non-negative integer or -1"),
        ("precision", "17", "'17' is not a valid value of Trainer(precision=...)"),
        ("devices", 0, "Trainer(devices=0)"),
        ("accelerator", "tpux", "invalid accelerator name"),
        ("limit_train_batches", 1.5, "invalid value 1.5 for limit_train_batches"),
        ("check_val_every_n_epoch", 0, "must be >= 1"),
        ("log_every_n_steps", -1, "must be >= 0"),
    ],
)
def test_check_refuses_trainer_values_naming_the_key_and_line(key, value, says, tiny_config, write_yaml, capsys):
    tiny_config["trainer"][key] = value
    path = write_yaml("p.yaml", tiny_config)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{key}:"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:{line}: trainer.{key}: " in err
    assert says in err and "Traceback" not in err


def test_a_trainer_value_from_an_override_names_the_override(tiny_config, write_yaml, capsys):
    assert main(["check", str(write_yaml("p.yaml", tiny_config)), "trainer.max_epochs=-5"]) == 2
    assert "override 'trainer.max_epochs=-5'" in capsys.readouterr().err


def test_fit_stops_on_a_bad_trainer_value_before_making_a_run_directory(tiny_config, tmp_path):
    tiny_config["trainer"]["accelerator"] = "tpux"
    pipe = Pipeline.from_dict(tiny_config)  # building is machine-independent: a checkpoint still loads anywhere
    with pytest.raises(ConfigError, match="trainer.accelerator"):
        pipe.fit()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("num_workers", -1, "greater than or equal to 0"), ("batch_size", 10**6, "less than or equal to 65536")],
)
def test_data_bounds(key, value, says, tiny_config):
    tiny_config["data"][key] = value
    with pytest.raises(ConfigError, match=f"data.{key}: .*{says}"):
        Pipeline.from_dict(tiny_config)


def test_valid_trainer_values_pass(tiny_config, write_yaml, capsys):
    tiny_config["trainer"].update(precision="bf16-mixed", devices=1, max_epochs=-1, max_time={"minutes": 5})
    assert main(["check", str(write_yaml("p.yaml", tiny_config))]) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------
# --disable
# ----------------------------------------------------------------------------


def test_disabling_an_unknown_plugin_is_an_error_with_did_you_mean(tiny_config, write_yaml, capsys):
    assert main(["check", str(write_yaml("p.yaml", tiny_config)), "--disable", "resnt"]) == 2
    err = capsys.readouterr().err
    assert "--disable resnt: no plugin 'resnt' is installed" in err and "Did you mean 'resnet'" in err
    assert main(["stages", "--disable", "vg"]) == 2
    assert "Did you mean 'vgg'" in capsys.readouterr().err


def test_a_stage_of_a_disabled_plugin_says_so(tiny_config, write_yaml, capsys):
    assert main(["check", str(write_yaml("p.yaml", tiny_config)), "--disable", "vgg"]) == 2
    err = capsys.readouterr().err
    assert "stage 'vgg' is provided by plugin 'vgg', which is disabled (--disable vgg)" in err
    assert "model.backbone.name" in err


# ----------------------------------------------------------------------------
# prediction writers
# ----------------------------------------------------------------------------


def test_predict_onto_an_existing_file_or_under_one_is_our_error(tiny_config, write_yaml, tmp_path, capsys):
    tiny_config["trainer"]["max_epochs"] = 1
    path = write_yaml("p.yaml", tiny_config)
    assert main(["fit", str(path), "--no-test"]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(image), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"error: {taken}: the output folder is an existing file" in err and "Traceback" not in err
    assert taken.read_text() == "keep me"
    assert main(["predict", str(ckpt), str(image), "--out", str(taken / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"error: {taken / 'sub'}: cannot write predictions into this folder" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_an_unwritable_folder_is_our_error(tiny_config, tmp_path):
    import numpy as np

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    pipe = Pipeline.from_dict(tiny_config)
    try:
        with pytest.raises(VisionPipeError, match=f"{locked}: cannot write predictions into this folder"):
            pipe.predict([np.zeros((16, 16, 3), np.uint8)], out=locked)
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc (a folder nobody can write in)")
def test_predict_into_a_folder_that_cannot_be_made_fails_before_predicting(tiny_config):
    import numpy as np

    pipe = Pipeline.from_dict(tiny_config)
    with pytest.raises(VisionPipeError, match="/proc/vision-pipe-out: cannot write predictions into this folder"):
        pipe.predict([np.zeros((16, 16, 3), np.uint8)], out="/proc/vision-pipe-out")
