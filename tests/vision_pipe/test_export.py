"""Export (``vision-pipe export``, ``Pipeline.export``) to ONNX and TorchScript: parity of ONNX Runtime and of the
loaded TorchScript module with PyTorch for the shipped shapes pipelines trained a few steps, batch 1 and
(``--dynamic-batch``) 4, at another ``--input-size``, the exported predictors, and what a bad export says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from vision_pipe.cli import main
from vision_pipe.errors import StageError, VisionPipeError
from vision_pipe.pipeline import Pipeline

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = [
    "data.loader.num_images=40",
    "data.loader.size=32",
    "data.input_size=[32,32]",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~early_stopping",
    "~scheduler",
]


@pytest.fixture(scope="module", params=["classification", "segmentation", "detection"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Path]:
    """A shipped shapes pipeline trained one epoch at 32×32, and its best checkpoint."""
    runs = tmp_path_factory.mktemp("runs")
    pipe = Pipeline.from_yaml(ROOT / f"pipelines/shapes_{request.param}.yaml", [*TINY_RUN, f"output_dir={runs}"])
    pipe.fit()
    assert pipe.best_checkpoint
    return pipe, Path(pipe.best_checkpoint)


@torch.library.custom_op("vp_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` shapes images at 32×32 (real pictures, so segmentation masks are not all background)."""
    from vision_pipe_plugins.loading.synthetic_shapes import synthetic_shapes

    source = synthetic_shapes(num_images=n, size=32, seed=seed).load("classification").splits["all"]
    return np.stack([source[i]["image"] for i in range(n)])


def _same_detections(got: list[np.ndarray], want: list[dict[str, torch.Tensor]]) -> None:
    """ONNX Runtime's padded detections (boxes, scores, labels, count) are the head's, one to one:
    same label, IoU ≥ 0.99, scores within 1e-3."""
    from torchvision.ops import box_iou

    boxes, scores, labels, counts = got
    for i, ref in enumerate(want):
        n = int(counts[i])
        assert n == len(ref["scores"]) and (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()
        iou = box_iou(ref["boxes"], torch.from_numpy(boxes[i, :n])).numpy()  # [ref, got]
        close = np.abs(ref["scores"].numpy()[:, None] - scores[i, :n][None, :]) <= 1e-3
        same = (ref["labels"].numpy()[:, None] == labels[i, :n][None, :]) & close & (iou >= 0.99)
        used: set[int] = set()
        for r in range(n):
            match = next((g for g in np.flatnonzero(same[r]) if g not in used), None)
            assert match is not None, f"image {i}: detection {r} of PyTorch has no match in ONNX Runtime's"
            used.add(int(match))


def _torch_outputs(pipe: Pipeline, images: np.ndarray) -> list[np.ndarray]:
    module = pipe.module.eval()
    with torch.no_grad():
        outputs = module.head.export_outputs(module(torch.from_numpy(images).permute(0, 3, 1, 2)), images.shape[1:3])
    return [t.numpy() for t in outputs.values()]


def _runtime(path: Path) -> tuple[Any, list[str] | None]:
    """The exported model at ``path`` loaded: (images → outputs as numpy, the output names it declares)."""
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path))
        return lambda images: session.run(None, {"images": images}), [o.name for o in session.get_outputs()]
    from vision_pipe.torchscript_predict import load_torchscript

    module = load_torchscript(path)

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(images))]

    return run, None  # a traced module's outputs are a tuple: model.json names them


