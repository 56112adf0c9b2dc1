"""The ``synthetic_shapes`` loading stage: coloured shapes on a noisy background.

Every sample is drawn on the fly from ``(seed, index)`` alone, so any sample
can be read in any order, in any DataLoader worker, and is always the same.
One generator serves classification (one shape per image), segmentation and
detection (``min_objects..max_objects`` shapes per image; the same scene for
both tasks at the same index), and reconstruction (the classification images,
without their labels).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, get_args

import cv2
import numpy as np
from pydantic import Field

from vision_pipe import LoadedData, Loader, Sample, SampleSource, StageError, box_iou, hookimpl, stage

#: Bumped whenever the drawing changes, so cached fingerprints change too.
GENERATOR_VERSION = 1
#: Shapes as polygons of circumradius 1 (x, y), drawn rotated and scaled.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[np.cos(a), np.sin(a)] for a in np.pi / 4 + np.arange(4) * np.pi / 2]),
    "triangle": np.array([[np.cos(a), np.sin(a)] for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3]),
    "star": np.array(
        [
            [r * np.cos(a), r * np.sin(a)]
            for r, a in zip([1.0, 0.45] * 5, -np.pi / 2 + np.arange(10) * np.pi / 5, strict=True)
        ]
    ),
}
Shape = Literal["circle", "square", "triangle", "star", "ellipse"]
SHAPES: tuple[str, ...] = get_args(Shape)
DEFAULT_SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle")
ELLIPSE_RATIO = 0.5  #: minor / major axis of an ``ellipse``
MIN_CONTRAST = 64.0  #: least mean |shape colour - background| over RGB, grey levels
MAX_BOX_IOU = 0.3  #: a new object's box may overlap an earlier one's at most this much
MIN_VISIBLE = 0.7  #: every object keeps at least this fraction of its pixels visible
PLACEMENT_TRIES = 10  #: placements tried per object before it is left out
_SHIFT = 4  #: OpenCV sub-pixel bits for drawing


@dataclass(frozen=True)
class ShapesConfig:
    """The validated parameters of :func:`synthetic_shapes` (see there)."""

    num_images: int
    size: int
    shapes: tuple[str, ...]
    min_size: float
    max_size: float
    min_objects: int
    max_objects: int
    noise: float
    seed: int
    empty_fraction: float


def _draw_mask(cfg: ShapesConfig, shape: str, rng: np.random.Generator) -> np.ndarray:
    """A random placement of ``shape``: (size, size) uint8, 1 on its pixels."""
    n = cfg.size
    u_size, u_x, u_y, u_angle = rng.random(4)
    radius = min((cfg.min_size + u_size * (cfg.max_size - cfg.min_size)) * n / 2, (n - 1) / 2)
    cx, cy = radius + (n - 1 - 2 * radius) * np.array([u_x, u_y])
    angle = 2 * np.pi * u_angle
    scale = 1 << _SHIFT
    mask = np.zeros((n, n), np.uint8)
    centre = (round(cx * scale), round(cy * scale))
    if shape == "circle":
        cv2.circle(mask, centre, round(radius * scale), 1, -1, cv2.LINE_8, _SHIFT)
    elif shape == "ellipse":
        axes = (round(radius * scale), round(radius * ELLIPSE_RATIO * scale))
        cv2.ellipse(mask, centre, axes, np.degrees(angle), 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    else:
        c, s = np.cos(angle), np.sin(angle)
        points = _POLYGONS[shape] @ np.array([[c, s], [-s, c]]) * radius + (cx, cy)
        cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    return mask


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random RGB colour (3,) whose mean abs difference to ``background`` is ≥ MIN_CONTRAST."""
    candidates = rng.integers(0, 256, (8, 3))
    ok = np.flatnonzero(np.abs(candidates - background).mean(axis=1) >= MIN_CONTRAST)
    if len(ok):
        return candidates[ok[0]]
    return np.where(background < 128, 255, 0)  # the farthest corner of the RGB cube


