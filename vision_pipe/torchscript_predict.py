"""Prediction with an exported TorchScript ``model.pt``: :class:`TorchScriptPredictor` (torch, no Lightning).

The runtime of :class:`vision_pipe.exported_predict.ExportedPredictor` (``model.json``,
resizing, the tasks' decoding and writing live there) for ``vision-pipe predict
model.pt INPUT...``: ``torch.jit.load`` on the CPU and the module run under
``torch.inference_mode``. Imports torch and torchvision (whose ``torchvision::nms``
an exported detector calls), not Lightning, torchmetrics or the plugins.

What loading runs: ``torch.jit.load`` does not unpickle Python code — the archive
holds tensors and a TorchScript program (torch operators, including any registered
custom op the model calls), and running the model runs that program. Load models
whose origin you trust, as for any program.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vision_pipe.errors import VisionPipeError
from vision_pipe.exported_predict import ExportedPredictor


class TorchScriptPredictor(ExportedPredictor):
    """An exported TorchScript model ready to predict: ``TorchScriptPredictor("export/model.pt").predict([...])``
    (see :class:`~vision_pipe.exported_predict.ExportedPredictor`)."""

    model_format = "torchscript"

    def _load(self) -> None:
        import torch

        try:
            self.model = load_torchscript(self.path)
        except Exception as exc:  # torch's own error types for a bad archive
            raise VisionPipeError(
                f"{self.path}: torch cannot load the TorchScript model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); export it again with this torch "
                f"({torch.__version__}; model.json says it was written with {self.info.get('torch_version')})"
            ) from None

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [t.numpy() for t in self.model(torch.from_numpy(batch))]


def load_torchscript(path: str | Path) -> Any:
    """``torch.jit.load(path)`` on the CPU, in eval mode, with torchvision's ops registered (``torchvision::nms``,
    which exported detectors call) and torch.jit's deprecation notice silenced."""
    import torch
    import torchvision  # noqa: F401 (registers its ops)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


__all__ = ["TorchScriptPredictor", "load_torchscript"]
