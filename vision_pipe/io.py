"""File helpers shared by the core and by loaders: reading images, listing files, atomic writes.

Everything here is in the public API (``from vision_pipe import list_images``)
so that a third-party loader reads, lists and checks files exactly as the
built-in ones do:

- :func:`read_image` — any file → (H, W, 3) uint8 RGB (EXIF-aware, 8/16 bit, grey, BGRA);
- :func:`list_images` — the visible image files of a folder, sorted;
- :func:`require_dir` / :func:`require_file` — a :class:`DataError` naming the path and the fix;
- :func:`resolve_inside` — a path an annotation file gives, kept inside its dataset folder;
- :func:`file_stamp` — what a fingerprint records of a file (size, mtime);
- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_torch_save` — a
  reader (or a later run) never sees a half-written file;
- :func:`write_png` — an image or a class-id mask as a PNG, atomically;
- :data:`SPLITS`, :data:`IMAGE_EXTENSIONS`, :data:`IMAGE_EXTENSION_LIST`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vision_pipe.errors import DataError

#: The splits of a dataset, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: File extensions read as images (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
#: The image extensions as messages list them.
IMAGE_EXTENSION_LIST = "jpg, jpeg, png, bmp"


# ----------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------


def to_rgb(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Convert an OpenCV-decoded image (gray, BGR, BGRA; 8 or 16 bit) to (H, W, 3) uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {image.dtype}; expected 8- or 16-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise DataError(f"{path}: unsupported number of channels {channels}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; :class:`DataError` naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read image {path}: file is missing")
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works for non-ASCII paths, unlike cv2.imread
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    # ANYDEPTH | ANYCOLOR keeps 16-bit and gray images and applies the EXIF orientation (UNCHANGED does not)
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if image is None:
        raise DataError(f"cannot read image {path}: not a valid image file ({IMAGE_EXTENSION_LIST})")
    return to_rgb(image, path)


def is_image_file(path: Path) -> bool:
    """Whether ``path``'s extension is one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------
# Listing and checking paths
# ----------------------------------------------------------------------------


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_files(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Files in ``folder`` (below it when ``recursive``), hidden files and folders skipped, sorted."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if not _hidden(p, folder) and p.is_file())


def list_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Image files (:data:`IMAGE_EXTENSIONS`) in ``folder`` (below it when ``recursive``),
    hidden files and folders skipped, sorted."""
    return [p for p in list_files(folder, recursive=recursive) if is_image_file(p)]


def require_dir(path: Path, what: str, fix: str) -> None:
    """:class:`DataError` naming ``path`` (``what`` says which folder) unless it is an existing folder."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist: {fix}")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder: {fix}")


def require_file(path: Path, what: str, fix: str) -> None:
    """:class:`DataError` naming ``path`` (``what`` says which file) unless it is an existing file."""
    if not path.exists():
        raise DataError(f"{what} {path} does not exist: {fix}")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file: {fix}")


def resolve_inside(root: Path, entry: str | Path, where: str) -> Path:
    """``root / entry`` for a path read from an annotation or list file, which must stay inside ``root``.

    ``where`` names the file and the entry for the message (``"a.json: images[3].file_name"``).
    An absolute ``entry``, or one whose ``..`` climb above ``root``, raises a
    :class:`DataError`: a dataset's files name files of that dataset, nothing else on
    the machine. The check is on the path as written, so links inside ``root`` (an
    images folder linked to another disk) are fine.
    """
    text = os.fspath(entry)
    norm = os.path.normpath(text)
    if os.path.isabs(text) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataError(
            f"{where}: {text!r} points outside {root}: paths in annotation files must stay inside the dataset "
            f"folder; write it relative to {root}, without leading '/' or '..' that leave it"
        )
    return Path(root) / text


def file_stamp(path: Path | None) -> str:
    """``"<size> <mtime_ns>"`` of a file, or ``"missing"``: what a fingerprint records of it.

    Never raises: a fingerprint must not fail on a sample the pre-flight pass may skip.
    """
    try:
        st = Path(path).stat() if path is not None else None
    except OSError:
        st = None
    return f"{st.st_size} {st.st_mtime_ns}" if st is not None else "missing"


# ----------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------


def _fsync(path: Path, *, folder: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; folders only where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    except OSError:
        if folder:  # Windows cannot open a folder: its rename is durable without it
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def _atomic(path: Path, write: Any) -> None:
    """The one atomic writer: ``write(tmp)`` into a temporary file next to ``path``, fsync it, rename it
    over ``path``, fsync the folder. A crash or a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, folder=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old file or the new one."""
    _atomic(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (BGR (H, W, 3), or (H, W) 8/16-bit) as a PNG, atomically; return ``path``."""
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise DataError(f"could not encode {path} as PNG (array {array.dtype} {array.shape})")
    atomic_write_bytes(path, data.tobytes())
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_EXTENSION_LIST",
    "SPLITS",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_stamp",
    "is_image_file",
    "list_files",
    "list_images",
    "read_image",
    "require_dir",
    "require_file",
    "resolve_inside",
    "to_rgb",
    "write_png",
]
