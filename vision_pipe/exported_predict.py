"""Prediction with an exported model and its ``model.json``, whatever runs it: :class:`ExportedPredictor`.

What every runtime shares: reading ``model.json`` (written by :mod:`vision_pipe.export`;
refused when missing, unreadable, newer than this vision-pipe, or describing another
model file), resizing each input to the model's input size as training did
(bilinear, OpenCV), batching, and turning the model's outputs into the task's
prediction types (:mod:`vision_pipe.results`) in original-image coordinates
(segmentation masks resized back by nearest neighbour sampled at pixel centres, like
the heads' ``decode``; detection boxes scaled, the first ``count`` of the padded
detections). :meth:`ExportedPredictor.write` writes the same files as checkpoint
prediction (:func:`vision_pipe.render.write_predictions`). A runtime is a subclass
with :meth:`~ExportedPredictor._load` and :meth:`~ExportedPredictor._run`:
:class:`vision_pipe.onnx_predict.OnnxPredictor` (ONNX Runtime, no torch) and
:class:`vision_pipe.torchscript_predict.TorchScriptPredictor` (torch, no Lightning);
:func:`open_predictor` picks the one ``model.json`` names.

Imports only numpy, OpenCV and vision-pipe modules that import no torch (a test checks ``sys.modules``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vision_pipe.errors import DataError, VisionPipeError
from vision_pipe.io import read_image
from vision_pipe.results import ClassificationPrediction, DetectionPrediction, Prediction, SegmentationPrediction
from vision_pipe.tasks.coco_results import CocoIds

#: The ``model.json`` layout this reader understands (:data:`vision_pipe.export.MODEL_JSON_FORMAT`).
MODEL_JSON_FORMAT = 1


class ExportedPredictor:
    """An exported model ready to predict: ``open_predictor("export/model.pt").predict(["a.png", array])``.

    ``info`` is ``model.json`` (task, class names and colours, input size, ...).
    Raises :class:`VisionPipeError` for a missing or unreadable model or ``model.json``,
    for one written by a newer vision-pipe, and for a ``model.json`` that describes
    a model of another format than this runtime's (left from another export).
    """

    #: The ``model_format`` of ``model.json`` this runtime runs.
    model_format: str = ""

    def __init__(self, path: str | Path, *, batch_size: int = 16) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VisionPipeError(f"{self.path}: model file not found")
        self.info = read_model_info(self.path)
        described = self.info.get("model_format", "onnx")  # model.json of before TorchScript: ONNX
        if described != self.model_format:
            raise VisionPipeError(
                f"{self.path}: the model.json beside it describes a {described} model "
                f"({self.info.get('model_file')}), not this {self.model_format} one; the model and its model.json "
                "come from one export (export again, or copy both together)"
            )
        self.task: str = self.info["task"]
        if self.task not in _DECODERS:
            raise VisionPipeError(
                f"{self.path}: predicting with an exported {self.task} model is not supported yet "
                f"(supported: {', '.join(_DECODERS)}); use the checkpoint: vision-pipe predict CKPT INPUT..."
            )
        self.class_names: list[str] = list(self.info["class_names"])
        colors = self.info.get("class_colors")
        self.class_colors: list[tuple[int, int, int]] | None = [tuple(c) for c in colors] if colors else None
        #: the training dataset's category id of each class (COCO results), from ``model.json``'s ``category_ids``
        self.coco_ids = CocoIds(self.info.get("category_ids"))
        self.input_size: tuple[int, int] = tuple(self.info["input"]["size"])
        self.batch_size = batch_size if self.info["input"].get("batch") == "dynamic" else 1
        self._load()

    def _load(self) -> None:
        """Load :attr:`path` into the runtime; :class:`VisionPipeError` naming the file when it cannot."""
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The model's outputs, in ``model.json``'s order, for ``batch`` (N, H, W, 3) uint8 at the input size."""
        raise NotImplementedError

    def predict(self, inputs: Sequence[str | Path | np.ndarray]) -> list[Prediction]:
        """Predictions for image files and/or (H, W, 3) uint8 RGB arrays, in order, in original-image coordinates."""
        results: list[Prediction] = []
        items = list(inputs)
        for start in range(0, len(items), self.batch_size):
            chunk = [
                (str(x) if not isinstance(x, np.ndarray) else f"array:{i}", _image(i, x))
                for i, x in enumerate(items[start : start + self.batch_size], start)
            ]
            batch = np.stack([resize_image(image, self.input_size) for _, image in chunk])
            outputs = self._run(batch)
            for row, (image_id, image) in enumerate(chunk):
                results.append(_DECODERS[self.task](self, image_id, image.shape[:2], [o[row] for o in outputs]))
        return results

    def write(
        self, inputs: Sequence[str | Path | np.ndarray], predictions: Sequence[Prediction], out_dir: str | Path
    ) -> list[dict[str, Any]]:
        """Write ``predictions`` of ``inputs`` into ``out_dir`` as checkpoint prediction does (``predictions.json``,
        ``<name>_pred.png``, masks); return the JSON records."""
        from vision_pipe.render import write_predictions

        names = [f"array_{i}" if isinstance(x, np.ndarray) else Path(x).stem for i, x in enumerate(inputs)]
        images = [_image(i, x) for i, x in enumerate(inputs)]
        return write_predictions(images, predictions, out_dir, names, self.class_colors, self.coco_ids)


