"""Reading images: OpenCV decoding into (H, W, 3) uint8 RGB."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vision_pipe.errors import DataError

#: File extensions read as images (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


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
        raise DataError(f"cannot read image {path}: not a valid image file (jpg, jpeg, png, bmp)")
    return to_rgb(image, path)
