"""Exporting a trained pipeline for deployment: ``model.onnx`` with pre- and post-processing inside, and ``model.json``.

The exported graph (:class:`ExportModel`) takes what an application has — a batch
of uint8 RGB images (N, H, W, 3) at the pipeline's ``data.input_size`` — and
contains the normalization stage as trained (mean image or channel statistics),
the backbone, the head and the head's export-time decoding
(:meth:`vision_pipe.stages.Head.export_outputs`): classification gives
``probabilities`` (N, C) float32, segmentation ``class_ids`` (N, H, W) int64,
detection heads what they implement (the ``ssd`` head: ``boxes``, ``scores``,
``labels`` after per-class NMS — ONNX's own ``NonMaxSuppression`` — padded to
``detections_per_img``, and ``count``).
Beside it, ``model.json`` (:func:`model_info`) says what the graph is: task,
class names and colours, input size and layout, output names, the normalization,
the vision-pipe version and the resolved pipeline config. The torch-free reader of
both is :mod:`vision_pipe.onnx_predict`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vision_pipe.errors import StageError, VisionPipeError
from vision_pipe.io import atomic_write_text

if TYPE_CHECKING:
    from vision_pipe.module import PipelineModule
    from vision_pipe.pipeline import Pipeline
    from vision_pipe.stages import Head

#: What ``--format`` may be.
FORMATS: tuple[str, ...] = ("onnx",)
#: The ONNX opset used unless ``--opset`` says otherwise.
DEFAULT_OPSET = 18
#: The name of the graph's input.
INPUT_NAME = "images"
#: ``model.json``'s layout version (a reader refuses a newer one).
MODEL_JSON_FORMAT = 1

log = logging.getLogger("vision_pipe")


class ExportModel(nn.Module):
    """uint8 (N, H, W, 3) RGB images → the head's :meth:`~vision_pipe.stages.Head.export_outputs`.

    ``module`` is the pipeline's :class:`~vision_pipe.module.PipelineModule`
    (normalization → backbone → head, used as is), or any module taking (N, 3, H, W)
    uint8 images to the raw outputs of ``head`` (default: ``module.head``).
    """

    def __init__(self, module: PipelineModule | nn.Module, head: Head | None = None) -> None:
        super().__init__()
        self.module = module
        self.head: Head = head if head is not None else module.head  # type: ignore[assignment]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.module(images.permute(0, 3, 1, 2))
        return tuple(self.head.export_outputs(outputs, (images.shape[1], images.shape[2])).values())

    def output_names(self, example: Tensor) -> list[str]:
        """The names of :meth:`forward`'s outputs, in order (from one run on ``example``)."""
        with torch.no_grad():
            outputs = self.module(example.permute(0, 3, 1, 2))
            return list(self.head.export_outputs(outputs, (example.shape[1], example.shape[2])))


def export_pipeline(
    pipe: Pipeline,
    out_dir: str | Path,
    *,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> Path:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.json`` for ``pipe``; return the model's path.

    ``dynamic_batch``: the batch dimension is free (else the graph takes batches of 1).
    Raises :class:`StageError` naming the head when it has no export-time decoding,
    and :class:`VisionPipeError` with the exporter's reason when the graph cannot be exported.
    """
    if format not in FORMATS:
        raise VisionPipeError(f"export format {format!r} is not supported; the formats are {', '.join(FORMATS)}")
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
        model = ExportModel(module).eval()
        height, width = pipe.config.data.input_size
        example = torch.zeros((2 if dynamic_batch else 1, height, width, 3), dtype=torch.uint8)
        names = _output_names(model, example, pipe)
        path = out / "model.onnx"
        stages = ", ".join(f"{kind} '{pipe.resolved['model'][kind]['name']}'" for kind in ("backbone", "head"))
        what = f"pipeline '{pipe.config.name}' (stages {stages})"
        export_onnx(model, example, path, names, opset=opset, dynamic_batch=dynamic_batch, what=what)
    finally:
        module.train(was_training)
    info = model_info(pipe, names, opset=opset, dynamic_batch=dynamic_batch)
    atomic_write_text(out / "model.json", json.dumps(info, indent=2))
    return path


def _output_names(model: ExportModel, example: Tensor, pipe: Pipeline) -> list[str]:
    head_name = pipe.config.model.head["name"]
    try:
        return model.output_names(example.to(next(model.parameters()).device))
    except NotImplementedError as exc:
        raise StageError(
            f"head '{head_name}' ({pipe.config.task}) cannot be exported: {exc} (a head makes itself exportable "
            "by implementing export_outputs; see vision_pipe.stages.Head.export_outputs)"
        ) from None


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
        raise VisionPipeError(f"cannot export {what} to ONNX (opset {opset}): {_reason(exc)}") from exc


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


def model_info(pipe: Pipeline, outputs: Sequence[str], *, opset: int, dynamic_batch: bool) -> dict[str, Any]:
    """What ``model.json`` holds (see the module docstring)."""
    from vision_pipe import __version__

    height, width = pipe.config.data.input_size
    return {
        "format": MODEL_JSON_FORMAT,
        "vision_pipe_version": __version__,
        "task": pipe.config.task,
        "class_names": list(pipe.class_names),
        "class_colors": [list(c) for c in pipe.class_colors] if pipe.class_colors else None,
        "input": {
            "name": INPUT_NAME,
            "size": [height, width],
            "dtype": "uint8",
            "layout": "NHWC",
            "color": "RGB",
            "batch": "dynamic" if dynamic_batch else 1,
        },
        "outputs": list(outputs),
        "normalization": pipe.resolved["data"].get("normalization"),
        "opset": opset,
        "config": pipe.resolved,
    }


__all__ = ["DEFAULT_OPSET", "FORMATS", "ExportModel", "export_onnx", "export_pipeline", "model_info"]
