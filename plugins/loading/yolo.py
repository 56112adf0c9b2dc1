"""The ``yolo`` loading stage: object detection from YOLO txt labels (the Ultralytics layout).

Layouts::

    data/images/a.jpg        data/labels/a.txt           → one "all" source (the pipeline splits it)
    data/images/train/a.jpg  data/labels/train/a.txt     → the folders are the splits
    data/images/val/...      data/labels/val/...            (train, val or valid, test)

Each label line is ``class cx cy w h``: a 0-based index into the classes file,
then the box centre and size normalized to [0, 1] by the image width and
height. A txt is parsed (and converted to pixels, which needs the decoded
image's size) when its sample is read.
"""

from __future__ import annotations

import math
from pathlib import Path

from vision_pipe import (
    IMAGE_EXTENSION_LIST,
    DataError,
    LoadedData,
    Loader,
    fmt_box,
    hookimpl,
    list_images,
    read_class_file,
    require_dir,
    stage,
)

from .detection_common import (
    DetectionSource,
    Object,
    Parsed,
    check_task,
)

#: Split folder names below ``images/`` (the first one present is used), by split.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
_CLASSES_FIX = "a text file with one class name per line, or a data YAML with 'names:' (a list, or {0: name, ...})"


# ----------------------------------------------------------------------------
# The classes file
# ----------------------------------------------------------------------------


def read_classes(path: Path) -> list[str]:
    """The class names of a YOLO classes file (one per line, or a data YAML with ``names:``)."""
    spec = read_class_file(
        path, what="YOLO classes file", fix=f"set the loading stage's 'classes' parameter to {_CLASSES_FIX}"
    )
    return spec.names


# ----------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------


class YoloSource(DetectionSource):
    """Image files and their label txt files (a missing txt: no objects)."""

    fix = (
        "Correct or remove these lines: each is 'class cx cy w h', class a 0-based index into the classes file, "
        "cx cy w h the box centre and size normalized to [0, 1] by the image width and height."
    )

    def __init__(self, images: list[Path], labels: list[Path], class_names: list[str], classes: Path) -> None:
        key = {"stage": "yolo", "classes": class_names}
        super().__init__(images, key, labels)
        self.labels = labels  #: the label txt of each image (it may not exist)
        self.class_names = class_names
        self.classes_file = classes

    def describe(self, index: int) -> str:
        return f"{self.labels[index]} (image {self.images[index]})"

    def _line(self, line: str, n: int, width: int, height: int) -> Object | str:
        """One label line as an :class:`Object` in pixels, or why it cannot be used."""
        fields = line.split()
        where = f"line {n} {line.strip()!r}"
        if len(fields) != 5:
            polygon = " (polygon / segmentation labels are not supported)" if len(fields) > 6 else ""
            return f"{where} has {len(fields)} values; expected 5: class cx cy w h{polygon}"
        try:
            cls, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            return f"{where} holds a value that is not a number; expected: class cx cy w h"
        if not all(math.isfinite(v) for v in (cls, cx, cy, w, h)):
            return f"{where} holds a NaN or infinite value"
        num = len(self.class_names)
        if not cls.is_integer() or not 0 <= cls < num:
            return (
                f"{where}: class {fields[0]} is not declared in {self.classes_file} ({num} classes, ids 0..{num - 1}): "
                "add its name to the classes file or correct the class id"
            )
        if not all(0 <= v <= 1 for v in (cx, cy, w, h)):
            return (
                f"{where}: cx cy w h must be normalized to [0, 1] by the image size ({width}×{height}); "
                f"if they are pixels, divide cx and w by {width}, cy and h by {height}"
            )
        box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        return Object(box, int(cls), False, f"line {n} (cx cy w h {fmt_box((cx, cy, w, h))})")

    def parse(self, index: int, width: int, height: int) -> Parsed:
        parsed: Parsed = []
        path = self.labels[index]
        if not path.is_file():
            return parsed  # an image without a label file has no objects
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read label file {path}: {exc}") from exc
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                parsed.append(self._line(line, n, width, height))
        return parsed


# ----------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------


