"""The ``coco`` loading stage: object detection from COCO "instances" JSON files.

Layout (the images folder is a parameter; ``file_name`` is relative to it)::

    data/coco/annotations/instances_train.json   {"images": [...], "annotations": [...], "categories": [...]}
    data/coco/train/000000000139.jpg ...

Loading parses the JSON once and keeps, per image, only the fields it needs
(annotation id, category id, bbox, iscrowd); images are decoded when indexed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vision_pipe import (
    DataError,
    LoadedData,
    Loader,
    StageError,
    fmt_box,
    hookimpl,
    path_key,
    require_dir,
    require_file,
    stage,
)

from .detection_common import (
    DetectionSource,
    Object,
    Parsed,
    check_task,
    inside,
)

#: What ``crowd`` may say to do with ``iscrowd: 1`` annotations.
CrowdMode = Literal["difficult", "drop", "object"]
_KEYS = "a COCO instances file is a JSON object with 'images', 'annotations' and 'categories' lists"


@dataclass(frozen=True)
class Annotation:
    """What is kept of one COCO annotation."""

    where: str  #: "annotation id 12" (or "annotations[5]" when it has no id)
    category_id: Any
    bbox: Any  #: [x, y, width, height] pixels, as written (checked when the image is read)
    iscrowd: bool


@dataclass
class CocoFile:
    """One parsed instances file."""

    path: Path
    categories: dict[int, str]  #: category id → name, in file order
    image_ids: list[Any]
    file_names: list[str]
    annotations: dict[Any, list[Annotation]]  #: image id → its annotations


# ----------------------------------------------------------------------------
# Parsing the JSON (whole-file problems: DataError now)
# ----------------------------------------------------------------------------


def _read_json(path: Path, param: str) -> dict[str, Any]:
    require_file(path, "COCO annotation file", f"check the loading stage's '{param}' parameter")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}): fix the file; {_KEYS}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read COCO annotation file {path}: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits, thousands of nested lists
        raise DataError(f"{path}: unreadable JSON ({exc!s:.200}): fix the file; {_KEYS}") from exc
    missing = [k for k in ("images", "categories") if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing or not isinstance(data.get("annotations", []), list):
        got = f"keys {sorted(data)}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise DataError(f"{path}: not a COCO instances file ({_KEYS}; got {got})")
    return data


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _categories(path: Path, entries: list[Any]) -> dict[int, str]:
    """Category id → name; DataError for malformed, duplicate or missing categories."""
    if not entries:
        raise DataError(f'{path}: \'categories\' is empty: declare every class as {{"id": 1, "name": "cat"}}')
    found: dict[int, str] = {}
    for i, cat in enumerate(entries):
        ok = isinstance(cat, dict) and isinstance(cat.get("id"), int) and not isinstance(cat.get("id"), bool)
        if not ok or not isinstance(cat.get("name"), str) or not cat["name"]:
            raise DataError(f"{path}: categories[{i}] = {cat!r}: a category needs an integer 'id' and a 'name'")
        if cat["id"] in found:
            raise DataError(f"{path}: category id {cat['id']} is declared twice: give each category its own id")
        found[cat["id"]] = cat["name"]
    names = list(found.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: category name(s) {twice} are declared under several ids: give each class one id")
    return found


def _images(path: Path, entries: list[Any]) -> tuple[list[Any], list[str]]:
    """Image ids and file names, in file order; DataError for malformed or duplicate entries."""
    ids: list[Any] = []
    names: list[str] = []
    seen: set[Any] = set()
    for i, img in enumerate(entries):
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] = {img!r}: an image needs an 'id' and a 'file_name'")
        if img["id"] in seen:
            raise DataError(f"{path}: image id {img['id']!r} is listed twice in 'images': give each image its own id")
        seen.add(img["id"])
        ids.append(img["id"])
        names.append(img["file_name"])
    if not ids:
        raise DataError(f'{path}: \'images\' is empty: list the images as {{"id": 1, "file_name": "a.jpg"}}')
    return ids, names


def _annotations(path: Path, entries: list[Any], image_ids: set[Any]) -> dict[Any, list[Annotation]]:
    """Annotations grouped by image id; DataError for annotations that belong to no listed image."""
    grouped: dict[Any, list[Annotation]] = {}
    orphans: list[str] = []
    for i, ann in enumerate(entries):
        where = f"annotation id {ann['id']}" if isinstance(ann, dict) and _is_id(ann.get("id")) else f"annotations[{i}]"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id) or image_id not in image_ids:
            orphans.append(f"{where} (image_id {image_id!r})")
            continue
        crowd = bool(ann.get("iscrowd", 0))
        grouped.setdefault(image_id, []).append(Annotation(where, ann.get("category_id"), ann.get("bbox"), crowd))
    if orphans:
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise DataError(
            f"{path}: {len(orphans)} annotation(s) refer to no image listed in 'images': "
            f"{', '.join(orphans[:5])}{more}: add the images to 'images' or remove the annotations"
        )
    return grouped


def parse_coco(path: Path, param: str = "annotations") -> CocoFile:
    """Read and index one COCO instances file (no image is opened)."""
    data = _read_json(path, param)
    categories = _categories(path, data["categories"])
    ids, names = _images(path, data["images"])
    grouped = _annotations(path, data.get("annotations", []), set(ids))
    return CocoFile(path, categories, ids, names, grouped)


# ----------------------------------------------------------------------------
# Samples (per-annotation problems: DataError when the image is read)
# ----------------------------------------------------------------------------


def _bbox(ann: Annotation) -> tuple[list[float] | None, str | None]:
    """The annotation's [x, y, w, h] as floats, or why it cannot be used."""
    bbox = ann.bbox
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None, f"'bbox' is {bbox!r}; it must be [x, y, width, height] in pixels"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox):
        return None, f"'bbox' {bbox!r} holds a value that is not a number"
    try:
        values = [float(v) for v in bbox]
    except OverflowError:
        return None, f"'bbox' {bbox!r:.200} holds a number too large for a float"
    if not all(math.isfinite(v) for v in values):
        return None, f"'bbox' {fmt_box(values)} holds a NaN or infinite value"
    if values[2] <= 0 or values[3] <= 0:
        return None, (
            f"'bbox' {fmt_box(values)} has width {values[2]:g} and height {values[3]:g}; both must be > 0 "
            "(a COCO bbox is [x, y, width, height], not [x1, y1, x2, y2])"
        )
    return values, None