@dataclass
class Scene:
    """One generated image and its objects (in drawing order; later ones on top)."""

    image: np.ndarray  #: (H, W, 3) uint8 RGB
    owner: np.ndarray  #: (H, W) int16, index of the object each pixel shows, -1 for background
    classes: list[int]  #: class index (into ``shapes``) of each object
    boxes: list[tuple[int, int, int, int]]  #: tight xyxy box of each whole shape, x2/y2 = last pixel + 1


def render(cfg: ShapesConfig, index: int, num_objects: int | None = None) -> Scene:
    """Draw scene ``index`` from ``(cfg.seed, index)`` alone.

    ``num_objects=None`` draws the multi-object scene of segmentation and
    detection; ``1`` the single-shape image of classification. Objects that
    find no room (box IoU ≤ MAX_BOX_IOU with earlier ones, every object keeps
    MIN_VISIBLE of its pixels) within PLACEMENT_TRIES are left out.
    """
    rng = np.random.default_rng([cfg.seed, index])
    palette = [rng.integers(0, 256, 3)]  # background, then one colour per object
    if num_objects is None:
        empty = rng.random() < cfg.empty_fraction
        num_objects = 0 if empty else int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    owner = np.full((cfg.size, cfg.size), -1, np.int16)
    scene = Scene(np.empty(0), owner, [], [])
    areas: list[int] = []
    visible = np.zeros(0, np.int64)  # pixels of each object not covered by later ones
    for _ in range(num_objects):
        cls = int(rng.integers(len(cfg.shapes)))
        for _ in range(PLACEMENT_TRIES):
            mask = _draw_mask(cfg, cfg.shapes[cls], rng).view(bool)
            x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
            box = (x, y, x + w, y + h)
            if w == 0 or any(box_iou(box, other) > MAX_BOX_IOU for other in scene.boxes):
                continue
            lost = np.bincount(owner[mask] + 1, minlength=len(areas) + 1)[1:]
            if np.all(visible - lost >= MIN_VISIBLE * np.array(areas)):
                break
        else:
            continue  # no room for this object: leave it out
        owner[mask] = len(areas)
        areas.append(int(np.count_nonzero(mask)))
        visible = np.append(visible - lost, areas[-1])
        scene.classes.append(cls)
        scene.boxes.append(box)
        palette.append(_contrasting_colour(rng, palette[0]))
    image = np.array(palette, np.float32)[owner + 1]  # owner -1 → background
    if cfg.noise > 0:
        noise = rng.standard_normal(image.shape, np.float32)
        noise *= cfg.noise
        image += noise
        np.rint(image, out=image)
    scene.image = np.clip(image, 0, 255, out=image).astype(np.uint8)
    return scene


