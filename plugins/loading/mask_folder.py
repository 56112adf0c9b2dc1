"""The ``mask_folder`` loading stage: images with per-pixel class masks, for segmentation.

An image and its mask are matched by their path below their folder without the
suffix: ``images/x.jpg`` ↔ ``masks/x.png``, ``images/a/y.png`` ↔ ``masks/a/y.png``
(the mask's name is the image's stem + ``mask_suffix``). Layouts::

    images/x.jpg, masks/x.png                          → one "all" source (the pipeline splits it)
    images/{train,val,test}/x.jpg, masks/{train,val,test}/x.png
                                                       → the folders are the splits (val, test optional)
    split_files: {train: train.txt, test: val.txt}     → one split per list of names (Pascal VOC's
                                                         ImageSets/Segmentation/*.txt: one stem a line)

Masks (read with Pillow; lossless formats only — JPEG noise changes class ids):

- single-channel 8- or 16-bit images: the pixel value is the class id;
- palette images (PNG mode "P", as Pascal VOC's ``SegmentationClass``): the palette index is
  the class id; the palette's colours become the class colours;
- 3- or 4-channel images whose R, G and B are equal everywhere: read as single-channel
  (alpha is ignored); any other RGB mask is an error, unless ``rgb_masks: true`` maps the
  class colours given in ``classes`` to ids.

``ignore_value`` pixels (255 by default, VOC's object borders) become 255, the
pipeline's ignore value. Only the file listing is kept in memory; images and
masks are decoded when indexed, and a problem with one sample (an image without
a mask, an RGB or unreadable mask) is a :class:`DataError` naming the files,
raised then, so that the pre-flight check can stop or skip it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from vision_pipe import (
    IMAGE_EXTENSION_LIST,
    RGB,
    SPLITS,
    ClassSpec,
    DataError,
    LoadedData,
    Loader,
    Sample,
    SampleSource,
    StageError,
    file_stamp,
    fs_key,
    hookimpl,
    is_image_file,
    list_files,
    parse_classes,
    read_class_file,
    read_image,
    require_dir,
    resolve_inside,
    stage,
    voc_palette,
)

from .mask_files import MaskReader, color_codes, palette_colors

_MAX_LISTED = 5  #: examples listed in an error message


# ----------------------------------------------------------------------------
# Indexing
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One image and where its mask should be.

    ``image`` is ``None`` when a split file names an image that does not exist
    (``origin`` is then ``"file:line"``); ``outside`` says why the line's name
    leaves the images folder, if it does.
    """

    key: str  #: path below the images folder without suffix, posix
    image: Path | None
    mask: Path
    origin: str = ""
    outside: str = ""


def _require_dir(folder: Path, param: str) -> None:
    require_dir(folder, f"{param} folder", f"check the loading stage's '{param}' parameter")


@dataclass
class FolderIndex:
    """Images of one folder by key, and the mask files of the matching masks folder."""

    images_dir: Path
    masks_dir: Path
    mask_suffix: str
    images: dict[str, Path] = field(default_factory=dict)  #: key → image file
    mask_files: set[str] = field(default_factory=set)  #: mask paths relative to masks_dir, posix

    @classmethod
    def scan(cls, images_dir: Path, masks_dir: Path, mask_suffix: str) -> FolderIndex:
        """List both folders (no decoding); DataError for a missing folder or two images with one key."""
        _require_dir(images_dir, "images")
        _require_dir(masks_dir, "masks")
        index = cls(images_dir, masks_dir, mask_suffix)
        same = images_dir.resolve() == masks_dir.resolve()
        for path in list_files(images_dir):
            if not is_image_file(path) or (same and path.name.endswith(mask_suffix)):
                continue
            key = path.relative_to(images_dir).with_suffix("").as_posix()
            if key in index.images:
                raise DataError(
                    f"images {index.images[key]} and {path} would share the mask {masks_dir / (key + mask_suffix)}: "
                    "rename or remove one of them"
                )
            index.images[key] = path
        index.mask_files = {p.relative_to(masks_dir).as_posix() for p in list_files(masks_dir)}
        return index

    def mask_of(self, key: str) -> Path:
        return self.masks_dir / (key + self.mask_suffix)

    def has_mask(self, key: str) -> bool:
        return key + self.mask_suffix in self.mask_files

    def pairs(self) -> list[Pair]:
        """Every image with its mask path, sorted by key; DataError when there are no images or no masks match."""
        if not self.images:
            raise DataError(f"images folder {self.images_dir} contains no images ({IMAGE_EXTENSION_LIST})")
        if not any(self.has_mask(k) for k in self.images):
            key = next(iter(sorted(self.images)))
            seen = ", ".join(sorted(self.mask_files)[:_MAX_LISTED]) or "nothing"
            raise DataError(
                f"no image in {self.images_dir} has a mask in {self.masks_dir}: image {self.images[key]} expects "
                f"{self.mask_of(key)}, but the masks folder holds {seen}; masks are named <image stem>"
                f"{self.mask_suffix} (set mask_suffix if yours end differently, e.g. '_mask.png')"
            )
        return [Pair(k, self.images[k], self.mask_of(k)) for k in sorted(self.images)]

    def pairs_from_list(self, list_file: Path) -> list[Pair]:
        """The images a split file names (one key a line; '#' comments and blank lines skipped)."""
        if not list_file.is_file():
            raise DataError(f"split file {list_file} does not exist: check the loading stage's 'split_files'")
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read split file {list_file}: {exc}") from exc
        pairs = []
        for number, line in enumerate(lines, start=1):
            key = line.split("#", 1)[0].strip()
            if not key:
                continue
            if key not in self.images and is_image_file(Path(key)):
                key = Path(key).with_suffix("").as_posix()  # the line gave the file name
            origin = f"{list_file}:{number}"
            try:
                resolve_inside(self.images_dir, key, f"{origin}: {key!r}")
                resolve_inside(self.masks_dir, key + self.mask_suffix, f"{origin}: {key!r}")
            except DataError as exc:
                pairs.append(Pair(key, None, self.masks_dir, origin, outside=str(exc)))
                continue
            pairs.append(Pair(key, self.images.get(key), self.mask_of(key), origin))
        if not pairs:
            raise DataError(f"split file {list_file} names no images (one image name without suffix a line)")
        return pairs


