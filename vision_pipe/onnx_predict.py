"""Prediction with an exported ``model.onnx`` on ONNX Runtime, without torch or Lightning: :class:`OnnxPredictor`.

The runtime of :class:`vision_pipe.exported_predict.ExportedPredictor` (``model.json``,
resizing, the tasks' decoding and writing live there) for ``vision-pipe predict
model.onnx INPUT...``. Imports only numpy, OpenCV, onnxruntime and vision-pipe
modules that import no torch (a test checks ``sys.modules``).
"""

from __future__ import annotations

import numpy as np

from vision_pipe.errors import VisionPipeError
from vision_pipe.exported_predict import ExportedPredictor, read_model_info, resize_image, resize_mask


class OnnxPredictor(ExportedPredictor):
    """An exported ONNX model ready to predict: ``OnnxPredictor("export/model.onnx").predict(["a.png", array])``
    (see :class:`~vision_pipe.exported_predict.ExportedPredictor`)."""

    model_format = "onnx"

    def _load(self) -> None:
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types
            raise VisionPipeError(f"{self.path}: ONNX Runtime cannot load the model: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: batch}))


__all__ = ["OnnxPredictor", "read_model_info", "resize_image", "resize_mask"]
