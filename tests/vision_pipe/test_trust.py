"""Nothing untrusted runs code (issue #11, section 1): checkpoints and weight files are read as weights only.

Each hostile file is built here: a real checkpoint of a tiny run with one more
entry whose pickle would run code (it would create a marker file). Every way
vision-pipe reads a checkpoint — ``predict``, ``Pipeline.load``, ``test`` /
``validate --ckpt``, ``fit --resume``, ``model.backbone.weights`` (even in
``check``) — refuses it without running it, naming the file and
``--trust-checkpoint``. With the flag, a legitimate file holding more than
weights loads; a normal checkpoint loads everywhere without it; ``.safetensors``
weights work; the plugin modules a checkpoint records are imported only when named.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from vision_pipe import Pipeline, StageError, VisionPipeError
from vision_pipe.checkpoints import CHECKPOINT_GLOBALS
from vision_pipe.cli import main


class RunsCode:
    """Unpickling this creates ``marker``: what a hostile checkpoint could do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny pipeline trained for one epoch: its YAML, checkpoint and a folder of images."""
    import cv2
    from conftest import TINY

    tmp = tmp_path_factory.mktemp("trust")
    config = copy.deepcopy(TINY)
    config["output_dir"] = str(tmp / "runs")
    config["trainer"]["max_epochs"] = 1
    config_path = tmp / "p.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    pipe = Pipeline.from_yaml(config_path)
    pipe.fit()
    images = tmp / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), pipe.splits["test"][0]["image"][:, :, ::-1])
    assert pipe.run_dir is not None
    return {"yaml": config_path, "ckpt": pipe.run_dir / "checkpoints" / "last.ckpt", "images": images, "pipe": pipe}


def _variant(run: dict[str, Any], path: Path, **extra: Any) -> Path:
    """The run's checkpoint with ``extra`` entries added, saved at ``path``."""
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


