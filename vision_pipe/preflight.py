"""Pre-flight: read every sample once before training and check it.

Bad data should stop a run before any training, with a message naming the
file and the fix — not as a NaN loss or a CUDA assert an hour later. The pass
reads every sample of every split (in DataLoader workers), catches the
:class:`~vision_pipe.errors.DataError` a source raises for a bad sample, and
checks what every sample must satisfy (the task's
:meth:`~vision_pipe.tasks.Task.check_sample`, i.e. :mod:`vision_pipe.samples`). Its outcome is
cached on disk, keyed by the data's fingerprint, so an unchanged dataset is
read only once.

``data.on_bad_sample: error`` (default) stops with every problem listed;
``skip`` leaves the bad samples out (:func:`apply_report`) and the run's
``preflight.json`` lists them. The pass also counts, per split, the good
samples that hold each class: a class left with no sample in a split
(:meth:`PreflightReport.empty_classes`, e.g. after skipping its only bad
samples) is a warning and ``data/empty_classes`` in the run's ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from vision_pipe.cache import cache_dir
from vision_pipe.data import SubsetSource, _worker_init
from vision_pipe.errors import DataError
from vision_pipe.io import atomic_write_text, max_image_pixels
from vision_pipe.samples import sample_classes
from vision_pipe.stages import SampleSource
from vision_pipe.tasks import Task, get_task

#: How many problems an error message lists before "... and N more".
SHOWN = 10
_VERSION = 3  # bump when the checks change, to invalidate cached reports


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
    #: per split, how many good samples hold each class id (index = class id)
    class_counts: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "bad": [asdict(b) for b in self.bad],
            "seconds": round(self.seconds, 3),
            "class_counts": self.class_counts,
        }

    def empty_classes(self, class_names: Sequence[str]) -> dict[str, list[str]]:
        """Per split, the classes no good sample of that split holds (splits without any are left out)."""
        out: dict[str, list[str]] = {}
        for split, counts in self.class_counts.items():
            empty = [name for i, name in enumerate(class_names) if i >= len(counts) or counts[i] == 0]
            if empty:
                out[split] = empty
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreflightReport:
        return cls(
            checked={k: int(v) for k, v in data["checked"].items()},
            bad=[BadSample(**b) for b in data["bad"]],
            seconds=float(data.get("seconds", 0.0)),
            cached=True,
            class_counts={k: [int(n) for n in v] for k, v in data.get("class_counts", {}).items()},
        )


# ----------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------


class _Checked(Dataset):
    """Item ``i``: ``(None, class ids it holds)`` if sample ``i`` is good, else ``(the reason it is bad, [])``."""

    def __init__(self, source: SampleSource, task: Task, num_classes: int) -> None:
        self.source = source
        self.task = task
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str | None, list[int]]:
        try:
            sample = self.source[index]
            self.task.check_sample(sample, self.num_classes)
        except DataError as exc:
            return str(exc), []
        return None, sample_classes(sample)


def _key(splits: dict[str, SampleSource], task: str, num_classes: int) -> str:
    payload = json.dumps(
        {
            "v": _VERSION,
            "task": task,
            "classes": num_classes,
            "max_image_pixels": max_image_pixels(),  # a lower cap may turn a good sample bad
            "splits": {k: s.fingerprint() for k, s in splits.items()},
        },
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
            _Checked(source, get_task(task), num_classes),
            batch_size=32,
            num_workers=num_workers,
            collate_fn=list,
            worker_init_fn=_worker_init if num_workers else None,
        )
        index = 0
        counts = [0] * num_classes
        for items in loader:
            for reason, classes in items:
                if reason is not None:
                    report.bad.append(BadSample(split, index, reason))
                for c in classes:
                    counts[c] += 1
                index += 1
        report.checked[split] = index
        report.class_counts[split] = counts
    report.seconds = time.perf_counter() - start
    if use_cache:
        atomic_write_text(path, json.dumps(report.to_dict()))
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


def empty_class_warning(split: str, names: Sequence[str]) -> str:
    """The warning for the classes ``names`` that no sample of ``split`` holds."""
    shown = ", ".join(repr(n) for n in names[:SHOWN]) + (
        f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    )
    consequence = {
        "train": "the model never sees them in training",
        "val": "their validation metrics are undefined (null in metrics.json)",
        "test": "their test metrics are undefined (null in metrics.json)",
    }.get(split, "their metrics on it are undefined")
    return f"{len(names)} class(es) have no sample in the {split} split: {shown}; {consequence}"


def _first(report: PreflightReport, split: str) -> str:
    return next(b.reason for b in report.bad if b.split == split)


def _subset(source: SampleSource, kept: Sequence[int]) -> SampleSource:
    """A subset whose indices still refer to the loader's own samples (for splits.json)."""
    if isinstance(source, SubsetSource):
        return SubsetSource(source.source, source.indices[np.asarray(kept, dtype=np.int64)])
    return SubsetSource(source, kept)