def default_labels(images: Path) -> Path:
    """The labels folder of the Ultralytics layout: ``images`` with its last component named
    ``images`` replaced by ``labels``; ``images`` itself (txt next to each image) if it has none."""
    parts = images.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1 :])
    return images


def _split_folders(images: Path) -> dict[str, Path]:
    """Split → folder: ``images/{train,val|valid,test}`` when ``images/train`` exists, else ``{"all": images}``."""
    if not (images / "train").is_dir():
        return {"all": images}
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        folder = next((images / n for n in names if (images / n).is_dir()), None)
        if folder is not None:
            found[split] = folder
    stray = [p for p in list_images(images) if not any(p.is_relative_to(f) for f in found.values())]
    if stray:
        raise DataError(
            f"YOLO images folder {images} has split folders (train/) and images outside them "
            f"(e.g. {stray[0]}): move those into train/, val/ or test/, or point 'images' at one folder"
        )
    return found


class Yolo(Loader):
    """The loader :func:`yolo` returns."""

    tasks = ("detection",)

    def __init__(self, images: Path, classes: Path, labels: Path | None) -> None:
        self.images = images
        self.classes = classes
        self.labels = labels

    def _labels_root(self) -> Path:
        if self.labels is None:
            return default_labels(self.images)
        require_dir(self.labels, "YOLO labels folder", "check the loading stage's 'labels' parameter")
        return self.labels

    def load(self, task: str) -> LoadedData:
        check_task("yolo", task)
        require_dir(self.images, "YOLO images folder", "check the loading stage's 'images' parameter")
        names = read_classes(self.classes)
        labels_root = self._labels_root()
        splits = {}
        for split, folder in _split_folders(self.images).items():
            images = list_images(folder)
            if not images:
                raise DataError(f"YOLO images folder {folder} holds no images ({IMAGE_EXTENSION_LIST}): add images")
            labels = [(labels_root / p.relative_to(self.images)).with_suffix(".txt") for p in images]
            splits[split] = YoloSource(images, labels, names, self.classes)
        existing = set(labels_root.rglob("*.txt")) if labels_root.is_dir() else set()
        if not any(p in existing for source in splits.values() for p in source.labels):
            example = next(iter(splits.values()))
            raise DataError(
                f"no label file found for any image of {self.images}: image {example.images[0]} has its labels "
                f"in {example.labels[0]}; put the txt files there, or set the loading stage's 'labels' folder"
            )
        return LoadedData(names, splits)


@stage("loading", "yolo")
def yolo(images: Path, classes: Path, labels: Path | None = None) -> Loader:
    """Object detection from YOLO txt labels (``class cx cy w h``, normalized) and a classes file.

    - ``images``: the images folder (searched recursively). If it holds
      ``train/`` (and optionally ``val/`` or ``valid/``, ``test/``), those are the
      splits; otherwise the pipeline splits its images (``data.split``).
    - ``classes``: the class names: a text file with one name per line (line
      ``i`` names class ``i - 1``), or a data YAML (``.yaml``/``.yml``) with
      ``names:`` as a list or as ``{0: name, 1: name, ...}``.
    - ``labels``: the labels folder, mirroring ``images``
      (``images/train/a.jpg`` ↔ ``labels/train/a.txt``); default the Ultralytics
      rule: the last folder named ``images`` in the path replaced by ``labels``
      (``data/images`` → ``data/labels``), or, if there is none, the txt next
      to each image.

    Samples: ``image`` (H, W, 3) uint8 RGB, ``id`` (the image path), ``boxes``
    (N, 4) float32 xyxy pixels = ((cx - w/2)·W, (cy - h/2)·H, (cx + w/2)·W,
    (cy + h/2)·H) with the decoded image's width W and height H, ``labels``
    (N,) int64 (the class ids), ``difficult`` all False. An image without a txt,
    or with an empty one, has no objects (at least one image must have a txt).
    A malformed line, an undeclared class id, a non-normalized value or a box
    outside the image makes the image a bad sample whose error names the txt
    and the line number; boxes are never clipped.
    """
    label_dir = None if labels is None else Path(labels).expanduser()
    return Yolo(Path(images).expanduser(), Path(classes).expanduser(), label_dir)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [yolo]
