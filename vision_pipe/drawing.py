"""Drawing primitives shared by the tasks' pictures: class colours, upscaling small images, per-class bars.

What is drawn for each kind of prediction belongs to its task
(:meth:`vision_pipe.tasks.Task.draw`); this module only holds what they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def write_class_bars(values: np.ndarray, class_names: Sequence[str], mean: float, path: Path, *, metric: str) -> None:
    """Horizontal bars of a per-class ``metric`` in [0, 1] (``values`` (C,), ``n/a`` for NaN), the ``mean`` as a
    dashed line, class 0 on top; a PNG at ``path`` at 100 dpi (``iou_per_class.png``, ``ap_per_class.png``)."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state is touched
    )

    n = len(class_names)
    fig = Figure(figsize=(6.0, min(max(2.5, 0.3 * n + 1.2), 40.0)))
    ax = fig.add_subplot()
    rows = np.arange(n)
    ax.barh(rows, np.nan_to_num(values, nan=0.0), color="tab:blue")
    for row, value in zip(rows, values, strict=True):
        label = f"{value:.3f}" if np.isfinite(value) else "n/a"
        ax.text(min(float(np.nan_to_num(value)), 1.0) + 0.01, float(row), label, va="center", fontsize=8)
    title = f"{metric} per class"
    if np.isfinite(mean):
        ax.axvline(mean, color="tab:red", linestyle="--")
        title += f" (dashed: mean {mean:.3f})"
    ax.set_yticks(rows, labels=list(class_names))
    ax.invert_yaxis()  # class 0 on top
    ax.set_xlim(0.0, 1.15)
    ax.set_xlabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = ["class_palette", "upscale", "write_class_bars"]
