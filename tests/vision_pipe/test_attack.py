"""Robustness under attack (``vision-pipe attack``, ``Pipeline.attack``, ``test.attack`` in YAML) and adversarial
training (``training.adversarial``): real Lightning runs of a tiny shapes model at 32×32."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from vision_pipe.cli import main
from vision_pipe.errors import ConfigError
from vision_pipe.pipeline import Pipeline

EPS = [0, 2, 8, 32]


def _config(output_dir: Path, **changes: Any) -> dict[str, Any]:
    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["output_dir"] = str(output_dir)
    config["trainer"]["max_epochs"] = 1
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Path]:
    """A model that learned: the kit's reference loader (a bright or a grey rectangle on dark noise, 32×32)
    told apart by a small VGG in six epochs; and its best checkpoint."""
    from vision_pipe.plugins import PluginManager
    from vision_pipe.testing import BoringPlugin

    config = _config(tmp_path_factory.mktemp("runs"))
    config["data"].update(loader={"name": "boring", "num_images": 200, "size": 32}, input_size=[32, 32])
    config["data"].update(augmentation=[], normalization={"name": "channel_stats"})
    # no batch norm: its running statistics would lag behind the weights after so few steps
    backbone = {"name": "vgg", "depth": 8, "width": 8, "stages": 2, "batch_norm": False}
    config["model"] = {"backbone": backbone, "head": {"name": "classification", "pooling": "max"}}
    config["optimizer"] = {"name": "adam", "lr": 0.01}
    config["data"]["batch_size"] = 8
    config["trainer"]["max_epochs"] = 6
    config.update(checkpoint={"monitor": "val/acc", "mode": "max"})
    manager = PluginManager()
    manager.register(BoringPlugin(), name="boring")
    pipe = Pipeline.from_dict(config, manager=manager)
    pipe.fit()
    assert pipe.best_checkpoint
    return pipe, Path(pipe.best_checkpoint)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Path, dict[str, Any]]:
    """The tiny shapes pipeline (16×16) trained one epoch, its best checkpoint and its config."""
    config = _config(tmp_path_factory.mktemp("runs"))
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    assert pipe.best_checkpoint
    return pipe, Path(pipe.best_checkpoint), config


def test_eps_zero_is_the_clean_test_and_accuracy_falls_with_eps(learned):
    pipe, ckpt = learned
    clean = pipe.test(ckpt)
    assert clean["test/acc"] >= 0.8  # the model learned
    attacked = pipe.attack(ckpt, eps=EPS, examples=2)
    for key, value in clean.items():  # every summary key of the task, the same numbers as test
        if key.count("/") == 1 and key != "test/loss":
            assert attacked[f"test/fgsm/eps=0/{key[5:]}"] == value
    curve = [attacked[f"test/fgsm/eps={e}/acc"] for e in EPS]
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False)), curve
    assert curve[-1] < curve[0]
    # merged into the run's metrics.json beside the clean metrics; curve and figure in plots/
    written = json.loads((pipe.run_dir / "metrics.json").read_text())
    assert {f"test/fgsm/eps={e}/{k}" for e in EPS for k in ("acc", "acc_top5", "error")} <= set(written)
    assert written["test/acc"] == clean["test/acc"] and "fit/epochs" in written
    assert (pipe.run_dir / "plots" / "fgsm_curve.png").stat().st_size > 0
    assert (pipe.run_dir / "plots" / "fgsm_examples.png").stat().st_size > 0


def test_pgd_of_one_step_of_eps_without_random_start_is_fgsm(trained):
    pipe, ckpt, _ = trained
    fgsm = pipe.attack(ckpt, eps=[4], examples=0)
    pgd = pipe.attack(ckpt, method="pgd", eps=[4], steps=1, alpha=4, random_start=False, examples=0)
    assert pgd["test/pgd/eps=4/acc"] == fgsm["test/fgsm/eps=4/acc"]
    stronger = pipe.attack(ckpt, method="pgd", eps=[4], steps=3, examples=0)
    assert stronger["test/pgd/eps=4/acc"] <= fgsm["test/fgsm/eps=4/acc"]


def test_cli_attack_prints_the_curve_and_yaml_test_attack_runs_it(trained, write_yaml, capsys):
    pipe, ckpt, config = trained
    assert main(["attack", str(ckpt), "--eps", "0,4", "--examples", "1", "data.batch_size=64"]) == 0
    out = capsys.readouterr().out
    clean = json.loads((ckpt.parent.parent / "metrics.json").read_text())["test/acc"]
    assert "fgsm: test acc vs eps (/255)" in out and f"eps=0      {clean:.4f}" in out and "eps=4" in out
    assert "fgsm_curve.png" in out and "fgsm_examples.png" in out

    path = write_yaml("p.yaml", {**config, "test": {"attack": {"method": "fgsm", "eps": [0, 8], "examples": 0}}})
    assert main(["test", str(path), "--ckpt", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "test/fgsm/eps=8/acc" in out and "test/fgsm/eps=0/acc" in out


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--eps", "-1,2"], "--eps"), (["--eps", "a,b"], "--eps"), (["--method", "fgsn"], "--method")],
)
def test_cli_bad_attack_settings_are_one_error_naming_the_flag(args, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["attack", str(tmp_path / "x.ckpt"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_bad_attack_and_adversarial_config_name_the_key(tiny_config, write_yaml, capsys):
    for section, bad, key in [
        ("test", {"attack": {"eps": [-1, 2]}}, "test.attack.eps.0"),
        ("test", {"attack": {"method": "fgsn"}}, "test.attack.method"),
        ("training", {"adversarial": {"eps": 2, "fraction": 0}}, "training.adversarial.fraction"),
        ("training", {"adversarial": {"eps": "big"}}, "training.adversarial.eps"),
    ]:
        path = write_yaml("bad.yaml", {**tiny_config, section: bad})
        assert main(["check", str(path)]) == 2
        err = capsys.readouterr().err
        assert "bad.yaml:" in err and f"{key}:" in err, err
    with pytest.raises(ConfigError, match="eps"):
        Pipeline.from_dict(tiny_config).attack(eps=[-1])


def test_adversarial_training_runs_and_logs_the_attacked_share(tiny_config):
    tiny_config["training"] = {"adversarial": {"method": "fgsm", "eps": 2, "fraction": 0.5}}
    tiny_config["trainer"]["max_epochs"] = 1
    pipe = Pipeline.from_dict(tiny_config)
    metrics = pipe.fit()
    # 36 training images in batches of 16, 16, 4: 8 + 8 + 2 attacked
    assert metrics["train/adversarial_fraction"] == pytest.approx(0.5)
    assert pipe.trainer is not None and pipe.trainer.global_step == 3
    pgd = copy.deepcopy(tiny_config)
    pgd["training"] = {"adversarial": {"method": "pgd", "eps": 2, "steps": 2, "fraction": 1.0}}
    assert Pipeline.from_dict(pgd).fit()["train/adversarial_fraction"] == 1.0


@pytest.mark.parametrize(("task", "metric"), [("segmentation", "miou"), ("detection", "map_50")])
def test_fcn_and_ssd_are_attacked_through_their_own_loss_and_metrics(task, metric, tmp_path):
    root = Path(__file__).resolve().parents[2]
    tiny = ["data.loader.num_images=24", "data.loader.size=32", "data.input_size=[32,32]", "data.batch_size=8"]
    tiny += ["data.num_workers=0", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1"]
    tiny += ["trainer.accelerator=cpu", "trainer.log_every_n_steps=1"]
    tiny += ["~early_stopping"]
    tiny += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"output_dir={tmp_path}"]
    pipe = Pipeline.from_yaml(root / f"pipelines/shapes_{task}.yaml", tiny)
    pipe.fit()
    clean = pipe.test()
    attacked = pipe.attack(eps=[0, 8], examples=1)
    assert attacked[f"test/fgsm/eps=0/{metric}"] == clean[f"test/{metric}"]
    assert f"test/fgsm/eps=8/{metric}" in attacked
    assert (pipe.run_dir / "plots" / "fgsm_examples.png").is_file()
