"""File helpers shared by the core and by loaders: reading images, listing files, atomic writes.

Everything here is in the public API (``from vision_pipe import list_images``)
so that a third-party loader reads, lists and checks files exactly as the
built-in ones do:

- :func:`read_image` — any file → (H, W, 3) uint8 RGB (EXIF-aware, 8/16 bit, grey, BGRA), its size
  checked from the header against :func:`max_image_pixels` (``data.max_image_pixels``) before decoding;
- :func:`set_max_image_pixels` / :func:`check_image_pixels` / :func:`image_header_size` — that cap
  (:func:`sniff_image_size` reads a PNG's or JPEG's size from its first bytes);
- :func:`list_images` — the visible image files of a folder, sorted;
- :func:`require_dir` / :func:`require_file` — a :class:`DataError` naming the path and the fix;
- :func:`resolve_inside` — a path an annotation file gives, kept inside its dataset folder;
- :func:`file_stamp` — what a fingerprint records of a file (size, mtime); :func:`fs_key` — a path as
  the bytes a fingerprint hashes (any file name, UTF-8 or not);
- :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`atomic_torch_save` — a
  reader (or a later run) never sees a half-written file;
- :func:`write_png` / :func:`encode_png` — an image or a class-id mask as a PNG (atomically) or PNG bytes;
- :func:`read_json_object` — a JSON object file, `{}` when missing or broken;
- :data:`SPLITS`, :data:`IMAGE_EXTENSIONS`, :data:`IMAGE_EXTENSION_LIST`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

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


#: The default of ``data.max_image_pixels``: the most pixels (width × height) an image or mask may have.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: The environment variable that carries the cap into worker processes (spawned DataLoader workers, DDP ranks).
MAX_IMAGE_PIXELS_ENV = "VISION_PIPE_MAX_IMAGE_PIXELS"


def _initial_max_pixels() -> int:
    try:
        return max(1, int(os.environ.get(MAX_IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)))
    except ValueError:
        return DEFAULT_MAX_IMAGE_PIXELS


_max_pixels = _initial_max_pixels()


def max_image_pixels() -> int:
    """The cap :func:`read_image` (and the mask readers) apply when not given one: ``data.max_image_pixels``."""
    return _max_pixels


def set_max_image_pixels(pixels: int) -> int:
    """Set the process-wide pixel cap (the pipeline applies ``data.max_image_pixels`` before loading); return the old one.

    The cap also goes into the environment (:data:`MAX_IMAGE_PIXELS_ENV`), so worker
    processes started afterwards apply it, and into Pillow's own decompression-bomb
    limit (``PIL.Image.MAX_IMAGE_PIXELS``), so Pillow never refuses an image the cap allows.
    """
    global _max_pixels
    if pixels < 1:
        raise ValueError(f"max_image_pixels must be >= 1, got {pixels}")
    old, _max_pixels = _max_pixels, int(pixels)
    os.environ[MAX_IMAGE_PIXELS_ENV] = str(_max_pixels)
    Image.MAX_IMAGE_PIXELS = _max_pixels
    return old


def check_image_pixels(
    path: str | Path, width: int, height: int, what: str = "image", max_pixels: int | None = None
) -> None:
    """:class:`DataError` naming the file and ``data.max_image_pixels`` if ``width × height`` exceeds the cap."""
    cap = _max_pixels if max_pixels is None else max_pixels
    if width * height > cap:
        raise DataError(
            f"{what} {path} is {width}×{height} = {width * height:,} pixels, more than data.max_image_pixels = "
            f"{cap:,} (decoding it could take {width * height * 3 / 2**30:.1f} GiB or more): downscale or remove it, "
            "or raise data.max_image_pixels"
        )


def image_header_size(
    path: str | Path, what: str = "image", data: bytes | memoryview | None = None
) -> tuple[int, int] | None:
    """``(width, height)`` from the image file's header (nothing is decoded); ``None`` if it cannot be told.

    ``data``: the file's bytes when the caller has read them already. PNG and JPEG
    headers are parsed directly (:func:`sniff_image_size`, microseconds); other
    formats through Pillow. An image so large that Pillow refuses even to open it
    (a decompression bomb) is a :class:`DataError` naming the file (``what`` says
    what it is) and ``data.max_image_pixels``.
    """
    if data is None:
        try:
            with open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        except OSError:
            return None
        size = sniff_image_size(head)
    else:
        size = sniff_image_size(data)
    return size if size is not None else _pillow_size(path, what, data)


def _pillow_size(path: str | Path, what: str, data: bytes | memoryview | None) -> tuple[int, int] | None:
    """``(width, height)`` as Pillow reads it from the header (formats :func:`sniff_image_size` does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap decides, not Pillow
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{what} {path} has far more pixels than data.max_image_pixels = {_max_pixels:,} ({exc}): "
            "downscale or remove it, or raise data.max_image_pixels"
        ) from exc
    except Exception:  # not an image Pillow knows: OpenCV has the last word
        return None


#: How much of a file :func:`image_header_size` reads to find a PNG's or a JPEG's size (JPEG's EXIF
#: block comes before its frame header and can be up to 64 KiB).
_SNIFF_BYTES = 1 << 17
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic ...; not DHT C4, JPG C8, DAC CC).
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG (its IHDR chunk) or a JPEG (its first start-of-frame segment) from the
    file's first bytes; ``None`` for another format or a header that cannot be parsed."""
    header = _sniff_header(data)
    return None if header is None else header[:2]


