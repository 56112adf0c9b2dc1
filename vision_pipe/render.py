"""Drawing predictions on images and writing them to disk (``vision-pipe predict``).

What is drawn, and which files a prediction gets besides its picture, belong to
its task (:meth:`vision_pipe.tasks.Task.draw`, ``write_prediction``,
``write_predictions``); this module writes what every task shares: the drawn
``<name>_pred.png`` per input and ``predictions.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vision_pipe.errors import VisionPipeError
from vision_pipe.io import atomic_write_text, write_png
from vision_pipe.results import Prediction
from vision_pipe.tasks import task_of_prediction


def render_prediction(
    image: np.ndarray, pred: Prediction, class_colors: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB with ``pred`` drawn on it by its task (upscaled for small images).

    Classification: the class name and score. Segmentation: every class but 0
    blended in its colour (``class_colors`` (R, G, B) per class, else the Pascal
    VOC palette). Detection: boxes with class name and score.
    """
    return task_of_prediction(pred).draw(image, pred, class_colors)


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
    out = prepare_out_dir(out_dir)
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    try:
        for image, pred, name in zip(images, predictions, names, strict=True):
            task = task_of_prediction(pred)
            stem = unique_stem(name, used)
            record = pred.to_dict()
            annotated = task.draw(image, pred, class_colors)
            png = write_png(out / f"{stem}_pred.png", cv2.cvtColor(annotated, cv2.COLOR_RGB2BGR))
            record["annotated"] = str(png)
            record.update(task.write_prediction(pred, out, stem))
            records.append(record)
        atomic_write_text(out / "predictions.json", json.dumps(records, indent=2))
        if predictions:
            task_of_prediction(predictions[0]).write_predictions(predictions, out)
    except OSError as exc:
        where = exc.filename or out
        raise VisionPipeError(f"{where}: cannot write the predictions: {exc.strerror or exc}") from None
    return records


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir``, made if missing, after checking that files can be written in it: an existing file, a
    folder that cannot be made or is not writable is a :class:`VisionPipeError` naming it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VisionPipeError(f"{out}: the output folder is an existing file; choose another --out (a folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass  # what a file write needs, as the filesystem says (permissions, read-only mounts, root or not)
    except OSError as exc:
        raise VisionPipeError(
            f"{out}: cannot write predictions into this folder ({exc.strerror or exc}); "
            "choose another --out or fix its permissions"
        ) from None
    return out


def unique_stem(name: str, used: set[str]) -> str:
    """``name``, or ``name-1``, ``name-2`` ... when already in ``used``; the result is added to ``used``."""
    stem, i = name, 1
    while stem in used:
        stem = f"{name}-{i}"
        i += 1
    used.add(stem)
    return stem


__all__ = ["prepare_out_dir", "render_prediction", "unique_stem", "write_predictions"]
