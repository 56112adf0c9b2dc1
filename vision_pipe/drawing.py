"""Drawing primitives shared by the tasks' pictures: class colours, upscaling small images, writing PNGs.

What is drawn for each kind of prediction belongs to its task
(:meth:`vision_pipe.tasks.Task.draw`); this module only holds what they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vision_pipe.errors import VisionPipeError
from vision_pipe.io import atomic_write_bytes


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


def class_palette(num_classes: int, class_colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(max(num_classes, 256), 3) uint8 RGB: ``class_colors`` where given, else the VOC palette."""
    colours = palette(max(num_classes, 256))
    for i, c in enumerate(class_colors or []):
        colours[i] = c
    return colours


def upscale(image: np.ndarray, min_side: int = 256) -> tuple[np.ndarray, float]:
    """``image`` enlarged (nearest neighbour) so that its shorter side is at least ``min_side``; and the factor."""
    scale = max(1.0, min_side / min(image.shape[:2]))
    if scale > 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return image, scale


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (BGR (H, W, 3), or (H, W) 8/16-bit) as a PNG, atomically; return ``path``."""
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise VisionPipeError(f"could not encode {path} as PNG (array {array.dtype} {array.shape})")
    atomic_write_bytes(path, data.tobytes())
    return path


__all__ = ["class_palette", "palette", "upscale", "write_png"]