class ShapesSource(SampleSource):
    """``num_images`` synthetic samples for one task, drawn when indexed."""

    def __init__(self, cfg: ShapesConfig, task: str) -> None:
        self.cfg = cfg
        self.task = task

    def __len__(self) -> int:
        return self.cfg.num_images

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"synthetic_shapes: index {index} out of range for {len(self)} images")
        i %= len(self)
        single = self.task in ("classification", "reconstruction")  # one shape per image
        scene = render(self.cfg, i, num_objects=1 if single else None)
        sample: Sample = {"id": f"synthetic_shapes:{i}", "image": scene.image}
        if self.task == "reconstruction":
            return sample  # an image and nothing else
        if single:
            sample["label"] = scene.classes[0]
        elif self.task == "segmentation":
            class_ids = np.array([0, *(c + 1 for c in scene.classes)], np.int64)
            sample["mask"] = class_ids[scene.owner + 1]
        else:
            sample["boxes"] = np.array(scene.boxes, np.float32).reshape(-1, 4)
            sample["labels"] = np.array(scene.classes, np.int64)
        return sample

    def fingerprint(self) -> str:
        key = {"stage": "synthetic_shapes", "version": GENERATOR_VERSION, "task": self.task, **asdict(self.cfg)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class SyntheticShapes(Loader):
    """The loader :func:`synthetic_shapes` returns."""

    tasks = ("classification", "segmentation", "detection", "reconstruction")

    def __init__(self, cfg: ShapesConfig) -> None:
        self.cfg = cfg

    def load(self, task: str) -> LoadedData:
        if task not in self.tasks:
            raise StageError(f"loading 'synthetic_shapes': unknown task {task!r}; it serves {', '.join(self.tasks)}")
        if task == "classification" and self.cfg.empty_fraction > 0:
            raise StageError(
                "loading 'synthetic_shapes': empty_fraction must be 0 for classification "
                "(every image holds exactly one shape); it applies to segmentation and detection"
            )
        names = list(self.cfg.shapes)
        class_names = ["background", *names] if task == "segmentation" else [] if task == "reconstruction" else names
        return LoadedData(class_names=class_names, splits={"all": ShapesSource(self.cfg, task)})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StageError(f"loading 'synthetic_shapes': {message}")


Fraction = Annotated[float, Field(gt=0, le=1)]
ObjectCount = Annotated[int, Field(ge=1, le=20)]


@stage("loading", "synthetic_shapes")
def synthetic_shapes(
    num_images: Annotated[int, Field(ge=1)] = 3000,
    size: Annotated[int, Field(ge=8, le=4096)] = 64,
    shapes: Annotated[list[Shape], Field(min_length=1)] = list(DEFAULT_SHAPES),  # noqa: B006 (copied, never mutated)
    min_size: Fraction = 0.25,
    max_size: Fraction = 0.6,
    min_objects: ObjectCount = 1,
    max_objects: ObjectCount = 3,
    noise: Annotated[float, Field(ge=0)] = 8.0,
    seed: Annotated[int, Field(ge=0)] = 0,
    empty_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> Loader:
    """Synthetic images of coloured shapes, for classification, segmentation, detection and reconstruction.

    - ``num_images``: number of images (≥ 1); the pipeline splits them.
    - ``size``: image side in pixels (8..4096); images are (size, size, 3) uint8 RGB.
    - ``shapes``: class names, any of circle, square, triangle, star, ellipse.
    - ``min_size``, ``max_size``: diameter of the circle a shape fits in, as a
      fraction of the image side (0 < min_size ≤ max_size ≤ 1); OpenCV also
      fills the boundary pixels, about ½ px more all round.
    - ``min_objects``, ``max_objects``: shapes per segmentation/detection image
      (1 ≤ min ≤ max ≤ 20; fewer when there is no room); classification has one.
    - ``noise``: std of the gaussian noise added to every pixel, grey levels (≥ 0).
    - ``seed``: sample ``i`` depends only on (seed, i) (seed ≥ 0).
    - ``empty_fraction``: fraction of segmentation/detection images without
      shapes (0 ≤ f < 1; must be 0 for classification).

    Targets: classification ``label`` = index in ``shapes``; segmentation
    ``mask`` with 0 = background and ``index + 1`` per shape (class names
    ``["background", *shapes]``); detection ``boxes`` = tight xyxy boxes of each
    whole shape (x2, y2 = last pixel + 1) and ``labels`` = index in ``shapes``;
    reconstruction: none (the classification images, one shape each, unlabelled).
    """
    # ranges and choices are in the signature (the registry validates them); what relates two parameters:
    _check(len(set(shapes)) == len(shapes), f"shapes lists a shape twice: {list(shapes)}")
    _check(
        min_size <= max_size,
        f"need min_size ≤ max_size (fractions of the image side), got min_size={min_size}, max_size={max_size}",
    )
    _check(
        min_objects <= max_objects,
        f"need min_objects ≤ max_objects, got min_objects={min_objects}, max_objects={max_objects}",
    )
    cfg = ShapesConfig(
        num_images=int(num_images),
        size=int(size),
        shapes=tuple(shapes),
        min_size=float(min_size),
        max_size=float(max_size),
        min_objects=int(min_objects),
        max_objects=int(max_objects),
        noise=float(noise),
        seed=int(seed),
        empty_fraction=float(empty_fraction),
    )
    return SyntheticShapes(cfg)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [synthetic_shapes]