def _sniff_header(data: bytes | memoryview) -> tuple[int, int, bool] | None:
    """``(width, height, rgb8)`` of a PNG or JPEG header (see :func:`sniff_image_size`); ``rgb8``: the
    file holds 8-bit samples in three colour channels (a PNG of colour type 2, a JPEG with 3 components),
    which OpenCV can decode straight into RGB."""
    head = bytes(data[:_SNIFF_BYTES])
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) >= 26:
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return width, height, head[24] == 8 and head[25] == 2
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None  # not at a marker: a damaged header; let the decoders decide
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker in _JPEG_FRAMES:
            if i + 10 > len(head) or length < 8:
                return None
            height = int.from_bytes(head[i + 5 : i + 7], "big")
            width = int.from_bytes(head[i + 7 : i + 9], "big")
            return width, height, head[i + 4] == 8 and head[i + 9] == 3
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before any frame header
            return None
        i += 2 + length
    return None


def _read_bytes(path: str | Path) -> bytes:
    """The whole file, read with unbuffered system calls (~5 µs less than ``open().read()`` a file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = [os.read(fd, 1 << 20)]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return b"".join(chunks)


#: OpenCV's flag to decode into RGB order (OpenCV >= 4.11; without it every image takes the general path).
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; :class:`DataError` naming the file if it cannot be read.

    Its size is read from the header first: more than ``max_pixels`` (default:
    :func:`max_image_pixels`, i.e. ``data.max_image_pixels``) pixels is a
    :class:`DataError` before anything is decoded. Any decoder failure is a
    :class:`DataError` naming the file too. Paths that are not valid UTF-8 work.
    """
    try:
        data = np.frombuffer(_read_bytes(path), dtype=np.uint8)  # any path works, unlike cv2.imread
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise DataError(f"cannot read image {path}: file is missing") from exc
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    header = _sniff_header(data.data)
    size = header[:2] if header is not None else _pillow_size(path, "image", data.data)
    if size is not None:
        check_image_pixels(path, *size, max_pixels=max_pixels)
    # 8-bit colour PNGs and JPEGs decode straight into RGB; anything else keeps its depth and channels
    # (ANYDEPTH | ANYCOLOR: 16-bit and grey stay so, and the EXIF orientation applies, unlike UNCHANGED)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if header is not None and header[2] and _IMREAD_RGB is not None:
        flags = _IMREAD_RGB
    try:
        image = cv2.imdecode(data, flags) if data.size else None
    except (cv2.error, ValueError, MemoryError) as exc:
        raise DataError(f"cannot read image {path}: the decoder failed ({exc!s:.300})") from exc
    if image is None:
        raise DataError(f"cannot read image {path}: not a valid image file ({IMAGE_EXTENSION_LIST})")
    check_image_pixels(path, image.shape[1], image.shape[0], max_pixels=max_pixels)
    if flags == _IMREAD_RGB and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    try:
        return to_rgb(image, path)
    except cv2.error as exc:
        raise DataError(f"cannot read image {path}: cannot convert it to RGB ({exc!s:.300})") from exc


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
    except (OSError, ValueError):  # ValueError: a NUL byte in a name from an annotation file
        st = None
    return f"{st.st_size} {st.st_mtime_ns}" if st is not None else "missing"


def fs_key(path: str | Path) -> bytes:
    """``path`` as the bytes it has on disk (``os.fsencode``): what to hash, since a Linux file name need not
    be valid UTF-8 (``str(path).encode()`` would raise on it)."""
    return os.fsencode(path)


def path_key(path: str | os.PathLike[str]) -> str:
    """``path`` absolute with symlinks resolved: how the same image file given two ways is recognised
    (e.g. a dataset's image ids looked up by the path given to ``predict``)."""
    return str(Path(path).resolve())


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


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process's umask (read from
    ``/proc/self/status`` where there is one, so that no other thread sees a changed umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write: Any) -> None:
    """The one atomic writer: ``write(tmp)`` into a temporary file next to ``path``, fsync it, rename it
    over ``path``, fsync the folder. A crash or a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0o600 would hide the file from the user's group
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


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or holds no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def encode_png(array: np.ndarray, what: str = "an image", *, compression: int | None = None) -> bytes:
    """``array`` (BGR (H, W, 3), or (H, W) 8/16-bit) as PNG bytes; ``what`` names it in the error.

    ``compression``: zlib level 0-9 (default: OpenCV's, fast); 9 for the smallest file (figures)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression] if compression is not None else []
    ok, data = cv2.imencode(".png", array, params)
    if not ok:
        raise DataError(f"could not encode {what} as PNG (array {array.dtype} {array.shape})")
    return bytes(data.tobytes())


def write_png(path: Path, array: np.ndarray, *, compression: int | None = None) -> Path:
    """Write ``array`` (BGR (H, W, 3), or (H, W) 8/16-bit) as a PNG, atomically; return ``path``
    (``compression`` as in :func:`encode_png`)."""
    atomic_write_bytes(path, encode_png(array, str(path), compression=compression))
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_EXTENSION_LIST",
    "MAX_IMAGE_PIXELS_ENV",
    "SPLITS",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_image_pixels",
    "encode_png",
    "file_stamp",
    "fs_key",
    "image_header_size",
    "is_image_file",
    "list_files",
    "list_images",
    "max_image_pixels",
    "path_key",
    "read_image",
    "read_json_object",
    "require_dir",
    "require_file",
    "resolve_inside",
    "set_max_image_pixels",
    "sniff_image_size",
    "to_rgb",
    "write_png",
]
