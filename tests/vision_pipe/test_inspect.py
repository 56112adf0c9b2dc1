"""vision-pipe inspect: filter grids and their per-filter scaling, feature maps, Grad-CAM on a model whose answer is
known, inspect.json, the fit's plots/filters.png and the CLI (what it prints, its input errors)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from vision_pipe import Backbone, FeatureInfo, Features, Pipeline, hookimpl, stage
from vision_pipe.cli import main
from vision_pipe.errors import ConfigError, StageError
from vision_pipe.inspect import (
    FILTER_TILE,
    GAP,
    MAP_TILE,
    feature_map_grid,
    filter_grid,
    first_conv,
    grad_cam,
    inspect_model,
    saliency_at,
    save_filter_grid,
)
from vision_pipe.plugins import PluginManager
from vision_pipe.tasks import get_task

# ----------------------------------------------------------------------------
# Filter grids
# ----------------------------------------------------------------------------


def test_filter_grid_size_and_per_filter_scaling(tmp_path: Path) -> None:
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[0, 1], conv.weight[0, 2] = -1.0, 0.0, 3.0  # R min, G 1/4, B max
        conv.weight[1] = 7.0  # constant: mid-grey
        conv.weight[2, 0, 0, 0] = 5.0  # one red top-left pixel, the rest black
        conv.weight[3] = 100.0 * torch.arange(27.0).reshape(3, 3, 3)  # scale does not matter: each on its own
    grid = filter_grid(conv)
    f = -(-FILTER_TILE // 3)  # 3x3 kernels enlarged 8 times: 24 px tiles
    tile = 3 * f
    # 8 filters → 3 columns, 3 rows
    assert grid.shape == (3 * tile + 4 * GAP, 3 * tile + 4 * GAP, 3) and grid.dtype == np.uint8

    def cell(i: int) -> np.ndarray:
        r, c = divmod(i, 3)
        y, x = GAP + r * (tile + GAP), GAP + c * (tile + GAP)
        return grid[y : y + tile, x : x + tile]

    assert np.all(cell(0) == [0, 64, 255])  # (0 - -1) / 4 = 0.25 → 64
    assert np.all(cell(1) == 128)
    top_left = cell(2)[:f, :f]
    assert np.all(top_left == [255, 0, 0]) and np.all(cell(2)[f:] == 0)
    expected = np.round(np.arange(27.0).reshape(3, 3, 3).transpose(1, 2, 0) / 26 * 255)
    assert np.array_equal(cell(3)[::f, ::f], expected)
    assert np.all(cell(8) == 255) and np.all(grid[:GAP] == 255)  # the empty 9th cell and the gaps are white
    # written as RGB (the PNG holds BGR)
    record = save_filter_grid(nn.Sequential(nn.Conv2d(16, 4, 1), conv), tmp_path / "f.png")
    assert record == {"file": "f.png", "shows": "filters", "layer": "1", "filters": 8, "kernel": [3, 3]}
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(tmp_path / "f.png")), cv2.COLOR_BGR2RGB), grid)


def test_first_conv_is_the_first_on_the_image_channels() -> None:
    backbone = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 5)), nn.Conv2d(3, 2, 1))
    name, conv = first_conv(backbone)
    assert name == "1.1" and conv.kernel_size == (5, 5)
    with pytest.raises(StageError, match="no nn.Conv2d takes the image's 3 channels"):
        first_conv(nn.Sequential(nn.Linear(3, 3)))


def test_feature_map_grid_scales_each_channel() -> None:
    fmap = torch.zeros(20, 4, 4)
    fmap[0, 1, 2] = 9.0  # channel 0: one hot pixel
    fmap[1] = torch.arange(16.0).reshape(4, 4) - 100  # channel 1: a ramp at any offset
    grid = feature_map_grid(fmap, channels=5)  # 5 of 20 channels: 3 columns, 2 rows of 48 px tiles (x12)
    f = MAP_TILE // 4
    assert grid.shape == (2 * 48 + 3 * GAP, 3 * 48 + 3 * GAP + GAP)
    first = grid[GAP : GAP + 48, GAP : GAP + 48]
    assert first[f * 1, f * 2] == 255 and first.sum() == 255 * f * f
    second = grid[GAP : GAP + 48, 2 * GAP + 48 : 2 * GAP + 96][::f, ::f]
    assert np.array_equal(second, np.round(np.arange(16.0).reshape(4, 4) / 15 * 255))


def test_segmentation_class_scores_sum_each_class_over_its_pixels() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, :] = 4.0  # class 1 predicted on the top row
    logits[0, 2, 1, 0] = 2.0  # class 2 on one pixel; class 0 (all zero logits) wins the last pixel
    scores = get_task("segmentation").class_scores(logits)
    assert torch.allclose(scores, torch.tensor([[0.0, 8.0 / 4, 2.0 / 4]]))
    assert get_task("detection").class_scores(object()) is None


# ----------------------------------------------------------------------------
# Grad-CAM on a model whose answer is known
# ----------------------------------------------------------------------------


class Probe(Backbone):
    """One 1x1 convolution: map ``out`` (B, 2, H, W) at stride 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.feature_info = [FeatureInfo(name="out", channels=2, stride=1)]

    def forward(self, images: Tensor) -> Features:
        return Features(maps={"out": self.conv(images)})


