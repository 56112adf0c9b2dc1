"""The ``csv_list`` loading stage: classification lists in CSV files (``path,label``, GTSRB's ``GT-*.csv``).

Each split is one or more CSV files, found by a glob pattern below the dataset root::

    lists: {all: labels.csv}                              → one "all" source (the pipeline splits it)
    lists: {train: Final_Training/Images/*/GT-*.csv,      → GTSRB: one CSV per training class folder,
            test: Final_Test/Images/GT-final_test.csv}      one for the test images

A CSV's paths are relative to the CSV's own folder and must stay inside the dataset root.
The delimiter (``,``, ``;`` or tab) is sniffed from the first line unless given. A first row
naming a path column (``path``, ``filename``, ``file``, ``image``) is a header, which also names
the label column (``label``, ``classid``, ``class``, ``class_id``) and GTSRB's ROI columns
(``Roi.X1``, ``Roi.Y1``, ``Roi.X2``, ``Roi.Y2``); without one the columns are ``path,label``.

Only the rows are kept in memory; images are decoded when indexed. A bad row (a missing
column, a bad label or ROI, a path leaving the root) is a DataError of that sample naming the
CSV file and line, so the pre-flight pass lists every one (or skips them under ``on_bad_sample: skip``).
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from vision_pipe import (
    DataError,
    LoadedData,
    Loader,
    Sample,
    SampleSource,
    StageError,
    file_stamp,
    fs_key,
    hookimpl,
    read_image,
    require_dir,
    resolve_inside,
    stage,
)

PATH_COLUMNS = ("path", "filename", "file", "image")
LABEL_COLUMNS = ("label", "classid", "class", "class_id")
ROI_COLUMNS = ("roi.x1", "roi.y1", "roi.x2", "roi.y2")
DELIMITERS = (";", ",", "\t")
_INT = re.compile(r"[+-]?\d+")


@dataclass
class Row:
    """One CSV row: the image path (``None`` when the row is bad), its raw label, ROI and where it was read."""

    where: str  #: ``"<csv file>:<line>"``
    path: Path | None
    label: str
    roi: tuple[int, int, int, int] | None = None
    error: str | None = None  #: why the row is bad (raised when the sample is read)


def sniff_delimiter(line: str) -> str:
    """The delimiter of a CSV from its first line: the most frequent of ``;``, ``,`` and tab (``,`` if none)."""
    counts = [(line.count(d), d) for d in DELIMITERS]
    best = max(counts, key=lambda c: c[0])
    return best[1] if best[0] else ","


def _columns(header: list[str], csv_file: Path, crop_roi: bool) -> tuple[int, int, list[int] | None]:
    """Indices of the path, label and (for ``crop_roi``) ROI columns named by ``header``."""
    names = [h.strip().lower() for h in header]

    def find(candidates: tuple[str, ...], what: str) -> int:
        for name in candidates:
            if name in names:
                return names.index(name)
        raise DataError(
            f"{csv_file}:1: the header {header} has no {what} column: name it one of {', '.join(candidates)}"
        )

    path_col, label_col = find(PATH_COLUMNS, "path"), find(LABEL_COLUMNS, "label")
    if not crop_roi:
        return path_col, label_col, None
    missing = [c for c in ROI_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{csv_file}:1: crop_roi is true but the header has no {', '.join(missing)} column(s) "
            "(GTSRB's Roi.X1;Roi.Y1;Roi.X2;Roi.Y2): add them or set crop_roi: false"
        )
    return path_col, label_col, [names.index(c) for c in ROI_COLUMNS]


def read_rows(root: Path, csv_file: Path, delimiter: str | None, crop_roi: bool) -> list[Row]:
    """The rows of one CSV file below ``root`` (blank lines skipped); bad rows carry their ``error``."""
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the CSV list {csv_file}: {exc}") from exc
    first = text.split("\n", 1)[0]
    reader = csv.reader(text.splitlines(), delimiter=delimiter or sniff_delimiter(first))
    rows = list(reader)
    folder = csv_file.parent.relative_to(root)
    has_header = bool(rows) and any(c.strip().lower() in PATH_COLUMNS for c in rows[0])
    if has_header:
        path_col, label_col, roi_cols = _columns(rows[0], csv_file, crop_roi)
    elif crop_roi:
        raise DataError(f"{csv_file}:1: crop_roi is true but the file has no header naming the Roi.* columns")
    else:
        path_col, label_col, roi_cols = 0, 1, None
    out: list[Row] = []
    for number, cells in enumerate(rows[1:] if has_header else rows, start=2 if has_header else 1):
        if not any(c.strip() for c in cells):
            continue
        where = f"{csv_file}:{number}"
        needed = max([path_col, label_col, *(roi_cols or [])])
        if len(cells) <= needed or not cells[path_col].strip() or not cells[label_col].strip():
            out.append(Row(where, None, "", error=f"{where}: the row {cells} has no path or no label column"))
            continue
        entry, label = cells[path_col].strip(), cells[label_col].strip()
        try:
            path = resolve_inside(root, folder / entry, where)
        except DataError as exc:
            out.append(Row(where, None, label, error=str(exc)))
            continue
        roi = None
        if roi_cols is not None:
            values = [cells[c].strip() for c in roi_cols]
            if not all(_INT.fullmatch(v) for v in values):
                out.append(Row(where, None, label, error=f"{where}: the ROI {values} is not four integers"))
                continue
            x1, y1, x2, y2 = (int(v) for v in values)
            roi = (x1, y1, x2, y2)
        out.append(Row(where, path, label, roi))
    return out


def class_names_of(rows: list[Row], classes: list[str] | None) -> list[str]:
    """The class names: ``classes`` when given; ``"0".."max"`` when every label is an integer; else the sorted labels."""
    if classes is not None:
        return list(classes)
    labels = {r.label for r in rows if r.error is None}
    if labels and all(_INT.fullmatch(v) for v in labels):
        return [str(i) for i in range(max(int(v) for v in labels) + 1)]
    return sorted(labels)


def label_index(row: Row, class_names: list[str]) -> int:
    """The class index of ``row``'s label: an integer id below the number of classes, or a class name."""
    if _INT.fullmatch(row.label) and row.label not in class_names:
        value = int(row.label)
        if 0 <= value < len(class_names):
            return value
    elif row.label in class_names:
        return class_names.index(row.label)
    raise DataError(
        f"{row.where}: label {row.label!r} is not a class id 0..{len(class_names) - 1} nor a class name "
        f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}): fix the row or the 'classes' list"
    )