class CocoSource(DetectionSource):
    """The images of one COCO instances file."""

    fix = "Correct or remove these annotations in the JSON (a bbox is [x, y, width, height] in pixels)."

    def __init__(self, coco: CocoFile, images_dir: Path, categories: dict[int, str], crowd: str, key: dict) -> None:
        outside: dict[int, str] = {}
        paths = [
            inside(images_dir, name, f"{coco.path}: image id {coco.image_ids[i]!r}: file_name", outside, i)
            for i, name in enumerate(coco.file_names)
        ]
        super().__init__(paths, key, [coco.path])
        self.outside = outside
        self.coco = coco
        self.images_dir = images_dir
        self.categories = categories  #: the classes: category id → name (of the training file)
        self.labels = {cat_id: i for i, cat_id in enumerate(sorted(categories))}  #: category id → label
        self.crowd = crowd

    def describe(self, index: int) -> str:
        return f"{self.coco.path}: image id {self.coco.image_ids[index]!r} ({self.images[index]})"

    def missing_image_fix(self, index: int) -> str:
        return (
            f"put the file there, or point the loading stage's images folder (now {self.images_dir}) at the folder "
            f"that holds '{self.coco.file_names[index]}'"
        )

    def _category(self, ann: Annotation) -> tuple[int | None, str | None]:
        """The annotation's label, or why it has none."""
        if (
            isinstance(ann.category_id, int)
            and not isinstance(ann.category_id, bool)
            and ann.category_id in self.labels
        ):
            return self.labels[ann.category_id], None
        ids = list(self.labels)
        declared = ", ".join(f"{c} {self.categories[c]!r}" for c in ids[:10]) + (", ..." if len(ids) > 10 else "")
        return None, (
            f"category_id {ann.category_id!r} is not declared in 'categories' of {self.coco.path.name} "
            f"(declared: {declared}): declare it or correct the annotation"
        )

    def parse(self, index: int, width: int, height: int) -> Parsed:
        parsed: Parsed = []
        for ann in self.coco.annotations.get(self.coco.image_ids[index], []):
            if ann.iscrowd and self.crowd == "drop":
                continue
            bbox, bbox_problem = _bbox(ann)
            label, category_problem = self._category(ann)
            if bbox is None or label is None:
                problems = [p for p in (bbox_problem, category_problem) if p]
                parsed.append(f"{ann.where}: {'; '.join(problems)}")
                continue
            x, y, w, h = bbox
            box = (x, y, x + w, y + h)
            difficult = ann.iscrowd and self.crowd == "difficult"
            parsed.append(Object(box, label, difficult, f"{ann.where} (bbox {fmt_box(bbox)})"))
        return parsed


# ----------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------


