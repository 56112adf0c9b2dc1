"""Pre-flight: read every sample once before training and check it.

Bad data should stop a run before any training, with a message naming the
file and the fix — not as a NaN loss or a CUDA assert an hour later. The pass
reads every sample of every split (in DataLoader workers), catches the
:class:`~vision_pipe.errors.DataError` a source raises for a bad sample, and
checks what every sample must satisfy (:func:`check_sample`). Its outcome is
cached on disk, keyed by the data's fingerprint, so an unchanged dataset is
read only once.

``data.on_bad_sample: error`` (default) stops with every problem listed;
``skip`` leaves the bad samples out (:func:`apply_report`) and the run's
``preflight.json`` lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from vision_pipe.cache import cache_dir
from vision_pipe.data import SubsetSource, _worker_init, check_image
from vision_pipe.errors import DataError
from vision_pipe.stages import Sample, SampleSource

#: Pixels a box may reach beyond the image border (it is then clipped): annotation
#: tools often round a box touching the border to one pixel past it.
BOX_TOLERANCE = 1.0
#: The value of a mask pixel that is ignored by loss and metrics.
IGNORE = 255
#: How many problems an error message lists before "... and N more".
SHOWN = 10
_VERSION = 1  # bump when the checks change, to invalidate cached reports


@dataclass
class BadSample:
    """One sample that failed the check: its split, index in that split, and why."""

    split: str
    index: int
    reason: str


@dataclass
class PreflightReport:
    """What the pre-flight pass found: samples checked per split and the bad ones."""

    checked: dict[str, int]
    bad: list[BadSample] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "bad": [asdict(b) for b in self.bad],
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreflightReport:
        return cls(
            checked={k: int(v) for k, v in data["checked"].items()},
            bad=[BadSample(**b) for b in data["bad"]],
            seconds=float(data.get("seconds", 0.0)),
            cached=True,
        )


# ----------------------------------------------------------------------------
# Checks of one sample
# ----------------------------------------------------------------------------


def check_sample(sample: Sample, task: str, num_classes: int) -> None:
    """Raise :class:`DataError` (naming the sample and the fix) if ``sample`` breaks the contract.

    - every task: ``image`` (H, W, 3) uint8;
    - classification: ``label`` an int in [0, num_classes);
    - segmentation: ``mask`` (H, W) integer class ids in [0, num_classes) or 255 (ignore);
    - detection: ``boxes`` (N, 4) finite xyxy pixels with x1 < x2, y1 < y2 inside the
      image (:data:`BOX_TOLERANCE` px allowed), ``labels`` (N,) in [0, num_classes).
    """
    sample_id = str(sample.get("id", "?"))
    image = check_image(sample.get("image"), sample_id)
    height, width = image.shape[:2]
    if task == "classification":
        _check_label(sample.get("label"), num_classes, sample_id)
    elif task == "segmentation":
        _check_mask(sample.get("mask"), (height, width), num_classes, sample_id)
    elif task == "detection":
        _check_boxes(sample, (height, width), num_classes, sample_id)


def _check_label(label: Any, num_classes: int, sample_id: str) -> None:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{sample_id}: the label is {label!r}; expected an int class index")
    if not 0 <= int(label) < num_classes:
        raise DataError(f"{sample_id}: label {int(label)} is not a class index (0..{num_classes - 1})")


def _check_mask(mask: Any, size: tuple[int, int], num_classes: int, sample_id: str) -> None:
    if mask is None:
        raise DataError(f"{sample_id}: the sample has no mask; a segmentation loader must give every image its mask")
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise DataError(
            f"{sample_id}: the mask has shape {shape}; expected (H, W) class ids. An RGB colour mask must be "
            "converted to class ids (or saved as a palette PNG, whose indices are the class ids)"
        )
    if tuple(mask.shape) != tuple(size):
        raise DataError(
            f"{sample_id}: the mask is {mask.shape[0]}x{mask.shape[1]} but its image is {size[0]}x{size[1]} "
            "(height x width); a mask must have its image's size — was it resized or paired with the wrong image?"
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{sample_id}: the mask has dtype {mask.dtype}; expected integer class ids")
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:SHOWN])
        hint = (
            f" A binary mask with its foreground saved as {int(bad[0])}? Store class ids (1, not {int(bad[0])})."
            if bad.size == 1 and set(values.tolist()) <= {0, int(bad[0]), IGNORE}
            else ""
        )
        raise DataError(
            f"{sample_id}: mask values {shown} are not class ids: the pipeline has {num_classes} classes "
            f"(0..{num_classes - 1}) and {IGNORE} means ignore. Declare the missing classes or fix the mask.{hint}"
        )


def _check_boxes(sample: Sample, size: tuple[int, int], num_classes: int, sample_id: str) -> None:
    try:
        boxes = np.asarray(sample.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(sample.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{sample_id}: boxes must be (N, 4) numbers and labels (N,) ints ({exc})") from exc
    if len(boxes) != len(labels):
        raise DataError(f"{sample_id}: {len(boxes)} boxes but {len(labels)} labels; give one label per box")
    height, width = size
    for i, (box, label) in enumerate(zip(boxes, labels)):
        where = f"{sample_id}: box {i} [x1, y1, x2, y2] = [{', '.join(f'{v:g}' for v in box)}]"
        if not np.isfinite(box).all():
            raise DataError(f"{where} has NaN or infinite coordinates; fix or remove the annotation")
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"{where} is empty (x2 <= x1 or y2 <= y1). Boxes are corners in pixels; a box given as "
                "[x, y, width, height] must be converted (x2 = x + width, y2 = y + height)"
            )
        tol = BOX_TOLERANCE
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise DataError(
                f"{where} lies outside the {width}x{height} (width x height) image; boxes must satisfy "
                f"0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height} — are the coordinates normalized, "
                "or for a differently sized image?"
            )
        if not 0 <= label < num_classes:
            raise DataError(f"{where} has label {label}, not a class index (0..{num_classes - 1})")


# ----------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------


class _Checked(Dataset):
    """Item ``i``: ``None`` if sample ``i`` is good, else the reason it is bad."""

    def __init__(self, source: SampleSource, task: str, num_classes: int) -> None:
        self.source = source
        self.task = task
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> str | None:
        try:
            check_sample(self.source[index], self.task, self.num_classes)
        except DataError as exc:
            return str(exc)
        return None


def _key(splits: dict[str, SampleSource], task: str, num_classes: int) -> str:
    payload = json.dumps(
        {"v": _VERSION, "task": task, "classes": num_classes, "splits": {k: s.fingerprint() for k, s in splits.items()}},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_path(splits: dict[str, SampleSource], task: str, num_classes: int) -> Path:
    """Where the report for this data (its fingerprints), task and class count is cached."""
    return cache_dir() / "preflight" / f"{_key(splits, task, num_classes)}.json"


def run_preflight(
    splits: dict[str, SampleSource], task: str, num_classes: int, num_workers: int, *, use_cache: bool = True
) -> PreflightReport:
    """Read and check every sample of every split; a cached report is reused for unchanged data."""
    path = cache_path(splits, task, num_classes)
    if use_cache and path.exists():
        try:
            return PreflightReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):
            pass  # a broken cache file is recomputed and replaced
    start = time.perf_counter()
    report = PreflightReport(checked={})
    for split, source in splits.items():
        loader = DataLoader(
            _Checked(source, task, num_classes),
            batch_size=32,
            num_workers=num_workers,
            collate_fn=list,
            worker_init_fn=_worker_init if num_workers else None,
        )
        index = 0
        for reasons in loader:
            for reason in reasons:
                if reason is not None:
                    report.bad.append(BadSample(split, index, reason))
                index += 1
        report.checked[split] = index
    report.seconds = time.perf_counter() - start
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(report.to_dict()), encoding="utf-8")
        os.replace(tmp, path)
    return report


def apply_report(
    splits: dict[str, SampleSource], report: PreflightReport, on_bad_sample: str
) -> dict[str, SampleSource]:
    """Raise for bad samples (``on_bad_sample="error"``) or return ``splits`` without them (``"skip"``)."""
    if not report.bad:
        return splits
    if on_bad_sample != "skip":
        lines = [f"  - [{b.split}] {b.reason}" for b in report.bad[:SHOWN]]
        if len(report.bad) > SHOWN:
            lines.append(f"  ... and {len(report.bad) - SHOWN} more")
        raise DataError(
            f"the pre-flight check found {len(report.bad)} bad sample(s) of {sum(report.checked.values())}:\n"
            + "\n".join(lines)
            + "\nFix them, or set data.on_bad_sample: skip to leave them out (they are then listed in the run's "
            "preflight.json)."
        )
    out = dict(splits)
    for split, source in splits.items():
        drop = {b.index for b in report.bad if b.split == split}
        if not drop:
            continue
        kept = [i for i in range(len(source)) if i not in drop]
        if not kept:
            raise DataError(f"every sample of the {split} split is bad; first problem: {_first(report, split)}")
        out[split] = _subset(source, kept)
    return out


def _first(report: PreflightReport, split: str) -> str:
    return next(b.reason for b in report.bad if b.split == split)


def _subset(source: SampleSource, kept: Sequence[int]) -> SampleSource:
    """A subset whose indices still refer to the loader's own samples (for splits.json)."""
    if isinstance(source, SubsetSource):
        return SubsetSource(source.source, source.indices[np.asarray(kept, dtype=np.int64)])
    return SubsetSource(source, kept)
