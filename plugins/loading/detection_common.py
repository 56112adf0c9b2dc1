"""What the detection loaders (``coco``, ``voc``, ``yolo``) share: the sample source and the box checks.

A loader indexes its annotation files into a :class:`DetectionSource`: one
image path per sample and a subclass method that parses that image's objects.
Reading sample ``i`` decodes the image, asks for its objects (in xyxy pixel
edges, as the annotation gives them: nothing is clipped or dropped), checks
every box and raises one :class:`~vision_pipe.DataError` listing every bad
annotation of the image — by its file, its annotation id / object / line —
and how to fix it. The pipeline's pre-flight pass reads every sample, so these
errors stop the run before training (or, with ``on_bad_sample: skip``, leave
the image out).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision_pipe import (
    DataError,
    Sample,
    SampleSource,
    StageError,
    box_problem,
    file_stamp,
    fmt_box,
    fs_key,
    read_image,
    resolve_inside,
)

TASKS: tuple[str, ...] = ("detection",)


@dataclass(frozen=True)
class Object:
    """One annotated object: ``box`` (x1, y1, x2, y2) pixel edges, class index, VOC's flag, and
    ``where`` — how a message names its annotation (``"annotation id 12"``, ``"line 3"``)."""

    box: tuple[float, float, float, float]
    label: int
    difficult: bool
    where: str


#: What :meth:`DetectionSource.parse` returns for one image, in annotation-file order: an
#: :class:`Object`, or a ``str`` — why an annotation cannot be used (it names the annotation).
Parsed = list[Object | str]


def check_task(stage_name: str, task: str) -> None:
    """StageError unless ``task`` is detection."""
    if task not in TASKS:
        raise StageError(f"loading '{stage_name}': unknown task {task!r}; it serves {', '.join(TASKS)}")


def inside(root: Path, entry: str, where: str, outside: dict[int, str], index: int) -> Path:
    """``root / entry`` (see :func:`vision_pipe.resolve_inside`); when it leaves ``root``, the
    message goes to ``outside[index]`` (that sample's error) and the path is returned as written."""
    try:
        return resolve_inside(root, entry, where)
    except DataError as exc:
        outside[index] = str(exc)
        return root / entry


def _box_message(obj: Object, width: int, height: int) -> str | None:
    problem = box_problem(obj.box, width, height)
    return f"{obj.where}: box (x1, y1, x2, y2) = {fmt_box(obj.box)} {problem}" if problem else None


class DetectionSource(SampleSource, ABC):
    """Images with box annotations; an image is decoded and its annotations parsed when indexed.

    Subclasses set :attr:`images` and implement :meth:`parse` (and may refine
    :meth:`describe`, :meth:`missing_image_fix` and :attr:`fix`). Samples:
    ``image`` (H, W, 3) uint8 RGB, ``id`` (the image path), ``boxes`` (N, 4)
    float32 xyxy pixel edges, ``labels`` (N,) int64, ``difficult`` (N,) bool.
    """

    #: What to do about bad annotations, appended to the message.
    fix: str = "correct or remove the annotations named"

    def __init__(self, images: list[Path], key: dict[str, Any], annotation_files: Sequence[Path]) -> None:
        self.images = images  #: image path of each sample
        self.key = key  #: the stage name and parameters that shape the samples
        self.annotation_files = list(annotation_files)  #: files whose change changes the samples
        #: sample index → why its path, as an annotation file gives it, points outside the dataset
        self.outside: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.images)

    @abstractmethod
    def parse(self, index: int, width: int, height: int) -> Parsed:
        """The objects of sample ``index`` (its image is ``width`` × ``height`` pixels) and the problems of
        the annotations that cannot be used, in file order."""

    def describe(self, index: int) -> str:
        """How messages name sample ``index`` (by default its image path)."""
        return str(self.images[index])

    def missing_image_fix(self, index: int) -> str:
        """What to do when the image of sample ``index`` cannot be read."""
        return "put the image there or correct its path"

    def __getitem__(self, index: int) -> Sample:
        if index in self.outside:
            raise DataError(self.outside[index])
        path = self.images[index]
        try:
            image = read_image(path)
        except DataError as exc:
            raise DataError(f"{exc} ({self.describe(index)}): {self.missing_image_fix(index)}") from exc
        height, width = image.shape[:2]
        parsed = self.parse(index, width, height)
        objects = [entry for entry in parsed if isinstance(entry, Object)]
        problems = [entry if isinstance(entry, str) else _box_message(entry, width, height) for entry in parsed]
        if any(problems):
            listed = "; ".join(p for p in problems if p)
            raise DataError(f"{self.describe(index)}: {listed}. {self.fix}")
        return {
            "image": image,
            "id": str(path),
            "boxes": np.array([o.box for o in objects], np.float32).reshape(-1, 4),
            "labels": np.array([o.label for o in objects], np.int64),
            "difficult": np.array([o.difficult for o in objects], bool),
        }

    def fingerprint(self) -> str:
        head = {**self.key, "annotations": {str(p): file_stamp(p) for p in self.annotation_files}}
        digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
        for index, path in enumerate(self.images):
            stamp = "outside" if index in self.outside else file_stamp(path)
            # names are hashed as their bytes on disk: they need not be valid UTF-8
            digest.update(b"\n" + fs_key(path) + f"\t{stamp}".encode())
        return digest.hexdigest()