def _check_parity(pipe: Pipeline, run: Any, images: np.ndarray, names: list[str]) -> None:
    """The exported model's outputs on ``images`` are PyTorch's (the tolerances of the README)."""
    n, height, width = images.shape[:3]
    got = run(images)
    assert len(got) == len(names)
    want = _torch_outputs(pipe, images)
    task = pipe.config.task
    if task == "classification":
        assert got[0].shape == (n, len(pipe.class_names))
        np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    elif task == "detection":
        assert got[0].shape == (n, 100, 4) and int(got[3].sum()) > 0
        module = pipe.module.eval()
        with torch.no_grad():
            outputs = module(torch.from_numpy(images).permute(0, 3, 1, 2))
            batch = {"image": torch.zeros(n, 3, height, width)}
            _same_detections(got, module.head.evaluation_outputs(outputs, batch))
    else:
        assert got[0].shape == (n, height, width) and got[0].dtype == np.int64
        assert (got[0] == want[0]).mean() >= 0.999
        if "probabilities" in names:  # --probabilities: the softmax of the logits, (N, C, H, W)
            probs = got[names.index("probabilities")]
            with torch.no_grad():
                logits = pipe.module.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))
            np.testing.assert_allclose(probs, torch.softmax(logits, dim=1).numpy(), atol=1e-4)
            assert (probs.argmax(axis=1) == got[0]).mean() >= 0.999


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_exported_model_matches_pytorch(
    trained: tuple[Pipeline, Path], tmp_path: Path, format: str, dynamic: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe, ckpt = trained
    out = tmp_path / "export"
    task = pipe.config.task
    args = ["export", str(ckpt), "--out", str(out), "--format", format]
    args += ["--dynamic-batch"] if dynamic else []
    args += ["--probabilities"] if dynamic and task == "segmentation" else []
    assert main(args) == 0, capsys.readouterr().err
    info = json.loads((out / "model.json").read_text())
    path = out / {"onnx": "model.onnx", "torchscript": "model.pt"}[format]
    assert info["model_format"] == format and info["model_file"] == path.name and path.is_file()
    assert info["task"] == task and info["class_names"] == pipe.class_names
    assert info["input"]["size"] == [32, 32] and info["input"]["layout"] == "NHWC"
    assert info["input"]["batch"] == ("dynamic" if dynamic else 1)
    assert info["config"]["model"] == pipe.resolved["model"]
    assert ("probabilities" in info["outputs"]) == (task != "detection" and (task == "classification" or dynamic))
    run, declared = _runtime(path)
    assert declared in (None, info["outputs"])
    for n in (1, 4) if dynamic else (1,):
        _check_parity(pipe, run, _images(n, seed=n), info["outputs"])
    if not dynamic and format == "onnx":  # the fixed graph takes one image
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            run(_images(2))


def test_export_of_a_head_without_export_outputs_names_the_head(
    trained: tuple[Pipeline, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, _ = trained
    task = type(pipe.module.head).task

    def no_decoding(self: Any, outputs: Any, input_size: Any) -> Any:
        raise NotImplementedError(f"the {task} task has no default export-time decoding")

    monkeypatch.setattr(type(pipe.module.head), "export_outputs", no_decoding)
    with pytest.raises(StageError, match=f"head '{pipe.config.model.head['name']}'.*export_outputs"):
        pipe.export(tmp_path / "x")


def test_unknown_format_and_an_unexportable_stage(trained: tuple[Pipeline, Path], tmp_path: Path) -> None:
    pipe, _ = trained
    with pytest.raises(VisionPipeError, match="format 'tflite' is not supported"):
        pipe.export(tmp_path / "x", format="tflite")
    if pipe.config.task != "segmentation":
        with pytest.raises(VisionPipeError, match=f"--probabilities is for segmentation.*is {pipe.config.task}"):
            pipe.export(tmp_path / "x", probabilities=True)
    with pytest.raises(VisionPipeError, match=r"input size 48×64 \(trained at 32×32\).*mean_image.*--input-size"):
        pipe.export(tmp_path / "x", input_size=[48, 64])  # the mean image is 32×32
    head = type(pipe.module.head)
    original = head.export_outputs

    def custom_op(
        self: Any, outputs: Any, input_size: Any
    ) -> Any:  # a plugin's own op, which ONNX has no translation of
        return {name: _twice(t) for name, t in original(self, outputs, input_size).items()}

    head.export_outputs = custom_op  # type: ignore[method-assign]
    try:
        with pytest.raises(
            VisionPipeError,
            match=r"cannot export pipeline .*head '(fcn|classification|ssd)'.*vp_test.twice.*it is in the head stage",
        ):
            pipe.export(tmp_path / "y")
    finally:
        head.export_outputs = original  # type: ignore[method-assign]
    backbone = pipe.module.backbone
    forward = backbone.forward

    def backbone_custom_op(x: Any) -> Any:
        features = forward(x)
        features.maps = {name: _twice(t) for name, t in features.maps.items()}
        return features

    backbone.forward = backbone_custom_op  # type: ignore[method-assign]
    try:
        with pytest.raises(VisionPipeError, match=r"vp_test.twice.*it is in the backbone stage"):
            pipe.export(tmp_path / "z")
    finally:
        del backbone.forward


# -- another input size ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["segmentation", "detection"])
def channel_stats_trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """A shipped shapes pipeline trained one epoch at 32×32 with channel statistics (no mean image of one size)."""
    runs = tmp_path_factory.mktemp("runs")
    overrides = [*TINY_RUN, "data.normalization={name: channel_stats}", f"output_dir={runs}"]
    pipe = Pipeline.from_yaml(ROOT / f"pipelines/shapes_{request.param}.yaml", overrides)
    pipe.fit()
    return pipe


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_export_at_another_input_size(channel_stats_trained: Pipeline, tmp_path: Path, format: str) -> None:
    """``--input-size 48 64``: the model takes 48×64 images (the FCN's masks at that size, the SSD head's
    default boxes recomputed for it), gives PyTorch's outputs there, and model.json says so."""
    pipe = channel_stats_trained
    path = pipe.export(tmp_path / "e", format=format, dynamic_batch=True, input_size=[48, 64])
    info = json.loads(path.with_name("model.json").read_text())
    assert info["input"]["size"] == [48, 64] and info["input"]["trained_size"] == [32, 32]
    run, _ = _runtime(path)
    for n in (1, 4):
        images = np.stack([cv2.resize(image, (64, 48)) for image in _images(n, seed=n)])
        _check_parity(pipe, run, images, info["outputs"])
    if pipe.config.task == "segmentation":  # vgg records its poolings' input sizes: odd sizes too
        path = pipe.export(tmp_path / "odd", format=format, input_size=[33, 31])
        assert _runtime(path)[0](np.zeros((1, 33, 31, 3), np.uint8))[0].shape == (1, 33, 31)


def test_export_at_a_size_the_backbone_strides_do_not_divide(tmp_path: Path) -> None:
    """A backbone without pooling indices (resnet, first map at stride 4): the FCN's masks at 65×50 would be
    68×52, which export refuses, naming both sizes."""
    overrides = [*TINY_RUN, "data.normalization={name: channel_stats}", f"output_dir={tmp_path}"]
    overrides += ["model.backbone={name: resnet, depth: 10, width: 4, stages: 3, stem: imagenet}", "model.head.upsample=transposed"]
    pipe = Pipeline.from_yaml(ROOT / "pipelines/shapes_segmentation.yaml", overrides)
    assert pipe.export(tmp_path / "ok", format="torchscript", input_size=[64, 48]).is_file()
    with pytest.raises(VisionPipeError, match=r"65×50: head 'fcn' gives masks of 68×52.*strides divide"):
        pipe.export(tmp_path / "odd", format="torchscript", input_size=[65, 50])


# -- the torch-free predictor -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def exported(
    request: pytest.FixtureRequest, trained: tuple[Pipeline, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``trained`` exported with a dynamic batch, to ONNX and to TorchScript; the model's path."""
    return trained[0].export(tmp_path_factory.mktemp("export"), format=request.param, dynamic_batch=True)


def _image_files(folder: Path, n: int = 3) -> list[Path]:
    """``n`` shapes pictures at 48×48 (not the input size: the predictor resizes them)."""
    from vision_pipe.io import write_png
    from vision_pipe_plugins.loading.synthetic_shapes import synthetic_shapes

    folder.mkdir()
    source = synthetic_shapes(num_images=n, size=48, seed=5).load("classification").splits["all"]
    return [write_png(folder / f"img{i}.png", source[i]["image"][:, :, ::-1]) for i in range(n)]


def test_exported_predictor_matches_checkpoint_prediction(
    trained: tuple[Pipeline, Path], exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vision_pipe.exported_predict import open_predictor
    from vision_pipe.onnx_predict import OnnxPredictor
    from vision_pipe.torchscript_predict import TorchScriptPredictor

    pipe, _ = trained
    files = _image_files(tmp_path / "in")
    want = pipe.predict(files)
    predictor = open_predictor(exported)
    assert type(predictor) is {".onnx": OnnxPredictor, ".pt": TorchScriptPredictor}[exported.suffix]
    got = predictor.predict(files)
    assert [p.id for p in got] == [p.id for p in want]
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)
        if pipe.config.task == "classification":
            np.testing.assert_allclose(g.scores, w.scores, atol=1e-4)  # type: ignore[attr-defined]
            assert g.label == w.label  # type: ignore[attr-defined]
        elif pipe.config.task == "detection":
            assert len(g.scores) == len(w.scores) > 0  # type: ignore[attr-defined]
            np.testing.assert_allclose(np.sort(g.scores), np.sort(w.scores), atol=1e-3)  # type: ignore[attr-defined]
        else:
            assert g.mask.shape == w.mask.shape == (48, 48)  # type: ignore[attr-defined]
            assert (g.mask == w.mask).mean() >= 0.999  # type: ignore[attr-defined]
    out = tmp_path / "out"
    assert main(["predict", str(exported), str(tmp_path / "in"), "--out", str(out)]) == 0, capsys.readouterr().err
    records = json.loads((out / "predictions.json").read_text())
    assert [r["id"] for r in records] == [str(f) for f in files]
    assert all((out / f"{f.stem}_pred.png").is_file() for f in files)
    if pipe.config.task == "segmentation":
        assert all((out / f"{f.stem}_mask.png").is_file() for f in files)
    if pipe.config.task == "detection":
        assert len(json.loads((out / "detections_coco.json").read_text())) > 0


def test_exported_prediction_imports_no_lightning_and_for_onnx_no_torch(exported: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    files = _image_files(tmp_path / "in", 2)
    banned = ("pytorch_lightning", "lightning", "torchmetrics", "albumentations", "vision_pipe_plugins")
    banned += ("torch",) if exported.suffix == ".onnx" else ()
    script = (
        "import sys\n"
        "from vision_pipe.cli import main\n"
        f"rc = main(['predict', {str(exported)!r}, {str(files[0])!r}, {str(files[1])!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        f"loaded = [m for m in {banned!r} if m in sys.modules]\n"
        "print('loaded:', loaded)\n"
        "sys.exit(rc or bool(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout
    assert len(json.loads((tmp_path / "o" / "predictions.json").read_text())) == 2


def test_exported_model_without_its_model_json_from_a_newer_version_or_another_export(
    exported: Path, tmp_path: Path
) -> None:
    import shutil

    from vision_pipe.exported_predict import open_predictor

    alone = tmp_path / "alone"
    alone.mkdir()
    model = alone / exported.name
    shutil.copy(exported, model)
    with pytest.raises(VisionPipeError, match="model.json is missing"):
        open_predictor(model)
    info = json.loads(exported.with_name("model.json").read_text())
    (alone / "model.json").write_text(json.dumps({**info, "vision_pipe_version": "99.0.0"}))
    with pytest.raises(VisionPipeError, match="written by vision-pipe 99.0.0.*upgrade vision-pipe"):
        open_predictor(model)
    other = {".onnx": "torchscript", ".pt": "onnx"}[exported.suffix]  # a model.json left by the other format
    (alone / "model.json").write_text(json.dumps({**info, "model_format": other}))
    with pytest.raises(VisionPipeError, match=f"describes a {other} model.*one export"):
        open_predictor(model)
    (alone / "model.json").write_text("{not json")
    with pytest.raises(VisionPipeError, match="not a vision-pipe model.json"):
        open_predictor(model)
    (alone / "model.json").write_text(json.dumps(info))
    model.write_bytes(b"not a model")
    with pytest.raises(VisionPipeError, match=f"{model.name}: .*cannot load the"):
        open_predictor(model)


# -- the plugin authors' kit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["classification", "ssd"])
def test_the_kit_checks_that_a_builtin_head_exports(name: str) -> None:
    from vision_pipe.plugins import PluginManager
    from vision_pipe.stages import Head
    from vision_pipe.testing import check_export

    head = check_export(PluginManager().registry.get("head", name))
    assert isinstance(head, Head)


def test_the_kit_names_the_head_and_the_op_that_cannot_be_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    from vision_pipe.errors import ContractError
    from vision_pipe.plugins import PluginManager
    from vision_pipe.testing import check_export
    from vision_pipe_plugins.head.classification import ClassificationHead

    original = ClassificationHead.export_outputs
    monkeypatch.setattr(
        ClassificationHead,
        "export_outputs",
        lambda self, o, s: {k: _twice(v) for k, v in original(self, o, s).items()},
    )
    with pytest.raises(ContractError, match=r"classification.*the op vp_test.twice has no ONNX translation"):
        check_export(PluginManager().registry.get("head", "classification"))


def test_the_kit_names_a_head_whose_trace_fixes_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head turning a size into a Python number traces to a module of one batch size: export's check at
    another batch size (and the kit's) catches it, with the tracer's warning."""
    from vision_pipe.errors import ContractError
    from vision_pipe.plugins import PluginManager
    from vision_pipe.testing import check_export
    from vision_pipe_plugins.head.classification import ClassificationHead

    original = ClassificationHead.export_outputs

    def fixed_batch(self: Any, outputs: Any, input_size: Any) -> Any:
        probabilities = original(self, outputs, input_size)["probabilities"]
        return {"probabilities": probabilities[: int(probabilities.shape[0])]}

    monkeypatch.setattr(ClassificationHead, "export_outputs", fixed_batch)
    with pytest.raises(
        ContractError,
        match=r"classification.*TorchScript: output 'probabilities' .*at batch 3 "
        r"is float32\[2, 3\], not float32\[3, 3\].*tracer warned",
    ):
        check_export(PluginManager().registry.get("head", "classification"), formats=["torchscript"])
