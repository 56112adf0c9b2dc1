"""The ``voc`` loading stage: object detection from Pascal VOC XML annotations.

Layout (as in ``VOCdevkit/VOC2012``)::

    root/Annotations/2008_000008.xml          one XML per image: <object><name>, <difficult>, <bndbox>
    root/JPEGImages/2008_000008.jpg           the image with the same stem (jpg, jpeg, png or bmp)
    root/ImageSets/Main/{train,val,test,trainval}.txt   optional: the ids of each split, one per line

Loading lists the ids (no file is opened but the split lists); an image's XML
is parsed when the sample is read, so that one broken XML is one bad sample.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated

from pydantic import Field

from vision_pipe import (
    SPLITS,
    DataError,
    LoadedData,
    Loader,
    StageError,
    did_you_mean,
    fmt_box,
    hookimpl,
    list_images,
    require_dir,
    stage,
)

from .detection_common import (
    DetectionSource,
    Object,
    Parsed,
    check_task,
    inside,
)

#: The 20 Pascal VOC classes, in the devkit's order (label i = VOC_CLASSES[i]).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _layout_hint(root: Path) -> str:
    """``" (did you mean root/VOCdevkit/VOC2012?)"`` when a VOC folder sits below ``root``."""
    below = sorted({p.parent for p in [*root.glob("*/Annotations"), *root.glob("*/*/Annotations")] if p.is_dir()})
    return f" (did you mean {', '.join(str(p) for p in below[:3])}?)" if below else ""


def _read_ids(path: Path) -> list[str]:
    """The image ids of an ImageSets list (first word of each non-empty line)."""
    try:
        ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read split list {path}: {exc}") from exc
    if not ids:
        raise DataError(f"split list {path} is empty: list one image id per line, or remove the file")
    return ids


def _split_ids(root: Path) -> dict[str, tuple[list[str], Path]]:
    """Split → (ids, the file they come from), from ``ImageSets/Main``; ``all`` = every XML without lists.

    ``train.txt`` (with ``val.txt``, ``test.txt``) when present, else ``trainval.txt``
    (with ``test.txt``; ``val.txt`` overlaps it and is not used).
    """
    main = root / "ImageSets" / "Main"
    present = {name: main / f"{name}.txt" for name in (*SPLITS, "trainval") if (main / f"{name}.txt").is_file()}
    if not present:
        folder = root / "Annotations"
        ids = sorted(p.stem for p in folder.glob("*.xml"))
        if not ids:
            raise DataError(f"{folder} holds no .xml annotation files: add one per image")
        return {"all": (ids, folder)}
    train = "train" if "train" in present else "trainval"
    if train not in present:
        raise DataError(
            f"{main} has {', '.join(sorted(present))}.txt but no train.txt or trainval.txt: add the training ids "
            f"(one per line), or remove {root / 'ImageSets'} to use every annotation"
        )
    wanted = {"train": train, "val": "val" if train == "train" else None, "test": "test"}
    return {s: (_read_ids(present[f]), present[f]) for s, f in wanted.items() if f in present}


def _number(obj: ET.Element, tag: str) -> float | None:
    """The number in ``<bndbox><tag>``, or None."""
    text = obj.findtext(f"bndbox/{tag}")
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class VocSource(DetectionSource):
    """The images of some VOC ids; an id's XML is parsed when its sample is read."""

    def __init__(self, root: Path, ids: list[str], images: dict[str, Path], loader: Voc, listed: Path) -> None:
        outside: dict[int, str] = {}
        xmls = [
            inside(root / "Annotations", f"{i}.xml", f"{listed}: image id {i!r}", outside, n) for n, i in enumerate(ids)
        ]
        paths = [images.get(i, root / "JPEGImages" / f"{i}.jpg") for i in ids]
        key = {"stage": "voc", "classes": loader.classes, "keep_difficult": loader.keep_difficult,
               "one_based": loader.one_based}  # fmt: skip
        super().__init__(paths, key, [x for n, x in enumerate(xmls) if n not in outside])
        self.outside = outside
        self.ids = ids
        self.xmls = xmls
        self.listed = listed  #: where the ids come from (a split list or Annotations/), for messages
        self.classes = loader.classes
        self.keep_difficult = loader.keep_difficult
        self.one_based = loader.one_based
        self.fix = (
            "Correct or remove these <object>s in the XML. Coordinates are "
            + ("1-based pixel indices (1 ≤ xmin ≤ xmax ≤ width); if your tool writes 0-based pixel edges, "
               "set the loading stage's one_based: false." if self.one_based else "pixel edges (one_based: false).")
        )  # fmt: skip

    def describe(self, index: int) -> str:
        return f"{self.xmls[index]} (image {self.images[index]})"

    def missing_image_fix(self, index: int) -> str:
        stem = self.ids[index]
        return f"put the image {stem}.jpg (or .jpeg, .png, .bmp) into {self.images[index].parent}"

    def _root(self, index: int) -> ET.Element:
        """The parsed XML of sample ``index``; DataError naming the file (and line) if it cannot be read."""
        xml = self.xmls[index]
        if not xml.is_file():
            raise DataError(
                f"annotation file {xml} is missing for image id '{self.ids[index]}' (listed in {self.listed}): "
                "add it (an image without objects needs an XML without <object>), or remove the id from the list"
            )
        try:
            return ET.parse(xml).getroot()
        except ET.ParseError as exc:
            line, col = exc.position
            raise DataError(f"{xml}:{line}:{col}: invalid XML ({exc}): fix the file") from exc
        except OSError as exc:
            raise DataError(f"cannot read annotation file {xml}: {exc}") from exc

    def _object(self, obj: ET.Element, where: str) -> Object | str:
        """One <object> as an :class:`Object`, or why it cannot be used."""
        name = (obj.findtext("name") or "").strip()
        if not name:
            return f"{where} has no <name>: add the class name"
        where = f"{where} ({name!r})"
        if name not in self.classes:
            shown = "the 20 VOC classes" if tuple(self.classes) == VOC_CLASSES else ", ".join(self.classes)
            return (
                f"{where}: class {name!r} is not in classes ({shown}).{did_you_mean(name, self.classes)} "
                "Add it to the loading stage's 'classes' list, or correct the name"
            )
        difficult_text = (obj.findtext("difficult") or "0").strip()
        if difficult_text not in ("0", "1"):
            return f"{where}: <difficult> is {difficult_text!r}; it must be 0 or 1"
        values = [_number(obj, tag) for tag in _COORDS]
        if any(v is None for v in values):
            missing = [tag for tag, v in zip(_COORDS, values, strict=True) if v is None]
            return f"{where}: <bndbox> lacks a number in <{'>, <'.join(missing)}>: give xmin, ymin, xmax, ymax"
        xmin, ymin, xmax, ymax = (float(v) for v in values if v is not None)
        box = (xmin - 1, ymin - 1, xmax, ymax) if self.one_based else (xmin, ymin, xmax, ymax)
        shown = fmt_box((xmin, ymin, xmax, ymax))
        return Object(box, self.classes.index(name), difficult_text == "1", f"{where} (bndbox {shown})")

    def parse(self, index: int, width: int, height: int) -> Parsed:
        parsed: Parsed = []
        for n, obj in enumerate(self._root(index).iter("object"), start=1):
            if not self.keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
                continue
            parsed.append(self._object(obj, f"object {n}"))
        return parsed