@stage("backbone", "probe")
def probe() -> Probe:
    """A one-convolution backbone for the Grad-CAM check."""
    return Probe()


class ProbePlugin:
    @hookimpl
    def vision_pipe_stages(self) -> list[Any]:
        return [probe]


@pytest.fixture
def probe_pipe(tiny_config: dict[str, Any]) -> Pipeline:
    """Channel 0 = red / 255, channel 1 = green / 255; the logit of 'square' is 10 x the mean of channel 0 alone."""
    config = copy.deepcopy(tiny_config)
    config["model"]["backbone"] = {"name": "probe"}
    config["data"].pop("normalization")
    manager = PluginManager()
    manager.register(ProbePlugin(), name="probe")
    pipe = Pipeline.from_dict(config, manager=manager)
    with torch.no_grad():
        conv = pipe.module.backbone.conv
        conv.weight.zero_(), conv.bias.zero_()
        conv.weight[0, 0, 0, 0] = conv.weight[1, 1, 0, 0] = 1 / 255
        linear = pipe.module.head.classifier[-1]
        linear.weight.zero_(), linear.bias.zero_()
        linear.weight[pipe.class_names.index("square"), 0] = 10.0
    return pipe


def test_grad_cam_peaks_where_the_deciding_channel_is_active(probe_pipe: Pipeline) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[10:14, 2:6, 0] = 255  # red block: channel 0 active there
    image[:4, 10:, 1] = 255  # green block: channel 1, which no class uses
    batch = torch.from_numpy(image.transpose(2, 0, 1))[None]
    cam = grad_cam(probe_pipe.module, batch)
    square = probe_pipe.class_names.index("square")
    assert cam.classes == [square] and cam.predicted == [square]
    assert cam.scores[0] == pytest.approx(10 * 16 / 256)
    expected = np.zeros((16, 16), np.float32)
    expected[10:14, 2:6] = 1.0
    assert np.allclose(cam.maps[0].numpy(), expected)
    # a class nothing drives: zero gradients, an all-zero map
    circle = probe_pipe.class_names.index("circle")
    assert float(grad_cam(probe_pipe.module, batch, circle).maps.abs().max()) == 0.0
    # at the image's size, in [0, 1], peaking on the block
    big = saliency_at(cam.maps[0], (64, 48))
    assert big.shape == (64, 48) and big.min() >= 0.0 and big.max() <= 1.0
    y, x = np.unravel_index(big.argmax(), big.shape)
    assert 40 <= y < 56 and 6 <= x < 18