# ----------------------------------------------------------------------------
# Source and loader
# ----------------------------------------------------------------------------


class MaskFolderSource(SampleSource):
    """Image/mask pairs; both are decoded when indexed."""

    def __init__(self, pairs: list[Pair], reader: MaskReader, class_names: Sequence[str]) -> None:
        self.pairs = pairs
        self.reader = reader
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        """``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) int64 (255 = ignore), ``id`` (the image path)."""
        pair = self.pairs[index]
        if pair.outside:
            raise DataError(pair.outside)
        if pair.image is None:
            raise DataError(
                f"{pair.origin}: names {pair.key!r}, but there is no image {pair.key}.<{IMAGE_EXTENSION_LIST}> in the "
                "images folder: add the image or remove the line"
            )
        if not pair.mask.is_file():
            raise DataError(
                f"image {pair.image} has no mask: expected {pair.mask}; add the mask, remove the image, "
                "or set data.on_bad_sample: skip to leave such images out"
            )
        return {"image": read_image(pair.image), "mask": self.reader.read(pair.mask), "id": str(pair.image)}

    def fingerprint(self) -> str:
        params = {
            "stage": "mask_folder",
            "classes": self.class_names,
            "ignore_value": self.reader.ignore_value,
            "colors": None if self.reader.colors is None else self.reader.colors.tolist(),
            "color_ids": None if self.reader.color_ids is None else self.reader.color_ids.tolist(),
        }
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
        for pair in self.pairs:
            # names are hashed as their bytes on disk: they need not be valid UTF-8
            digest.update(b"\n" + fs_key(pair.key) + f"\t{file_stamp(pair.image)}\t{file_stamp(pair.mask)}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class MaskFolderConfig:
    """The validated parameters of :func:`mask_folder` (see there)."""

    images: Path
    masks: Path
    classes: Path | tuple[str, ...] | None
    num_classes: int | None
    ignore_value: int
    mask_suffix: str
    split_files: dict[str, Path] | None
    rgb_masks: bool
    ignore_color: RGB | None


class MaskFolder(Loader):
    """The loader :func:`mask_folder` returns."""

    tasks = ("segmentation",)

    def __init__(self, cfg: MaskFolderConfig) -> None:
        self.cfg = cfg

    def _indexes(self) -> dict[str, FolderIndex]:
        """One folder index per split folder (``train``, ...), or ``{"all": ...}``."""
        cfg = self.cfg
        if cfg.split_files is None and (cfg.images / "train").is_dir():
            _require_dir(cfg.masks, "masks")
            others = sorted(p.name for p in cfg.images.iterdir() if p.name not in SPLITS and not p.name.startswith("."))
            if others:
                raise DataError(
                    f"images folder {cfg.images} has split folders (train/) and other entries "
                    f"({', '.join(others[:_MAX_LISTED])}): move those into train/, val/ or test/"
                )
            indexes = {}
            for split in SPLITS:
                if (cfg.images / split).is_dir():
                    if not (cfg.masks / split).is_dir():
                        raise DataError(
                            f"images folder {cfg.images / split} has no masks folder {cfg.masks / split}: "
                            "the masks folder needs the same split folders as the images folder"
                        )
                    indexes[split] = FolderIndex.scan(cfg.images / split, cfg.masks / split, cfg.mask_suffix)
            return indexes
        return {"all": FolderIndex.scan(cfg.images, cfg.masks, cfg.mask_suffix)}

    def _pairs(self, indexes: dict[str, FolderIndex]) -> dict[str, list[Pair]]:
        if self.cfg.split_files is None:
            return {split: index.pairs() for split, index in indexes.items()}
        index = indexes["all"]
        index.pairs()  # the whole-folder checks: there are images, and masks match them
        pairs = {s: index.pairs_from_list(f) for s, f in self.cfg.split_files.items()}
        seen: dict[str, str] = {}
        for split, items in pairs.items():
            for pair in items:
                if pair.key in seen and seen[pair.key] != split:
                    raise DataError(
                        f"{pair.origin}: {pair.key!r} is in split '{split}' and also in split '{seen[pair.key]}' "
                        f"({self.cfg.split_files[seen[pair.key]]}): an image belongs to one split only"
                    )
                seen[pair.key] = split
        return pairs

    def _classes(self, palette: list[RGB] | None, first_mask: Path | None) -> tuple[list[str], list[RGB]]:
        """Class names and a colour per class: given colours, else the palette's, else VOC's colour map."""
        cfg = self.cfg
        if isinstance(cfg.classes, Path):
            spec = read_class_file(cfg.classes)
        elif cfg.classes is not None:
            spec = parse_classes(list(cfg.classes), "'classes'")
        elif cfg.num_classes is not None:
            spec = ClassSpec([f"class_{i}" for i in range(cfg.num_classes)], [None] * cfg.num_classes)
        elif palette is not None and len(palette) <= cfg.ignore_value:
            spec = ClassSpec([f"class_{i}" for i in range(len(palette))], [None] * len(palette))
        else:
            why = (
                f"its palette has {len(palette)} colours, more than the classes before ignore_value {cfg.ignore_value}"
                if palette is not None
                else "it holds class ids, not names"
            )
            raise DataError(
                f"the classes are unknown: set 'classes' (a list of names, or a YAML/JSON file) or 'num_classes' "
                f"(e.g. 21 for Pascal VOC); they cannot be read from the masks ({first_mask}: {why})"
            )
        n = len(spec.names)
        if cfg.num_classes is not None and cfg.num_classes != n:
            raise DataError(f"num_classes is {cfg.num_classes} but 'classes' gives {n}: {spec.names}")
        if cfg.ignore_value < n:
            raise DataError(
                f"ignore_value {cfg.ignore_value} is the id of class {spec.names[cfg.ignore_value]!r}: "
                f"choose an ignore_value ≥ {n} (the number of classes)"
            )
        fallback = voc_palette(n)
        colors = [
            given or (palette[i] if palette is not None and i < len(palette) else fallback[i])
            for i, given in enumerate(spec.colors)
        ]
        if cfg.rgb_masks and any(c is None for c in spec.colors):
            missing = [name for name, c in zip(spec.names, spec.colors, strict=True) if c is None]
            raise DataError(
                f"rgb_masks needs a colour for every class, but 'classes' gives none for {missing}: use a classes "
                "file with entries like {0: {name: background, color: [0, 0, 0]}}"
            )
        return spec.names, colors

    def _reader(self, colors: list[RGB]) -> MaskReader:
        cfg = self.cfg
        if not cfg.rgb_masks:
            return MaskReader(cfg.ignore_value)
        table = {c: i for i, c in enumerate(colors)}
        if len(table) < len(colors):
            raise DataError(f"rgb_masks needs a different colour for every class; the colours are {colors}")
        if cfg.ignore_color is not None:
            if cfg.ignore_color in table:
                raise DataError(
                    f"ignore_color {cfg.ignore_color} is also the colour of class {table[cfg.ignore_color]}"
                )
            table[cfg.ignore_color] = cfg.ignore_value
        codes = color_codes(np.array(list(table), np.uint8).reshape(-1, 3))
        order = np.argsort(codes)
        return MaskReader(cfg.ignore_value, codes[order], np.array(list(table.values()), np.int64)[order])

    def load(self, task: str) -> LoadedData:
        if task not in self.tasks:
            raise StageError(f"loading 'mask_folder': unknown task {task!r}; it serves {', '.join(self.tasks)}")
        pairs = self._pairs(self._indexes())
        first_mask = next((p.mask for items in pairs.values() for p in items if p.mask.is_file()), None)
        palette = palette_colors(first_mask) if first_mask is not None else None
        names, colors = self._classes(palette, first_mask)
        reader = self._reader(colors)
        splits: dict[str, SampleSource] = {s: MaskFolderSource(items, reader, names) for s, items in pairs.items()}
        return LoadedData(class_names=names, splits=splits, class_colors=colors)


def _classes_param(classes: Path | list[str] | None) -> Path | tuple[str, ...] | None:
    if isinstance(classes, (str, Path)):
        return Path(classes).expanduser()
    return tuple(classes) if classes is not None else None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StageError(f"loading 'mask_folder': {message}")


@stage("loading", "mask_folder")
def mask_folder(
    images: Path,
    masks: Path,
    classes: Path | Annotated[list[str], Field(min_length=1)] | None = None,
    num_classes: Annotated[int, Field(ge=1)] | None = None,
    ignore_value: Annotated[int, Field(ge=0, le=65535)] = 255,
    mask_suffix: Annotated[str, Field(min_length=1)] = ".png",
    split_files: dict[Literal["train", "val", "test"], Path] | None = None,
    rgb_masks: bool = False,
    ignore_color: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)] | None = None,
) -> Loader:
    """Images and per-pixel class masks in two folders, for segmentation.

    - ``images``: the images folder (.jpg, .jpeg, .png, .bmp, any case; searched
      recursively); with ``train/`` (and optionally ``val/``, ``test/``) sub-folders,
      those are the splits and ``masks`` must have the same sub-folders.
    - ``masks``: the masks folder; the mask of ``images/<path>/x.<ext>`` is
      ``masks/<path>/x<mask_suffix>``. It may be the images folder itself when
      ``mask_suffix`` is more than an extension (e.g. ``_mask.png``).
    - ``classes``: the class names by id: a list, or a YAML/JSON file holding a list
      or a mapping ``id: name`` / ``id: {name: ..., color: [r, g, b]}`` (ids 0..n-1).
      When omitted: ``num_classes`` names them ``class_<i>``; else palette masks with
      fewer palette colours than ``ignore_value`` give one class per colour; else it is
      an error asking for ``classes``.
    - ``num_classes``: the number of classes (checked against ``classes`` when both are given).
    - ``ignore_value``: mask value of unlabelled pixels (not a class id); it becomes 255,
      the pipeline's ignore value. When it is not 255, a mask pixel of value 255 is an error.
    - ``mask_suffix``: what replaces an image's suffix to name its mask.
    - ``split_files``: ``{split: file}`` for splits ``train`` (required), ``val``, ``test``:
      text files with one image name (path below ``images`` without suffix) a line, as
      Pascal VOC's ``ImageSets/Segmentation/*.txt``; the pipeline carves missing splits out
      of train (``data.split``). Without it, every image with its mask is used.
    - ``rgb_masks``: masks are RGB pictures whose colours are the class colours (every class
      needs a colour in ``classes``); unknown colours are errors.
    - ``ignore_color``: with ``rgb_masks``, the [r, g, b] of unlabelled pixels.

    Class colours (for drawing predictions): from ``classes``, else the palette of the
    first palette mask, else the Pascal VOC colour map. Samples: ``image`` (H, W, 3) uint8
    RGB, ``mask`` (H, W) int64 class ids with 255 = ignore, ``id`` (the image path).
    """
    # ranges and choices are in the signature (the registry validates them); what relates two parameters:
    _check(
        Path(images).expanduser() != Path(masks).expanduser() or not mask_suffix.startswith("."),
        f"images and masks are the same folder, so mask_suffix must name masks apart from images "
        f"(e.g. '_mask.png'), got {mask_suffix!r}",
    )
    if split_files is not None:
        _check("train" in split_files, f"split_files must give a 'train' list, got {sorted(split_files)}")
    _check(ignore_color is None or rgb_masks, "ignore_color applies only with rgb_masks: true")
    cfg = MaskFolderConfig(
        images=Path(images).expanduser(),
        masks=Path(masks).expanduser(),
        classes=_classes_param(classes),
        num_classes=num_classes,
        ignore_value=int(ignore_value),
        mask_suffix=mask_suffix,
        split_files={s: Path(f).expanduser() for s, f in split_files.items()} if split_files else None,
        rgb_masks=bool(rgb_masks),
        ignore_color=(int(ignore_color[0]), int(ignore_color[1]), int(ignore_color[2])) if ignore_color else None,
    )
    return MaskFolder(cfg)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [mask_folder]