@pytest.fixture
def hostile(run: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint whose unpickling would create the marker, the marker)."""
    marker = tmp_path / "code-ran"
    return _variant(run, tmp_path / "hostile.ckpt", payload=RunsCode(marker)), marker


def _refused(message: str, path: Path, asks: str) -> None:
    assert str(path) in message and asks in message and "--trust-checkpoint" in message, message


def test_the_hostile_file_does_run_code_when_fully_unpickled(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    torch.load(path, weights_only=False)  # what vision-pipe used to do
    assert marker.exists()


def test_a_real_checkpoint_holds_only_allowed_types(run: dict[str, Any]) -> None:
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in CHECKPOINT_GLOBALS}
    for name in ("last.ckpt", "best.ckpt"):
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(run["ckpt"].parent / name)) <= allowed


def test_api_refuses_a_hostile_checkpoint_without_running_it(run, hostile) -> None:
    path, marker = hostile
    with pytest.raises(VisionPipeError) as info:
        Pipeline.load(path)
    _refused(str(info.value), path, "builtins.exec")
    with pytest.raises(VisionPipeError, match="--trust-checkpoint"):
        run["pipe"].load_checkpoint(path)
    with pytest.raises(VisionPipeError, match="--trust-checkpoint"):
        run["pipe"].predict([run["images"] / "a.png"], ckpt=path)
    # a bare pickle (not torch's format) and the legacy torch format: refused too
    pickled = path.with_suffix(".pkl")
    pickled.write_bytes(pickle.dumps({"state_dict": {}, "x": RunsCode(marker)}, protocol=4))
    with open(path.with_suffix(".legacy"), "wb") as f:
        torch.save({"state_dict": {}, "x": RunsCode(marker)}, f, _use_new_zipfile_serialization=False)
    for other in (pickled, path.with_suffix(".legacy")):
        with pytest.raises(VisionPipeError, match=r"refusing to load this checkpoint.*--trust-checkpoint"):
            Pipeline.load(other)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "predict-yaml", "test", "validate", "resume", "weights"])
def test_cli_refuses_a_hostile_checkpoint_without_running_it(command, run, hostile, tmp_path, capsys) -> None:
    path, marker = hostile
    yaml_path, images = str(run["yaml"]), str(run["images"])
    runs = Path(yaml.safe_load(run["yaml"].read_text())["output_dir"]) / "tiny"
    before = sorted(runs.iterdir())
    argv = {
        "predict": ["predict", str(path), images, "--out", str(tmp_path / "out")],
        "predict-yaml": ["predict", yaml_path, images, "--ckpt", str(path), "--out", str(tmp_path / "out")],
        "test": ["test", yaml_path, "--ckpt", str(path)],
        "validate": ["validate", yaml_path, "--ckpt", str(path)],
        "resume": ["fit", yaml_path, "--resume", str(path)],
        "weights": ["check", yaml_path, f"model.backbone.weights={path}"],
    }[command]
    assert main(argv) == 2
    _refused(capsys.readouterr().err, path, "builtins.exec")
    assert not marker.exists()
    assert sorted(runs.iterdir()) == before  # refused before a run directory is made


def test_trust_loads_a_legitimate_checkpoint_that_holds_more_than_weights(run, tmp_path, capsys) -> None:
    unusual = _variant(run, tmp_path / "unusual.ckpt", hyper_parameters=argparse.Namespace(lr=0.1))
    with pytest.raises(VisionPipeError) as info:
        Pipeline.load(unusual)
    _refused(str(info.value), unusual, "argparse.Namespace")

    assert Pipeline.load(unusual, trust=True).predict([run["images"] / "a.png"])[0].class_name
    out = tmp_path / "out"
    assert main(["predict", str(unusual), str(run["images"]), "--out", str(out), "--trust-checkpoint"]) == 0
    assert (out / "predictions.json").is_file()
    # Lightning reads --ckpt itself: with the flag it reads the file in full too
    assert main(["test", str(run["yaml"]), "--ckpt", str(unusual), "--trust-checkpoint"]) == 0
    assert "test/acc" in capsys.readouterr().out


def test_a_normal_checkpoint_loads_everywhere_without_the_flag(run, tmp_path) -> None:
    ckpt = run["ckpt"]
    assert Pipeline.load(ckpt).predict([run["images"] / "a.png"])[0].class_name
    pipe = Pipeline.from_yaml(run["yaml"], ["trainer.max_epochs=2"])
    pipe.fit(resume=ckpt)
    assert pipe.trainer is not None and pipe.trainer.current_epoch == 2  # resumed after epoch 0
    assert "test/acc" in pipe.test(ckpt)
    assert "val/loss" in pipe.validate(ckpt)


def test_backbone_weights_as_safetensors_or_torch_state_dict(run, tmp_path) -> None:
    from safetensors.torch import save_file

    trained = {k: v.contiguous() for k, v in run["pipe"].module.backbone.state_dict().items()}
    save_file(trained, str(tmp_path / "bb.safetensors"))
    torch.save(trained, tmp_path / "bb.pt")
    for name in ("bb.safetensors", "bb.pt"):
        pipe = Pipeline.from_yaml(run["yaml"], [f"model.backbone.weights={tmp_path / name}"])
        for key, value in pipe.module.backbone.state_dict().items():
            assert torch.equal(value, trained[key]), (name, key)

    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(StageError, match="broken.safetensors"):
        Pipeline.from_yaml(run["yaml"], [f"model.backbone.weights={tmp_path / 'broken.safetensors'}"])


def test_hostile_backbone_weights_are_refused_in_the_api_and_trusted_on_request(run, tmp_path) -> None:
    marker = tmp_path / "code-ran"
    state = {k: v for k, v in run["pipe"].module.backbone.state_dict().items()}
    torch.save({**state, "extra": RunsCode(marker)}, tmp_path / "w.pt")
    with pytest.raises(StageError) as info:
        Pipeline.from_yaml(run["yaml"], [f"model.backbone.weights={tmp_path / 'w.pt'}"])
    _refused(str(info.value), tmp_path / "w.pt", "builtins.exec")
    assert "model.backbone.weights" in str(info.value) and not marker.exists()

    torch.save({"state_dict": state, "note": argparse.Namespace(source="mine")}, tmp_path / "mine.pt")
    with pytest.raises(StageError, match="argparse.Namespace"):
        Pipeline.from_yaml(run["yaml"], [f"model.backbone.weights={tmp_path / 'mine.pt'}"])
    pipe = Pipeline.from_yaml(run["yaml"], [f"model.backbone.weights={tmp_path / 'mine.pt'}"], trust=True)
    assert all(torch.equal(v, state[k]) for k, v in pipe.module.backbone.state_dict().items())


PLUGIN = '''
from pathlib import Path
from vision_pipe import hookimpl, stage

Path({marker!r}).touch()


@stage("backbone", "marker_vgg")
def marker_vgg(depth: int = 8, width: int = 4, stages: int = 2):
    """The vgg backbone under another name."""
    from vision_pipe_plugins.backbone.vgg import vgg

    return vgg(depth=depth, width=width, stages=stages)


@hookimpl
def vision_pipe_stages():
    return [marker_vgg]
'''


def test_plugins_recorded_in_a_checkpoint_are_imported_only_when_named(run, tmp_path, monkeypatch, capsys) -> None:
    marker = tmp_path / "plugin-imported"
    (tmp_path / "h1_marker_plugin.py").write_text(PLUGIN.format(marker=str(marker)), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h1_marker_plugin", raising=False)
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    config = ckpt["vision_pipe"]["config"]
    config["plugins"] = ["h1_marker_plugin"]
    config["model"]["backbone"] = {"name": "marker_vgg", "depth": 8, "width": 4, "stages": 2}
    path = tmp_path / "plugin.ckpt"
    torch.save(ckpt, path)

    with pytest.raises(VisionPipeError) as info:
        Pipeline.load(path)
    message = str(info.value)
    assert str(path) in message and "h1_marker_plugin" in message and "marker_vgg" in message
    assert "--plugin" in message and "plugins=" in message and "--trust-checkpoint" in message
    assert main(["predict", str(path), str(run["images"]), "--out", str(tmp_path / "o")]) == 2
    assert "h1_marker_plugin" in capsys.readouterr().err
    assert not marker.exists()

    assert Pipeline.load(path, plugins=["h1_marker_plugin"]).predict([run["images"] / "a.png"])[0].class_name
    assert marker.exists()
    marker.unlink()
    monkeypatch.delitem(sys.modules, "h1_marker_plugin")
    out = tmp_path / "out"
    assert main(["predict", str(path), str(run["images"]), "--out", str(out), "--plugin", "h1_marker_plugin"]) == 0
    assert marker.exists()
    marker.unlink()
    monkeypatch.delitem(sys.modules, "h1_marker_plugin")
    assert Pipeline.load(path, trust=True).stages["backbone"] is not None
    assert marker.exists()


def test_a_checkpoint_does_not_read_the_weights_file_its_config_names(run, hostile, tmp_path) -> None:
    path, marker = hostile
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    ckpt["vision_pipe"]["config"]["model"]["backbone"]["weights"] = str(path)
    torch.save(ckpt, tmp_path / "names-weights.ckpt")
    pipe = Pipeline.load(tmp_path / "names-weights.ckpt")  # its own state_dict replaces them anyway
    assert pipe.predict([run["images"] / "a.png"])[0].class_name and not marker.exists()