def test_inspect_model_on_arrays(probe_pipe: Pipeline, tmp_path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[10:14, 2:6, 0] = 255
    report = inspect_model(probe_pipe, [image], out=tmp_path / "out", class_name="square", device="cpu")
    names = [r["file"] for r in report.files]
    assert names == ["filters.png", "array_0_out.png", "array_0_gradcam.png"]
    saliency = report.files[-1]
    assert saliency["class"] == "square" and saliency["layer"] == "out" and saliency["image"] == "array:0"
    overlay = cv2.imread(str(tmp_path / "out" / "array_0_gradcam.png"))
    assert overlay.shape == (128, 128, 3)  # enlarged to at least 128 px


# ----------------------------------------------------------------------------
# A fitted tiny pipeline: fit's filters.png, inspect's files and JSON, the CLI
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def _images(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8))
    return folder


def test_fit_writes_the_filter_grid(checkpoint: Path) -> None:
    png = checkpoint.parent.parent / "plots" / "filters.png"
    pipe = Pipeline.load(checkpoint)
    _, conv = first_conv(pipe.module.backbone)
    assert conv.out_channels == 4  # the tiny VGG's width
    written = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, filter_grid(conv))


def test_cli_writes_and_lists_every_png(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _images(tmp_path / "images")
    out = tmp_path / "inspect"
    assert main(["inspect", str(checkpoint), str(folder), "--out", str(out), "--channels", "3"]) == 0
    text = capsys.readouterr().out
    index = json.loads((out / "inspect.json").read_text())
    listed = [r["file"] for r in index["files"]]
    assert sorted(listed) == sorted(p.name for p in out.glob("*.png"))
    # the filters, one PNG per image per backbone stage (the tiny VGG has two), one Grad-CAM per image
    expected = ["filters.png"] + [f"img{i}_{x}.png" for i in range(2) for x in ("stage1", "stage2", "gradcam")]
    assert listed == expected
    stage1 = next(r for r in index["files"] if r["file"] == "img0_stage1.png")
    assert stage1["channels"] == [0, 1, 2] and stage1["of"] == 4 and stage1["image"] == str(folder / "img0.png")
    saliency = next(r for r in index["files"] if r["shows"] == "saliency")
    assert saliency["class"] == saliency["predicted"] and saliency["layer"] == "stage2"
    for name in listed:
        assert name in text
    assert f"wrote inspect.json and 7 PNG(s) to {out}/" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["EMPTY"], "folder contains no images"),
        (["--class", "hexagon"], "--class 'hexagon': not a class of this pipeline; its classes are circle, "),
        (["YAML"], "inspect takes a checkpoint, not a pipeline YAML"),
    ],
)
def test_cli_input_errors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.yaml").write_text("name: x\n")
    source = str(tmp_path / "p.yaml") if args == ["YAML"] else str(checkpoint)
    rest = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args if a != "YAML"]
    out = tmp_path / "out"
    assert main(["inspect", source, *rest, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (out / "inspect.json").exists()


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_inspect_other_tasks(task: str, tiny_config: dict[str, Any], tmp_path: Path) -> None:
    """Segmentation explains a class by its predicted pixels; detection gets filters and maps and a note."""
    tiny_config["task"] = task
    tiny_config["data"]["loader"].update(num_images=12)
    tiny_config["model"]["head"] = (
        {"name": "fcn", "upsample": "bilinear", "skips": "none"}
        if task == "segmentation"
        else {"name": "ssd", "extra_channels": 8}
    )
    pipe = Pipeline.from_dict(tiny_config)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    report = inspect_model(pipe, [image, image], out=tmp_path / "out", device="cpu")
    shows = [r["shows"] for r in report.files]
    maps = ["feature_map", "feature_map"]  # stage1, stage2
    if task == "segmentation":
        assert shows == ["filters", *maps, "saliency", *maps, "saliency"] and report.notes == []
        assert report.files[3]["predicted"] in pipe.class_names
        assert [r["file"] for r in report.files][4:] == [
            "array_1_stage1.png",
            "array_1_stage2.png",
            "array_1_gradcam.png",
        ]
    else:
        assert shows == ["filters", *maps, *maps]
        assert report.notes == ["no saliency: Grad-CAM is for classification and segmentation, not detection"]
        with pytest.raises(ConfigError, match="saliency is for classification and segmentation, not detection"):
            inspect_model(pipe, [image], out=tmp_path / "out2", class_name="circle")