class Voc(Loader):
    """The loader :func:`voc` returns."""

    tasks = ("detection",)

    def __init__(self, root: Path, classes: list[str], keep_difficult: bool, one_based: bool) -> None:
        self.root = root
        self.classes = classes
        self.keep_difficult = keep_difficult
        self.one_based = one_based

    def _images(self) -> dict[str, Path]:
        """Image id (file stem) → path, from one listing of ``JPEGImages/``."""
        folder = self.root / "JPEGImages"
        found: dict[str, Path] = {}
        for path in list_images(folder, recursive=False):
            found.setdefault(path.stem, path)
        return found

    def load(self, task: str) -> LoadedData:
        check_task("voc", task)
        fix = "'root' must hold Annotations/ and JPEGImages/ (the Pascal VOC layout)"
        require_dir(self.root, "VOC folder", f"check the loading stage's 'root' parameter; {fix}")
        require_dir(self.root / "Annotations", "VOC annotation folder", fix + _layout_hint(self.root))
        require_dir(self.root / "JPEGImages", "VOC image folder", fix + _layout_hint(self.root))
        images = self._images()
        splits = {
            s: VocSource(self.root, ids, images, self, listed) for s, (ids, listed) in _split_ids(self.root).items()
        }
        return LoadedData(list(self.classes), splits)


@stage("loading", "voc")
def voc(
    root: Path,
    classes: Annotated[list[str], Field(min_length=1)] | None = None,
    keep_difficult: bool = True,
    one_based: bool = True,
) -> Loader:
    """Object detection from a Pascal VOC folder (``Annotations/*.xml``, ``JPEGImages/``).

    - ``root``: the folder holding ``Annotations/`` and ``JPEGImages/`` (e.g.
      ``data/VOCdevkit/VOC2012``). Splits come from ``ImageSets/Main/``:
      ``train.txt`` (or else ``trainval.txt``), ``val.txt``, ``test.txt``, those
      present; a split without its list is carved out of the training ids
      (``data.split``). Without ``ImageSets/Main`` lists every XML is used and
      the pipeline splits them.
    - ``classes``: the class names, label ``i`` = ``classes[i]``; default the
      20 VOC classes (aeroplane ... tvmonitor, in the devkit's order). An object
      whose ``<name>`` is not in the list makes its image a bad sample.
    - ``keep_difficult``: keep objects marked ``<difficult>1</difficult>``
      (flagged ``difficult``: trained on, ignored by the mAP metric, as in VOC's
      evaluation); ``false`` leaves them out.
    - ``one_based``: VOC coordinates are 1-based inclusive pixel indices (a box
      over pixel columns 0..9 is xmin=1, xmax=10); they become pixel edges as
      (xmin - 1, ymin - 1, xmax, ymax). Set ``false`` for tools that write
      0-based pixel edges (taken as they are).

    Samples: ``image`` (H, W, 3) uint8 RGB, ``id`` (the image path), ``boxes``
    (N, 4) float32 xyxy pixel edges, ``labels`` (N,) int64, ``difficult`` (N,)
    bool. An XML without ``<object>`` is an image without objects. Boxes are
    never clipped: an unknown class, a missing or non-numeric coordinate or a
    box outside the image makes the image a bad sample whose error names the
    XML and the object's number (1-based, in file order).
    """
    names = list(VOC_CLASSES) if classes is None else [str(c) for c in classes]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise StageError(f"loading 'voc': classes lists {twice} more than once: give each class once")
    return Voc(Path(root).expanduser(), names, bool(keep_difficult), bool(one_based))


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [voc]
