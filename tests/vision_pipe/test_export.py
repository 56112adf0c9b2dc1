"""ONNX export (``vision-pipe export``, ``Pipeline.export``): parity of ONNX Runtime with PyTorch for the shipped
shapes pipelines trained a few steps, batch 1 and (``--dynamic-batch``) 4, and what a bad export says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("dynamic", [False, True])
def test_onnx_runtime_matches_pytorch(
    trained: tuple[Pipeline, Path], tmp_path: Path, dynamic: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe, ckpt = trained
    out = tmp_path / "export"
    args = ["export", str(ckpt), "--out", str(out)] + (["--dynamic-batch"] if dynamic else [])
    assert main(args) == 0, capsys.readouterr().err
    info = json.loads((out / "model.json").read_text())
    task = pipe.config.task
    assert info["task"] == task and info["class_names"] == pipe.class_names
    assert info["input"]["size"] == [32, 32] and info["input"]["layout"] == "NHWC"
    assert info["config"]["model"] == pipe.resolved["model"]
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == info["outputs"]
    for n in (1, 4) if dynamic else (1,):
        images = _images(n, seed=n)
        got = session.run(None, {"images": images})
        want = _torch_outputs(pipe, images)
        if task == "classification":
            assert got[0].shape == (n, len(pipe.class_names))
            np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        elif task == "detection":
            assert got[0].shape == (n, 100, 4) and int(got[3].sum()) > 0
            module = pipe.module.eval()
            with torch.no_grad():
                outputs = module(torch.from_numpy(images).permute(0, 3, 1, 2))
                _same_detections(got, module.head.evaluation_outputs(outputs, {"image": torch.zeros(n, 3, 32, 32)}))
        else:
            assert got[0].shape == (n, 32, 32) and got[0].dtype == np.int64
            assert (got[0] == want[0]).mean() >= 0.999
    if not dynamic:  # the fixed graph takes one image
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            session.run(None, {"images": _images(2)})


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


def test_unknown_format_and_an_unexportable_head(trained: tuple[Pipeline, Path], tmp_path: Path) -> None:
    pipe, _ = trained
    with pytest.raises(VisionPipeError, match="format 'tflite' is not supported"):
        pipe.export(tmp_path / "x", format="tflite")
    head = type(pipe.module.head)
    original = head.export_outputs

    def custom_op(
        self: Any, outputs: Any, input_size: Any
    ) -> Any:  # a plugin's own op, which ONNX has no translation of
        return {name: _twice(t) for name, t in original(self, outputs, input_size).items()}

    head.export_outputs = custom_op  # type: ignore[method-assign]
    try:
        with pytest.raises(
            VisionPipeError, match=r"cannot export pipeline .*head '(fcn|classification|ssd)'.*vp_test.twice"
        ):
            pipe.export(tmp_path / "y")
    finally:
        head.export_outputs = original  # type: ignore[method-assign]


# -- the torch-free predictor -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(trained: tuple[Pipeline, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trained`` exported with a dynamic batch; the model's path."""
    return trained[0].export(tmp_path_factory.mktemp("export"), dynamic_batch=True)


def _image_files(folder: Path, n: int = 3) -> list[Path]:
    """``n`` shapes pictures at 48×48 (not the input size: the predictor resizes them)."""
    from vision_pipe.io import write_png
    from vision_pipe_plugins.loading.synthetic_shapes import synthetic_shapes

    folder.mkdir()
    source = synthetic_shapes(num_images=n, size=48, seed=5).load("classification").splits["all"]
    return [write_png(folder / f"img{i}.png", source[i]["image"][:, :, ::-1]) for i in range(n)]


def test_onnx_predictor_matches_checkpoint_prediction(
    trained: tuple[Pipeline, Path], exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vision_pipe.onnx_predict import OnnxPredictor

    pipe, _ = trained
    files = _image_files(tmp_path / "in")
    want = pipe.predict(files)
    got = OnnxPredictor(exported).predict(files)
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


def test_onnx_prediction_imports_no_torch(exported: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    files = _image_files(tmp_path / "in", 2)
    script = (
        "import sys\n"
        "from vision_pipe.cli import main\n"
        f"rc = main(['predict', {str(exported)!r}, {str(files[0])!r}, {str(files[1])!r}, '--out', {str(tmp_path / 'o')!r}])\n"
        "loaded = [m for m in ('torch', 'pytorch_lightning', 'torchmetrics', 'albumentations') if m in sys.modules]\n"
        "print('loaded:', loaded)\n"
        "sys.exit(rc or bool(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout
    assert len(json.loads((tmp_path / "o" / "predictions.json").read_text())) == 2


def test_onnx_model_without_its_model_json_or_from_a_newer_version(exported: Path, tmp_path: Path) -> None:
    import shutil

    from vision_pipe.onnx_predict import OnnxPredictor

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(exported, alone / "model.onnx")
    with pytest.raises(VisionPipeError, match="model.json is missing"):
        OnnxPredictor(alone / "model.onnx")
    info = json.loads(exported.with_name("model.json").read_text())
    info["vision_pipe_version"] = "99.0.0"
    (alone / "model.json").write_text(json.dumps(info))
    with pytest.raises(VisionPipeError, match="written by vision-pipe 99.0.0.*upgrade vision-pipe"):
        OnnxPredictor(alone / "model.onnx")
    (alone / "model.json").write_text("{not json")
    with pytest.raises(VisionPipeError, match="not a vision-pipe model.json"):
        OnnxPredictor(alone / "model.onnx")


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
