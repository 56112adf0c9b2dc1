"""Exporting a trained pipeline for deployment: ``model.onnx`` or ``model.pt`` (TorchScript) with pre- and
post-processing inside, and ``model.json``.

The exported model (:class:`ExportModel`) takes what an application has — a batch
of uint8 RGB images (N, H, W, 3) at the pipeline's ``data.input_size`` (or the
``input_size`` asked for) — and contains the normalization stage as trained (mean
image or channel statistics), the backbone, the head and the head's export-time
decoding (:meth:`vision_pipe.stages.Head.export_outputs`): classification gives
``probabilities`` (N, C) float32, segmentation ``class_ids`` (N, H, W) int64 (and,
when asked, ``probabilities`` (N, C, H, W) float32), detection heads what they
implement (the ``ssd`` head: ``boxes``, ``scores``, ``labels`` after per-class NMS
— ONNX's own ``NonMaxSuppression``, ``torchvision::nms`` in TorchScript — padded
to ``detections_per_img``, and ``count``).
Two formats (:data:`FORMATS`): ``onnx`` (:func:`export_onnx`, the dynamo exporter)
and ``torchscript`` (:func:`export_torchscript`: ``torch.jit.trace``, checked
against the eager model on the example batch and, with a dynamic batch, on a
batch of another size).
Beside it, ``model.json`` (:func:`model_info`) says what the model is: its file
and format, task, class names and colours (and the dataset's category ids), input size and layout, output names,
the normalization, the vision-pipe version and the resolved pipeline config. The
readers of both are :mod:`vision_pipe.exported_predict` and its runtimes
(:mod:`vision_pipe.onnx_predict`, torch-free; :mod:`vision_pipe.torchscript_predict`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.errors import StageError, VisionPipeError
from vision_pipe.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline
    from vision_pipe.stages import Head

#: What ``--format`` may be.
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
#: The model file each format writes.
MODEL_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
#: The ONNX opset used unless ``--opset`` says otherwise.
DEFAULT_OPSET = 18
#: The name of the graph's input.
INPUT_NAME = "images"
#: ``model.json``'s layout version (a reader refuses a newer one).
MODEL_JSON_FORMAT = 1

log = logging.getLogger("vision_pipe")


class ExportModel(nn.Module):
    """uint8 (N, H, W, 3) RGB images → the head's :meth:`~vision_pipe.stages.Head.export_outputs`.

    ``module`` takes (N, 3, H, W) uint8 images to the raw outputs of ``head`` (default:
    ``module.head``), e.g. :meth:`vision_pipe.module.PipelineModule.inference_model`.
    ``probabilities``: also return ``probabilities``, the softmax over the classes of
    raw outputs that are logits (N, C, H, W) (a segmentation head's).
    """

    def __init__(self, module: nn.Module, head: Head | None = None, *, probabilities: bool = False) -> None:
        super().__init__()
        self.module = module
        self.head: Head = head if head is not None else module.head  # type: ignore[assignment]
        self.probabilities = probabilities

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.outputs(images).values())

    def outputs(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`forward`'s outputs by name."""
        raw = self.module(images.permute(0, 3, 1, 2))
        outputs = self.head.export_outputs(raw, (images.shape[1], images.shape[2]))
        if self.probabilities:
            if not isinstance(raw, Tensor) or raw.ndim != 4:
                raise VisionPipeError(
                    f"probabilities: the head's raw outputs are not logits (N, C, H, W) "
                    f"({type(raw).__name__}); only a segmentation head's logits have per-pixel probabilities"
                )
            outputs = {**outputs, "probabilities": torch.softmax(raw.float(), dim=1)}
        return outputs

    def output_names(self, example: Tensor) -> list[str]:
        """The names of :meth:`forward`'s outputs, in order (from one run on ``example``)."""
        with torch.no_grad():
            return list(self.outputs(example))


def export_pipeline(
    pipe: Pipeline,
    out_dir: str | Path,
    *,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    input_size: Sequence[int] | None = None,
    probabilities: bool = False,
) -> Path:
    """Write ``out_dir/model.onnx`` (``format="onnx"``) or ``out_dir/model.pt`` (``"torchscript"``) and
    ``out_dir/model.json`` for ``pipe``; return the model's path.

    ``dynamic_batch``: the batch dimension is free (else the model takes batches of 1).
    ``input_size``: (height, width) of the images the model takes (default ``data.input_size``).
    ``probabilities``: segmentation only, also the per-pixel class probabilities.
    Raises :class:`StageError` naming the head when it has no export-time decoding,
    and :class:`VisionPipeError` with the exporter's reason when the model cannot be exported.
    """
    if format not in FORMATS:
        raise VisionPipeError(f"export format {format!r} is not supported; the formats are {', '.join(FORMATS)}")
    if probabilities and pipe.config.task != "segmentation":
        raise VisionPipeError(
            f"--probabilities is for segmentation pipelines (per-pixel class probabilities); pipeline "
            f"'{pipe.config.name}' is {pipe.config.task} (its outputs are listed under Export in the README)"
        )
    size = _input_size(pipe, input_size)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VisionPipeError(
            f"{out}: cannot make the export folder ({exc.strerror or exc}); choose another --out"
        ) from None
    module = pipe.module
    was_training = module.training
    module.eval()
    try:
        model = ExportModel(module.inference_model(), probabilities=probabilities).eval()
        example = torch.zeros((2 if dynamic_batch else 1, *size, 3), dtype=torch.uint8)
        names = _output_names(model, example, pipe, size)
        path = out / MODEL_FILES[format]
        stages = ", ".join(f"{kind} '{pipe.resolved['model'][kind]['name']}'" for kind in ("backbone", "head"))
        what = f"pipeline '{pipe.config.name}' (stages {stages})"
        if format == "onnx":
            export_onnx(model, example, path, names, opset=opset, dynamic_batch=dynamic_batch, what=what)
        else:
            export_torchscript(model, example, path, dynamic_batch=dynamic_batch, what=what)
    finally:
        module.train(was_training)
    info = model_info(pipe, names, format=format, opset=opset, dynamic_batch=dynamic_batch, input_size=size)
    atomic_write_text(out / "model.json", json.dumps(info, indent=2))
    return path


def _input_size(pipe: Pipeline, input_size: Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        height, width = pipe.config.data.input_size
        return int(height), int(width)
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
        raise VisionPipeError(f"export input size {list(size)}: expected two integers ≥ 1, height and width")
    return int(size[0]), int(size[1])


def _output_names(model: ExportModel, example: Tensor, pipe: Pipeline, size: tuple[int, int]) -> list[str]:
    head_name = pipe.config.model.head["name"]
    trained = tuple(pipe.config.data.input_size)
    try:
        with torch.no_grad():
            outputs = model.outputs(example.to(next(model.parameters()).device))
    except NotImplementedError as exc:
        raise StageError(
            f"head '{head_name}' ({pipe.config.task}) cannot be exported: {exc} (a head makes itself exportable "
            "by implementing export_outputs; see vision_pipe.stages.Head.export_outputs)"
        ) from None
    except (StageError, RuntimeError) as exc:
        if size == trained:
            raise
        raise VisionPipeError(
            f"pipeline '{pipe.config.name}' cannot be exported at input size {size[0]}×{size[1]} (trained at "
            f"{trained[0]}×{trained[1]}): {exc} — a stage fixed to the trained size (normalization 'mean_image' "
            "holds a mean image of that size) cannot take another; export without --input-size"
        ) from None
    ids = outputs.get("class_ids") if pipe.config.task == "segmentation" else None
    if ids is not None and tuple(ids.shape[-2:]) != size:
        raise VisionPipeError(
            f"pipeline '{pipe.config.name}' at input size {size[0]}×{size[1]}: head '{head_name}' gives masks of "
            f"{ids.shape[-2]}×{ids.shape[-1]}; choose an input size the backbone's strides divide"
        )
    return list(outputs)


def export_onnx(
    model: ExportModel,
    example: Tensor,
    path: Path,
    names: Sequence[str],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    what: str = "the model",
) -> None:
    """Export ``model`` on ``example`` to ``path`` (one file); :class:`VisionPipeError` naming ``what`` and the
    exporter's reason (the op without an ONNX translation, when that is it)."""
    model = model.cpu()
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(names),
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
            assert program is not None
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter's many error types: one message naming the stages
        culprit = _failing_stage(model, example, opset)
        where = f"; it is in the {culprit}" if culprit else ""
        raise VisionPipeError(f"cannot export {what} to ONNX (opset {opset}): {_reason(exc)}{where}") from exc


class _Prefix(nn.Module):
    """The first stages of an export (uint8 NHWC images → normalization, or → backbone maps), to find
    which stage the exporter cannot translate."""

    def __init__(self, normalizer: nn.Module | None, backbone: nn.Module | None) -> None:
        super().__init__()
        self.normalizer, self.backbone = normalizer, backbone

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = images.permute(0, 3, 1, 2).float()
        if self.normalizer is not None:
            x = self.normalizer(x)
        if self.backbone is None:
            return (x,)
        return tuple(self.backbone(x).maps.values())


def _failing_stage(model: ExportModel, example: Tensor, opset: int) -> str | None:
    """After a failed ONNX export: which stage holds what the exporter could not translate — the first of
    normalization and backbone whose prefix of the model fails to export alone, else the head (with its
    ``export_outputs``); ``None`` when the model is not one of :class:`~vision_pipe.module.InferenceModel`."""
    inference = model.module
    normalizer, backbone = getattr(inference, "normalizer", None), getattr(inference, "backbone", None)
    if backbone is None:
        return None
    stages: list[tuple[str, nn.Module | None, nn.Module | None]] = [("backbone", normalizer, backbone)]
    if normalizer is not None:
        stages.insert(0, ("normalization", normalizer, None))
    for kind, norm, back in stages:
        try:
            with warnings.catch_warnings(), _quiet_exporter():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Prefix(norm, back).eval(), (example,), dynamo=True, opset_version=opset, verbose=False
                )
        except Exception:
            return f"{kind} stage"
    return "head stage (its forward or export_outputs)"


def _reason(exc: BaseException) -> str:
    """The exporter's reason in one line: the op without an ONNX translation when that is it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if missing:
        return (
            f"the op {missing.group(1)} has no ONNX translation (a stage's custom op: give the stage a traceable "
            "implementation in plain torch operations, or register an ONNX translation for it)"
        )
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class _quiet_exporter:
    """Silence the exporter's progress lines and log records (it prints and logs while it works)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        logging.disable(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        logging.disable(logging.NOTSET)
        self._stack.close()


def export_torchscript(
    model: ExportModel, example: Tensor, path: Path, *, dynamic_batch: bool = False, what: str = "the model"
) -> None:
    """Trace ``model`` on ``example`` with ``torch.jit.trace`` and write it to ``path`` (atomically).

    The traced module is run against ``model`` on random images of ``example``'s batch size and,
    with ``dynamic_batch``, of one more (a trace may have fixed the batch size); a mismatch
    (:func:`compare_outputs`) or a failed trace is a :class:`VisionPipeError` naming ``what``,
    with the tracer's first warning when it gave one.
    """
    model, example = model.cpu(), example.cpu()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(model, (example,), check_trace=False)
        except Exception as exc:  # the tracer's many error types: one message naming the stages
            raise VisionPipeError(f"cannot export {what} to TorchScript: {_reason(exc)}") from exc
        hints = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        names = model.output_names(example)
        generator = torch.Generator().manual_seed(0)
        batch, height, width = example.shape[:3]
        for n in (batch, batch + 1) if dynamic_batch else (batch,):
            images = torch.randint(0, 256, (n, height, width, 3), generator=generator, dtype=torch.uint8)
            want, got = model(images), traced(images)
            for name, g, w in zip(names, got, want, strict=True):
                problem = compare_outputs(g.numpy(), w.numpy())
                if problem:
                    hint = f" (the tracer warned: {hints[0]})" if hints else ""
                    raise VisionPipeError(
                        f"cannot export {what} to TorchScript: output {name!r} of the traced model at batch {n} "
                        f"{problem}{hint}; a stage whose forward depends on Python values of tensors "
                        "cannot be traced"
                    )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice (README: Export)
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def compare_outputs(got: np.ndarray, want: np.ndarray, reference: str = "the model's") -> str | None:
    """None when ``got`` is ``want`` as an exported model must give it — same shape and dtype, floats within
    1e-4, integers equal on ≥ 99.9 % of the values — else what differs, naming ``want`` ``reference``
    (e.g. ``"is float32[1, 3], not float32[2, 3] as the model's"``)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"is {got.dtype}{list(got.shape)}, not {want.dtype}{list(want.shape)} as {reference}"
    if want.dtype.kind == "f":
        if not np.allclose(got, want, atol=1e-4, rtol=0):
            return f"differs from {reference} by up to {float(np.abs(got - want).max()):.2g} (more than 1e-4)"
    elif want.size and (got == want).mean() < 0.999:
        return f"equals {reference} on {(got == want).mean():.1%} of its values only"
    return None


def model_info(
    pipe: Pipeline,
    outputs: Sequence[str],
    *,
    format: str = "onnx",
    opset: int | None = DEFAULT_OPSET,
    dynamic_batch: bool,
    input_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """What ``model.json`` holds (see the module docstring); ``input_size`` defaults to ``data.input_size``."""
    from vision_pipe import __version__

    height, width = input_size if input_size is not None else pipe.config.data.input_size
    return {
        "format": MODEL_JSON_FORMAT,
        "vision_pipe_version": __version__,
        "model_file": MODEL_FILES[format],
        "model_format": format,
        "torch_version": torch.__version__ if format == "torchscript" else None,
        "task": pipe.config.task,
        "class_names": list(pipe.class_names),
        "class_colors": [list(c) for c in pipe.class_colors] if pipe.class_colors else None,
        "category_ids": list(pipe.coco_ids.category_ids) if pipe.coco_ids.category_ids is not None else None,
        "input": {
            "name": INPUT_NAME,
            "size": [int(height), int(width)],
            "trained_size": list(pipe.config.data.input_size),
            "dtype": "uint8",
            "layout": "NHWC",
            "color": "RGB",
            "batch": "dynamic" if dynamic_batch else 1,
        },
        "outputs": list(outputs),
        "normalization": pipe.resolved["data"].get("normalization"),
        "opset": opset if format == "onnx" else None,
        "config": pipe.resolved,
    }


__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MODEL_FILES",
    "ExportModel",
    "compare_outputs",
    "export_onnx",
    "export_pipeline",
    "export_torchscript",
    "model_info",
]
