"""Drawing predictions on images and writing them to disk (``vision-pipe predict``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vision_pipe.results import (
    ClassificationPrediction,
    DetectionPrediction,
    Prediction,
    SegmentationPrediction,
)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours, the Pascal VOC palette (index 0 black)."""
    colours = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def _upscale(image: np.ndarray, min_side: int = 256) -> tuple[np.ndarray, float]:
    scale = max(1.0, min_side / min(image.shape[:2]))
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return image, scale


def class_palette(num_classes: int, class_colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(max(num_classes, 256), 3) uint8 RGB: ``class_colors`` where given, else the VOC palette."""
    colours = palette(max(num_classes, 256))
    for i, c in enumerate(class_colors or []):
        colours[i] = c
    return colours


def render_prediction(
    image: np.ndarray, pred: Prediction, class_colors: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB with ``pred`` drawn on it (upscaled for small images).

    Segmentation: every class but 0 blended in its colour (``class_colors``
    (R, G, B) per class, else the Pascal VOC palette). Detection: boxes with
    class name and score.
    """
    if isinstance(pred, SegmentationPrediction):
        colours = class_palette(max(len(pred.class_names), int(pred.mask.max(initial=0)) + 1), class_colors)
        overlay = colours[np.clip(pred.mask, 0, len(colours) - 1)]
        blended = np.where(pred.mask[..., None] > 0, (0.5 * image + 0.5 * overlay).astype(np.uint8), image)
        return _upscale(np.ascontiguousarray(blended))[0]
    canvas, scale = _upscale(image.copy())
    canvas = np.ascontiguousarray(canvas)
    if isinstance(pred, ClassificationPrediction):
        text = f"{pred.class_name} {pred.score:.2f}"
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 24), (0, 0, 0), -1)
        cv2.putText(canvas, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    elif isinstance(pred, DetectionPrediction):
        colours = class_palette(int(pred.labels.max(initial=0)) + 2)
        if class_colors:
            colours[1 : len(class_colors) + 1] = class_colors
        for box, label, name, score in zip(pred.boxes, pred.labels, pred.class_names, pred.scores):
            x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
            colour = tuple(int(c) for c in colours[int(label) + 1])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(canvas, f"{name} {score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return canvas


# ----------------------------------------------------------------------------
# Writing predictions
# ----------------------------------------------------------------------------


def write_predictions(
    images: Sequence[np.ndarray],
    predictions: Sequence[Prediction],
    out_dir: str | Path,
    names: Sequence[str],
    class_colors: Sequence[Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Write what ``predictions`` found into ``out_dir``; return one JSON record per input.

    ``images`` are the (H, W, 3) uint8 RGB inputs, ``names`` their file stems.
    For each input ``x``: ``x_pred.png`` (the image with the prediction drawn:
    label, colour overlay or boxes) and, for segmentation, ``x_mask.png`` (class
    ids at the original size: 8-bit, or 16-bit for more than 256 classes).
    Then ``predictions.json`` (every record) and, for detection,
    ``detections_coco.json`` (COCO results format: ``image_id`` = the input's
    position, ``file_name``, ``category_id`` = label, ``category_name``,
    ``bbox`` [x, y, width, height] in pixels, ``score``). Existing files of the
    same names are replaced atomically; an input whose stem repeats gets ``-1``,
    ``-2`` ... appended.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    coco: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, (image, pred, name) in enumerate(zip(images, predictions, names)):
        stem = _unique(name, used)
        record = pred.to_dict()
        annotated = render_prediction(image, pred, class_colors)
        record["annotated"] = str(_write_png(out / f"{stem}_pred.png", cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR)))
        if isinstance(pred, SegmentationPrediction):
            dtype = np.uint8 if len(pred.class_names) <= 256 else np.uint16
            record["mask"] = str(_write_png(out / f"{stem}_mask.png", pred.mask.astype(dtype)))
        if isinstance(pred, DetectionPrediction):
            for box, label, cname, score in zip(pred.boxes, pred.labels, pred.class_names, pred.scores):
                x1, y1, x2, y2 = (float(v) for v in box)
                coco.append(
                    {
                        "image_id": i,
                        "file_name": pred.id,
                        "category_id": int(label),
                        "category_name": cname,
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 5),
                    }
                )
        records.append(record)
    _write_json(out / "predictions.json", records)
    if predictions and isinstance(predictions[0], DetectionPrediction):
        _write_json(out / "detections_coco.json", coco)
    return records


def _unique(name: str, used: set[str]) -> str:
    stem, i = name, 1
    while stem in used:
        stem = f"{name}-{i}"
        i += 1
    used.add(stem)
    return stem


def _write_png(path: Path, array: np.ndarray) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    if not cv2.imwrite(str(tmp), array):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
    return path


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)