class CsvListSource(SampleSource):
    """The rows of some CSV files; samples are decoded (and cropped to their ROI) when indexed."""

    def __init__(self, csv_files: list[Path], rows: list[Row], class_names: list[str], crop_roi: bool) -> None:
        self.csv_files = csv_files
        self.rows = rows
        self.class_names = class_names
        self.crop_roi = crop_roi

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        if row.error is not None or row.path is None:
            raise DataError(row.error or f"{row.where}: bad row")
        label = label_index(row, self.class_names)
        image = read_image(row.path)
        if self.crop_roi and row.roi is not None:
            x1, y1, x2, y2 = row.roi
            height, width = image.shape[:2]
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise DataError(
                    f"{row.where}: the ROI (x1={x1}, y1={y1}, x2={x2}, y2={y2}) is not inside the image {row.path} "
                    f"({width}×{height}; needs 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height): fix the row or set crop_roi: false"
                )
            image = image[y1:y2, x1:x2].copy()
        return {"image": image, "label": label, "id": str(row.path)}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"csv_list crop_roi={self.crop_roi}\n".encode())
        digest.update(b"\n".join(fs_key(name) for name in self.class_names))
        for csv_file in self.csv_files:
            digest.update(b"\n" + fs_key(str(csv_file)) + f"\t{file_stamp(csv_file)}".encode())
        for row in self.rows:
            digest.update(f"\n{row.where}\t{file_stamp(row.path)}".encode())
        return digest.hexdigest()


