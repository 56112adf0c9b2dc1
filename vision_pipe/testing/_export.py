"""The kit's export check: :func:`check_export`, a head (on a backbone) exported to ONNX and run by ONNX Runtime.

A plugin head is exportable when its :meth:`~vision_pipe.stages.Head.export_outputs`
(or its task's default) traces to ONNX; the check exports the head on a backbone
(default: the kit's :class:`~vision_pipe.testing.BoringBackbone`) with a dynamic
batch, like ``vision-pipe export``, and compares ONNX Runtime with PyTorch at two
batch sizes. Needs the ``export`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vision_pipe.errors import VisionPipeError
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
    **params: Any,
) -> Head:
    """Check that a head stage exports to ONNX with its ``export_outputs``; returns the built head.

    The head is built as :func:`~vision_pipe.testing.check_head` builds it, exported
    on ``backbone`` with a dynamic batch, and run by ONNX Runtime at batch 1 and 3
    on random uint8 images: the outputs must have the names, shapes and dtypes of
    PyTorch's, float outputs within 1e-4 and integer outputs equal on ≥ 99.9 % of
    their values. A :class:`~vision_pipe.errors.ContractError` names the head and
    what failed (no ``export_outputs``, an op without an ONNX translation, a mismatch).
    """
    import onnxruntime

    from vision_pipe.export import ExportModel, export_onnx

    backbone = backbone if backbone is not None else BoringBackbone()
    head, label, _ = _build_head(stage_like, task, backbone, input_size, tuple(class_names), params)
    model = ExportModel(_Chain(backbone, head).eval(), head).eval()
    height, width = input_size
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    try:
        names = model.output_names(example)
    except NotImplementedError as exc:
        raise _fail(label, f"cannot be exported: {exc}; implement export_outputs (see Head.export_outputs)") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            export_onnx(model, example, path, names, dynamic_batch=True, what=label)
        except VisionPipeError as exc:
            raise _fail(label, str(exc)) from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_names = [o.name for o in session.get_outputs()]
    if got_names != names:
        raise _fail(label, f"exported outputs {got_names}, export_outputs gives {names}")
    rng = np.random.default_rng(0)
    for n in (1, 3):
        images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(images))]
        got = session.run(None, {"images": images})
        for name, g, w in zip(names, got, want, strict=True):
            _compare(label, name, n, g, w)
    return head


def _compare(label: str, name: str, n: int, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or got.dtype != want.dtype:
        raise _fail(
            label,
            f"output {name!r} at batch {n}: ONNX {got.dtype}{list(got.shape)}, PyTorch {want.dtype}{list(want.shape)}",
        )
    if want.dtype.kind == "f":
        if not np.allclose(got, want, atol=1e-4, rtol=0):
            raise _fail(
                label,
                f"output {name!r} at batch {n}: ONNX differs from PyTorch by up to "
                f"{float(np.abs(got - want).max()):.2g} (more than 1e-4)",
            )
    elif want.size and (got == want).mean() < 0.999:
        raise _fail(label, f"output {name!r} at batch {n}: ONNX equals PyTorch on {(got == want).mean():.1%} only")


__all__ = ["check_export"]
