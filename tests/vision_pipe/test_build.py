"""Building a pipeline: the backbone's forward is checked against its feature_info before
anything runs (``check`` and ``fit`` both stop with a ContractError naming the stage, and no
run directory is made), without changing the backbone, its statistics or the random state."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from vision_pipe import ContractError, Pipeline
from vision_pipe.build import check_backbone_contract
from vision_pipe.cli import main

BAD_BACKBONES = textwrap.dedent(
    '''
    import torch
    from torch import nn

    from vision_pipe import Backbone, FeatureInfo, Features, hookimpl, stage


    class Declares(Backbone):
        """One map 'c1' computed at stride 2 with 8 channels; ``mode`` says what it declares or returns."""

        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(0.5)
            stride = 4 if mode == "wrong_stride" else 2
            channels = 16 if mode == "wrong_channels" else 8
            self.feature_info = [FeatureInfo("c1", channels, stride)]

        def forward(self, images):
            x = self.drop(self.bn(self.conv(images)))
            if self.mode == "tensor":
                return x
            if self.mode == "wrong_name":
                return Features(maps={"other": x})
            return Features(maps={"c1": x})


    @stage("backbone", "declares")
    def declares(mode: str = "ok") -> Backbone:
        return Declares(mode)


    @hookimpl
    def vision_pipe_stages():
        return [declares]
    '''
)

CASES = {
    "wrong_stride": r"map 'c1': 16×16 for a 32×32 input \(stride 2\), but feature_info declares stride 4 \(8×8",
    "wrong_channels": r"map 'c1': 8 channels, but feature_info declares 16",
    "tensor": r"forward\(\) returned Tensor; a backbone must return vision_pipe.Features",
    "wrong_name": r"forward\(\) returned maps \['other'\], but feature_info declares \['c1'\]",
}


@pytest.fixture
def bad_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "bad_backbones.py").write_text(BAD_BACKBONES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bad_backbones"


def _config(tiny_config, plugin: str, mode: str):
    tiny_config["plugins"] = [plugin]
    tiny_config["model"]["backbone"] = {"name": "declares", "mode": mode}
    tiny_config["trainer"]["max_epochs"] = 1
    return tiny_config


@pytest.mark.parametrize("mode", sorted(CASES))
def test_check_and_fit_stop_on_a_backbone_that_breaks_its_contract(
    mode, bad_plugin, tiny_config, write_yaml, tmp_path, capsys
):
    path = write_yaml("p.yaml", _config(tiny_config, bad_plugin, mode))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "backbone:" in text)
    for command in (["check", str(path)], ["fit", str(path), "--no-test"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"p.yaml:{line}: model.backbone (backbone stage 'declares')" in err
        assert __import__("re").search(CASES[mode], err), err
    with pytest.raises(ContractError, match=CASES[mode]):
        Pipeline.from_yaml(path).fit()
    assert not (tmp_path / "runs").exists(), "no run directory before the contract holds"


def test_a_backbone_that_keeps_its_contract_builds_and_trains(bad_plugin, tiny_config, write_yaml, tmp_path):
    pipe = Pipeline.from_yaml(write_yaml("p.yaml", _config(tiny_config, bad_plugin, "ok")))
    assert pipe.fit()["fit/epochs"] == 1.0
    assert (pipe.run_dir / "config.yaml").exists()


def test_the_contract_check_changes_nothing(bad_plugin):
    import bad_backbones

    backbone = bad_backbones.Declares("ok")
    backbone.train()
    backbone.drop.eval()  # a submodule in its own mode keeps it
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.get_rng_state()
    check_backbone_contract(backbone, "label")
    assert backbone.training and backbone.conv.training and backbone.bn.training and not backbone.drop.training
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in state.items()), "BN statistics untouched"
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in backbone.parameters())


def test_the_contract_check_names_a_failing_forward(bad_plugin):
    import bad_backbones

    backbone = bad_backbones.Declares("ok")
    backbone.conv = torch.nn.Conv2d(4, 8, 3)  # expects 4 input channels
    with pytest.raises(ContractError, match=r"^label: forward\(\) failed on a \(1, 3, 32, 32\) input: RuntimeError"):
        check_backbone_contract(backbone, "label")
