"""Drawing predictions on images (for ``vision-pipe predict`` and reports)."""

from __future__ import annotations

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


def render_prediction(image: np.ndarray, pred: Prediction) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB with ``pred`` drawn on it (upscaled for small images)."""
    if isinstance(pred, SegmentationPrediction):
        colours = palette(max(len(pred.class_names), int(pred.mask.max(initial=0)) + 1, 256))
        overlay = colours[np.clip(pred.mask, 0, 255)]
        blended = np.where(pred.mask[..., None] > 0, (0.5 * image + 0.5 * overlay).astype(np.uint8), image)
        return _upscale(np.ascontiguousarray(blended))[0]
    canvas, scale = _upscale(image.copy())
    canvas = np.ascontiguousarray(canvas)
    if isinstance(pred, ClassificationPrediction):
        text = f"{pred.class_name} {pred.score:.2f}"
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 24), (0, 0, 0), -1)
        cv2.putText(canvas, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    elif isinstance(pred, DetectionPrediction):
        colours = palette(len(pred.class_names) + 1 if pred.class_names else 256)
        for box, label, name, score in zip(pred.boxes, pred.labels, pred.class_names, pred.scores):
            x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
            colour = tuple(int(c) for c in colours[(int(label) + 1) % len(colours)])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(canvas, f"{name} {score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return canvas
