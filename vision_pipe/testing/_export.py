"""The kit's export check: :func:`check_export`, a head (on a backbone) exported to ONNX and TorchScript and run.

A plugin head is exportable when its :meth:`~vision_pipe.stages.Head.export_outputs`
(or its task's default) traces to ONNX and to TorchScript; the check exports the head
on a backbone (default: the kit's :class:`~vision_pipe.testing.BoringBackbone`) with a
dynamic batch, like ``vision-pipe export``, and compares ONNX Runtime and the loaded
TorchScript module with PyTorch at two batch sizes (the comparison of
:func:`vision_pipe.export.compare_outputs`). Needs the ``export`` extra (onnx,
onnxscript, onnxruntime).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.errors import VisionPipeError
from vision_pipe.export import compare_outputs
from vision_pipe.stages import Backbone, Head
from vision_pipe.testing._boring import BoringBackbone
from vision_pipe.testing._build import KIT_CLASSES, _fail
from vision_pipe.testing._model import _build_head


class _Chain(nn.Module):
    """(N, 3, H, W) uint8 → backbone → head's raw outputs (no normalization: the kit's stages take [0, 1])."""

    def __init__(self, backbone: Backbone, head: Head) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Any:
        return self.head(self.backbone(images.float() / 255.0))


def check_export(
    stage_like: Any,
    task: str | None = None,
    /,
    *,
    backbone: Backbone | None = None,
    input_size: tuple[int, int] = (32, 32),
    class_names: Sequence[str] = KIT_CLASSES,
    formats: Sequence[str] = ("onnx", "torchscript"),
    **params: Any,
) -> Head:
    """Check that a head stage exports to ONNX and TorchScript with its ``export_outputs``; returns the built head.

    The head is built as :func:`~vision_pipe.testing.check_head` builds it, exported
    on ``backbone`` with a dynamic batch in each of ``formats``, and run (ONNX Runtime;
    ``torch.jit.load``) at batch 1 and 3 on random uint8 images: the outputs must have
    the names, shapes and dtypes of PyTorch's, float outputs within 1e-4 and integer
    outputs equal on ≥ 99.9 % of their values. A :class:`~vision_pipe.errors.ContractError`
    names the head and what failed (no ``export_outputs``, an op without an ONNX
    translation, a trace that does not give the model's outputs, a mismatch).
    """
    from vision_pipe.export import ExportModel

    backbone = backbone if backbone is not None else BoringBackbone()
    head, label, _ = _build_head(stage_like, task, backbone, input_size, tuple(class_names), params)
    model = ExportModel(_Chain(backbone, head).eval(), head).eval()
    height, width = input_size
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    try:
        names = model.output_names(example)
    except NotImplementedError as exc:
        raise _fail(label, f"cannot be exported: {exc}; implement export_outputs (see Head.export_outputs)") from None
    for format in formats:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run, got_names = _exported(format, model, example, Path(tmp), names, label)
            except VisionPipeError as exc:
                raise _fail(label, str(exc)) from None
            if got_names != names:
                raise _fail(label, f"exported outputs ({format}) {got_names}, export_outputs gives {names}")
            rng = np.random.default_rng(0)
            for n in (1, 3):
                images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
                with torch.no_grad():
                    want = [t.numpy() for t in model(torch.from_numpy(images))]
                for name, g, w in zip(names, run(images), want, strict=True):
                    problem = compare_outputs(g, w, "PyTorch's")
                    if problem:
                        raise _fail(label, f"output {name!r} at batch {n}: {format} {problem}")
    return head


def _exported(
    format: str, model: nn.Module, example: Tensor, folder: Path, names: list[str], label: str
) -> tuple[Callable[[np.ndarray], list[np.ndarray]], list[str]]:
    """``model`` exported in ``format`` into ``folder``, loaded: (images → outputs, its output names)."""
    from vision_pipe.export import export_onnx, export_torchscript
    from vision_pipe.torchscript_predict import load_torchscript

    if format == "onnx":
        import onnxruntime

        path = folder / "model.onnx"
        export_onnx(model, example, path, names, dynamic_batch=True, what=label)  # type: ignore[arg-type]
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: list(session.run(None, {"images": images})), [o.name for o in session.get_outputs()]
    path = folder / "model.pt"
    export_torchscript(model, example, path, dynamic_batch=True, what=label)  # type: ignore[arg-type]
    loaded = load_torchscript(path)

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in loaded(torch.from_numpy(images))]

    return run, names


__all__ = ["check_export"]