class Coco(Loader):
    """The loader :func:`coco` returns."""

    tasks = ("detection",)

    def __init__(self, files: dict[str, tuple[Path, Path | None]], crowd: str) -> None:
        self.files = files  #: split → (annotations JSON, images folder or None for the JSON's folder)
        self.crowd = crowd

    def _check_categories(self, main: CocoFile, other: CocoFile) -> None:
        """Every category of a val/test file must be one of the main file's, with the same name."""
        for cat_id, name in other.categories.items():
            if main.categories.get(cat_id) != name:
                mine = f"{cat_id}: {main.categories[cat_id]!r}" if cat_id in main.categories else "no such id"
                raise DataError(
                    f"{other.path}: category {cat_id}: {name!r} differs from {main.path} ({mine}): "
                    "the classes come from the training file; declare the same categories in every file"
                )

    def load(self, task: str) -> LoadedData:
        check_task("coco", task)
        parsed = {split: parse_coco(path, _param(split)) for split, (path, _) in self.files.items()}
        main = parsed["all"] if "all" in parsed else parsed["train"]
        for other in parsed.values():
            self._check_categories(main, other)
        class_names = [main.categories[c] for c in sorted(main.categories)]
        splits: dict[str, CocoSource] = {}
        for split, (path, images) in self.files.items():
            folder = images if images is not None else path.parent
            require_dir(folder, "COCO images folder", f"set the loading stage's '{_param(split, 'images')}' parameter")
            key = {"stage": "coco", "split": split, "crowd": self.crowd, "images": str(folder)}
            splits[split] = CocoSource(parsed[split], folder, main.categories, self.crowd, key)
        image_ids = {
            path_key(path): image_id
            for source in splits.values()
            for path, image_id in zip(source.images, source.coco.image_ids, strict=True)
        }
        return LoadedData(class_names, splits, category_ids=sorted(main.categories), image_ids=image_ids)


def _param(split: str, what: str = "annotations") -> str:
    """The parameter that names ``split``'s ``what`` (``val_images``...)."""
    return what if split in ("all", "train") else f"{split}_{what}"


def _path(value: Path | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


@stage("loading", "coco")
def coco(
    annotations: Path,
    images: Path | None = None,
    val_annotations: Path | None = None,
    val_images: Path | None = None,
    test_annotations: Path | None = None,
    test_images: Path | None = None,
    crowd: CrowdMode = "difficult",
) -> Loader:
    """Object detection from COCO instances JSON files (``bbox`` [x, y, width, height] in pixels).

    - ``annotations``: the instances JSON (``images``, ``annotations``,
      ``categories``) — the training images, or all images when there are no
      ``val_``/``test_`` files (the pipeline then splits them, ``data.split``).
    - ``images``: the folder that ``file_name`` is relative to; default: the
      JSON's own folder (as in Roboflow exports). For the official layout set
      it, e.g. ``data/coco/train2017``.
    - ``val_annotations``, ``val_images``, ``test_annotations``, ``test_images``:
      the same for datasets with their own validation / test files (a split
      without its file is carved out of the training images).
    - ``crowd``: what an ``iscrowd: 1`` annotation (a box around a crowd of
      objects) becomes: ``difficult`` (default) — an object flagged
      ``difficult``, which the mAP metric ignores as COCO's evaluation ignores
      crowd regions (whether the loss trains on it is the head's choice; per
      :class:`vision_pipe.Sample` difficult objects are trained on);
      ``drop`` — left out entirely (as torchvision's and Detectron2's training
      does; a detection on it then counts as a false positive); ``object`` —
      an ordinary object.

    Classes: the categories of ``annotations``, sorted by id; label ``i`` is the
    ``i``-th smallest id (so ids 1, 3, 7 become labels 0, 1, 2), the class name
    its ``name``. Val/test files must declare the same categories. COCO results
    (``detections_coco.json`` of ``predict``, ``test --save-json``) carry the
    file's own category ids and, for its images, its image ids.

    Samples: ``image`` (H, W, 3) uint8 RGB, ``id`` (the image path),
    ``boxes`` (N, 4) float32 xyxy pixels = [x, y, x + width, y + height],
    ``labels`` (N,) int64, ``difficult`` (N,) bool (the crowd flag, see ``crowd``).
    Images without annotations are samples without objects. Boxes are passed on
    as written — never clipped; an annotation with an undeclared category, a
    malformed, empty or NaN bbox, or a box outside its image makes the image a
    bad sample whose error names the JSON, the image and the annotation id.
    """
    pairs = {"val": (val_annotations, val_images), "test": (test_annotations, test_images)}
    for split, (ann, img) in pairs.items():
        if ann is None and img is not None:
            raise StageError(f"loading 'coco': {split}_images is set but {split}_annotations is not: set both")
    extra = {s: (Path(a).expanduser(), _path(i)) for s, (a, i) in pairs.items() if a is not None}
    main = "train" if extra else "all"
    return Coco({main: (Path(annotations).expanduser(), _path(images)), **extra}, crowd)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [coco]
