"""Typed prediction results returned by :meth:`vision_pipe.Pipeline.predict`.

Coordinates are always those of the *original* image (before any resizing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """Base class: ``id`` names the input (its path, or ``"array:<i>"``)."""

    id: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {"id": self.id}


@dataclass
class ClassificationPrediction(Prediction):
    """``label`` the top-1 class index, ``class_name`` its name, ``score`` its
    probability, ``scores`` (num_classes,) float32 probabilities."""

    label: int = 0
    class_name: str = ""
    score: float = 0.0
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "class_name": self.class_name,
            "score": self.score,
            "scores": [float(s) for s in self.scores],
        }


@dataclass
class SegmentationPrediction(Prediction):
    """``mask`` (H, W) int64 class ids at the original image size; ``class_names``."""

    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        ids, counts = np.unique(self.mask, return_counts=True)
        return {
            "id": self.id,
            "size": list(self.mask.shape),
            "pixels_per_class": {
                self.class_names[int(i)]: int(c) for i, c in zip(ids, counts, strict=True) if i < len(self.class_names)
            },
        }


@dataclass
class DetectionPrediction(Prediction):
    """``boxes`` (N, 4) float32 xyxy in original-image pixels, ``labels`` (N,) int64,
    ``scores`` (N,) float32 sorted descending, ``class_names`` per box."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "boxes": [[float(v) for v in b] for b in self.boxes],
            "labels": [int(v) for v in self.labels],
            "class_names": list(self.class_names),
            "scores": [float(v) for v in self.scores],
        }


@dataclass
class ReconstructionPrediction(Prediction):
    """``image`` (H, W, 3) uint8 RGB, the reconstruction at the original image size; ``psnr`` (dB)
    of the reconstruction against the model's input (pixels in [0, 1], at the model's input size)."""

    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))
    psnr: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": list(self.image.shape[:2]), "psnr": self.psnr}