def open_predictor(path: str | Path, *, batch_size: int = 16) -> ExportedPredictor:
    """The predictor of the exported model at ``path``: its runtime by the file's suffix (``.onnx``: ONNX Runtime,
    ``.pt``: TorchScript); :class:`VisionPipeError` for another suffix."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        from vision_pipe.onnx_predict import OnnxPredictor

        return OnnxPredictor(path, batch_size=batch_size)
    if suffix == ".pt":
        from vision_pipe.torchscript_predict import TorchScriptPredictor

        return TorchScriptPredictor(path, batch_size=batch_size)
    raise VisionPipeError(f"{path}: not an exported model (model.onnx or model.pt, written by vision-pipe export)")


def read_model_info(model_path: Path) -> dict[str, Any]:
    """``model.json`` beside ``model_path``; :class:`VisionPipeError` when it is missing, unreadable or newer."""
    from vision_pipe import __version__

    path = model_path.with_name("model.json")
    if not path.is_file():
        raise VisionPipeError(
            f"{model_path}: its model.json is missing (expected {path}); an exported model needs the model.json "
            "written beside it by vision-pipe export (task, classes, input size): copy both files together"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        fmt, version = int(info.get("format", 0)), str(info["vision_pipe_version"])
        info["task"], info["class_names"], info["input"]["size"]  # noqa: B018 (present)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VisionPipeError(f"{path}: not a vision-pipe model.json ({type(exc).__name__}: {exc})") from None
    if fmt > MODEL_JSON_FORMAT or _version(version) > _version(__version__):
        raise VisionPipeError(
            f"{path}: written by vision-pipe {version} (model.json format {fmt}), newer than this vision-pipe "
            f"{__version__} (format {MODEL_JSON_FORMAT}); upgrade vision-pipe to predict with it"
        )
    return dict(info)


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB → ``size`` (height, width), bilinear: the resize of the prediction transform."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _image(i: int, item: str | Path | np.ndarray) -> np.ndarray:
    if not isinstance(item, np.ndarray):
        return read_image(item)
    image = item if item.ndim != 2 else np.repeat(item[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"predict input {i}: an array of shape {item.shape} and dtype {item.dtype}; "
            "expected an (H, W, 3) uint8 RGB image (or an (H, W) grey one)"
        )
    return image


def _classification(
    p: ExportedPredictor, image_id: str, size: tuple[int, ...], outputs: list[np.ndarray]
) -> Prediction:
    scores = outputs[0].astype(np.float32)
    label = int(scores.argmax())
    return ClassificationPrediction(
        id=image_id, label=label, class_name=p.class_names[label], score=float(scores[label]), scores=scores
    )


def _segmentation(p: ExportedPredictor, image_id: str, size: tuple[int, ...], outputs: list[np.ndarray]) -> Prediction:
    return SegmentationPrediction(id=image_id, mask=resize_mask(outputs[0], size), class_names=p.class_names)


def resize_mask(ids: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(h, w) class ids → ``size`` (H, W) int64 by nearest neighbour sampled at pixel centres (torch's
    ``nearest-exact``, as the heads' ``decode``): output row y takes input row floor((y + 0.5) * h / H)."""
    rows = _centres(int(size[0]), ids.shape[0])
    cols = _centres(int(size[1]), ids.shape[1])
    return ids.astype(np.int64)[rows[:, None], cols[None, :]]


def _centres(out: int, size: int) -> np.ndarray:
    return np.minimum(np.floor((np.arange(out) + 0.5) * (size / out)).astype(np.int64), size - 1)


def _detection(p: ExportedPredictor, image_id: str, size: tuple[int, ...], outputs: list[np.ndarray]) -> Prediction:
    """``boxes`` (K, 4) in input pixels, ``scores``, ``labels``, ``count`` → the first ``count``, in original pixels."""
    boxes, scores, labels, count = outputs[0], outputs[1], outputs[2], int(outputs[3])
    (h, w), (in_h, in_w) = size[:2], p.input_size
    scale = np.array([w / in_w, h / in_h, w / in_w, h / in_h], np.float32)
    labels = labels[:count].astype(np.int64)
    return DetectionPrediction(
        id=image_id,
        boxes=(boxes[:count].astype(np.float32) * scale).reshape(-1, 4),
        labels=labels,
        scores=scores[:count].astype(np.float32),
        class_names=[p.class_names[int(i)] for i in labels],
    )


_DECODERS = {"classification": _classification, "segmentation": _segmentation, "detection": _detection}

__all__ = ["ExportedPredictor", "open_predictor", "read_model_info", "resize_image", "resize_mask"]
