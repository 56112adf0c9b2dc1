"""Drawing primitives shared by the tasks' pictures: class colours and upscaling small images.

What is drawn for each kind of prediction belongs to its task
(:meth:`vision_pipe.tasks.Task.draw`); this module only holds what they share.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vision_pipe.classes import voc_palette


def class_palette(num_classes: int, class_colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(max(num_classes, 256), 3) uint8 RGB: ``class_colors`` where given, else the VOC palette."""
    colours = np.array(voc_palette(max(num_classes, 256)), np.uint8)
    for i, c in enumerate(class_colors or []):
        colours[i] = c
    return colours


def upscale(image: np.ndarray, min_side: int = 256) -> tuple[np.ndarray, float]:
    """``image`` enlarged (nearest neighbour) so that its shorter side is at least ``min_side``; and the factor."""
    scale = max(1.0, min_side / min(image.shape[:2]))
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return image, scale


__all__ = ["class_palette", "upscale"]
