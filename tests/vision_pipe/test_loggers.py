"""Experiment trackers from the YAML's ``loggers:``: a real tiny fit + test logging to MLflow (local file store in
the run directory, read back with mlflow's client) and to W&B offline (its run folder read back); csv always on;
unknown loggers, options and missing packages are ConfigErrors naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vision_pipe import ConfigError, Pipeline
from vision_pipe.loggers import flatten, logger_entries


def test_tiny_fit_and_test_log_to_mlflow_and_wandb(tiny_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = copy.deepcopy(tiny_config)
    config["trainer"]["max_epochs"] = 1
    config["loggers"] = [{"name": "mlflow", "log_checkpoint": True}, "wandb"]  # csv left out: added
    pipe = Pipeline.from_dict(config)
    pipe.fit()
    test = pipe.test()
    run_dir = pipe.run_dir
    assert (run_dir / "logs" / "csv" / "metrics.csv").is_file() and (run_dir / "plots" / "curves.png").is_file()

    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])  # the test logged into the fit's run
    assert run.info.run_name == run_dir.name
    assert run.data.params["data.batch_size"] == "16" and run.data.params["model.backbone.name"] == "vgg"
    assert "val/acc" in run.data.metrics and run.data.metrics["test/acc"] == pytest.approx(test["test/acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "plots", "checkpoints"} <= artifacts
    sent = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics.json")).read_text())
    assert sent["test/acc"] == pytest.approx(test["test/acc"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {"checkpoints/best.ckpt"}

    import wandb

    wandb.finish()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert json.loads((offline / "files" / "metrics.json").read_text())["test/acc"] == pytest.approx(test["test/acc"])
    assert (offline / "files" / "plots" / "curves.png").is_file()
    record = next(offline.glob("*.wandb")).read_bytes()  # the run's log: the config and the metrics are in it
    assert b"data.batch_size" in record and b"val/acc" in record


def test_csv_is_always_on_and_config_is_flattened(tiny_config: dict) -> None:
    config = copy.deepcopy(tiny_config)
    config["loggers"] = ["tensorboard"]
    pipe = Pipeline.from_dict(config)
    assert [e["name"] for e in logger_entries(pipe.config)] == ["csv", "tensorboard"]
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": "None"}


@pytest.mark.parametrize(
    ("loggers", "message"),
    [
        (["mlfow"], r"loggers\.0: .*unknown logger 'mlfow'\. Did you mean 'mlflow'\?"),
        ([{"name": "mlflow", "trackin_uri": "x"}], r"loggers\.0\.trackin_uri: .*Did you mean 'tracking_uri'\?"),
        ([{"name": "csv", "offline": True}], r"loggers\.0\.offline: logger 'csv' has no option"),
    ],
)
def test_bad_logger_entries(tiny_config: dict, write_yaml, loggers: list, message: str) -> None:
    config = copy.deepcopy(tiny_config)
    config["loggers"] = loggers
    path = write_yaml("p.yaml", config)
    with pytest.raises(ConfigError, match=message):
        Pipeline.from_yaml(path).fit()


def test_missing_package_names_the_extra(tiny_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    config = copy.deepcopy(tiny_config)
    config["loggers"] = ["csv", "wandb"]
    with pytest.raises(
        ConfigError, match=r'loggers\.1: logger .wandb. needs the wandb package: pip install "vision-pipe\[wandb\]"'
    ):
        Pipeline.from_dict(config).fit()