class CsvList(Loader):
    """The loader :func:`csv_list` returns."""

    tasks = ("classification",)

    def __init__(
        self,
        root: Path,
        lists: dict[str, str],
        delimiter: str | None,
        crop_roi: bool,
        classes: list[str] | None,
    ) -> None:
        self.root = root
        self.lists = lists
        self.delimiter = delimiter
        self.crop_roi = crop_roi
        self.classes = classes

    def _files(self, split: str, pattern: str) -> list[Path]:
        try:
            files = sorted(p for p in self.root.glob(pattern) if p.is_file())
        except (ValueError, NotImplementedError) as exc:  # an absolute or otherwise unusable pattern
            raise DataError(
                f"loading 'csv_list': lists.{split} {pattern!r} is not a glob pattern below {self.root}: {exc}"
            ) from exc
        if not files:
            raise DataError(
                f"loading 'csv_list': lists.{split} {pattern!r} matches no file below {self.root}: "
                "check the pattern (relative to 'root') and the dataset folder"
            )
        return files

    def load(self, task: str) -> LoadedData:
        if task not in self.tasks:
            raise StageError(f"loading 'csv_list': unknown task {task!r}; it serves {', '.join(self.tasks)}")
        require_dir(self.root, "CSV list dataset", "'root' must be the dataset folder the CSV files are in")
        files = {split: self._files(split, pattern) for split, pattern in self.lists.items()}
        rows = {
            split: [row for f in found for row in read_rows(self.root, f, self.delimiter, self.crop_roi)]
            for split, found in files.items()
        }
        for split, split_rows in rows.items():
            if not split_rows:
                raise DataError(
                    f"loading 'csv_list': the lists.{split} files {[str(f) for f in files[split]]} have no rows"
                )
        class_names = class_names_of([r for split_rows in rows.values() for r in split_rows], self.classes)
        if not class_names:
            raise DataError(f"loading 'csv_list': no row of {self.root}'s lists has a valid label")
        splits = {s: CsvListSource(files[s], rows[s], class_names, self.crop_roi) for s in rows}
        return LoadedData(class_names, splits)


@stage("loading", "csv_list")
def csv_list(
    root: Path,
    lists: dict[Literal["all", "train", "val", "test"], Annotated[str, Field(min_length=1)]],
    delimiter: Literal[",", ";", "\t"] | None = None,
    crop_roi: bool = False,
    classes: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None,
) -> Loader:
    """Images listed with their class in CSV files (``path,label`` lists, GTSRB's ``GT-*.csv``), for classification.

    - ``root``: the dataset folder; every path in a CSV (relative to that CSV's folder) must stay inside it.
    - ``lists``: ``{split: glob pattern}`` of the CSV files below ``root``: ``all`` alone (the
      pipeline splits it), or ``train`` with optional ``val`` and ``test``.
    - ``delimiter``: ``,``, ``;`` or tab; sniffed from each file's first line when omitted.
    - ``crop_roi``: crop each image to its ``Roi.X1, Roi.Y1, Roi.X2, Roi.Y2`` columns (pixels,
      x2/y2 exclusive, as GTSRB's 10 % border around the sign).
    - ``classes``: the class names by id; labels are ids or names. When omitted: integer labels
      give classes ``"0"`` to the largest id, other labels the sorted set of labels.

    Samples: ``image`` (H, W, 3) uint8 RGB, ``label`` (class index), ``id`` (the path).
    """
    if "all" in lists and len(lists) > 1:
        raise StageError(
            f"loading 'csv_list': lists has 'all' and {sorted(set(lists) - {'all'})}: give 'all' alone, or train/val/test"
        )
    if "all" not in lists and "train" not in lists:
        raise StageError(f"loading 'csv_list': lists {sorted(lists)} has no 'train' (or 'all') entry")
    return CsvList(Path(root).expanduser(), {str(k): v for k, v in lists.items()}, delimiter, crop_roi, classes)


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [csv_list]
