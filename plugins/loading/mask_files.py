"""Reading mask files: class ids from single-channel, palette and (optionally) colour masks.

Not a plugin (no hooks): what :mod:`vision_pipe_plugins.loading.mask_folder`
uses to decode one mask (with Pillow: palette PNGs keep their indices, which
OpenCV would turn into colours) and to read a palette's colours. Every problem
— a decoder failure, or more pixels than ``data.max_image_pixels`` (checked from
the header, before decoding) — is a :class:`~vision_pipe.DataError` naming the
mask file and the fix.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vision_pipe import IGNORE_INDEX, RGB, DataError, check_image_pixels, image_header_size

_MAX_LISTED = 5  #: examples listed in an error message


def color_codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB → (...) int64 codes 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@dataclass(frozen=True, eq=False)
class MaskReader:
    """Reads a mask file into (H, W) int64 class ids with the ignore value 255.

    ``colors``/``color_ids``: with ``rgb_masks``, the sorted 0xRRGGBB codes of the
    known colours and the raw id of each (the ignore colour gives ``ignore_value``).
    """

    ignore_value: int = IGNORE_INDEX
    colors: np.ndarray | None = None  # (K,) int64, sorted
    color_ids: np.ndarray | None = None  # (K,) int64

    def read(self, path: Path) -> np.ndarray:
        """The mask at ``path`` as (H, W) int64 ids; :class:`DataError` naming the file when it cannot be."""
        raw = self._decode(path)
        mask = raw.astype(np.int64)
        if self.ignore_value != IGNORE_INDEX:
            if (mask == IGNORE_INDEX).any():
                raise DataError(
                    f"mask {path} has pixels of value {IGNORE_INDEX}, which the pipeline reserves for 'ignore', but "
                    f"ignore_value is {self.ignore_value}: relabel those pixels, or set ignore_value: {IGNORE_INDEX}"
                )
            mask[mask == self.ignore_value] = IGNORE_INDEX
        return mask

    def _decode(self, path: Path) -> np.ndarray:
        """Raw ids (H, W): palette indices, grey values, or ids of RGB colours."""
        try:
            data = path.read_bytes()  # once: for the header's size, then for the decoder
        except OSError as exc:
            raise DataError(f"cannot read mask {path}: {exc}") from exc
        size = image_header_size(path, what="mask", data=data)
        if size is not None:
            check_image_pixels(path, *size, what="mask")  # before decoding anything
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap above decided
                im = Image.open(io.BytesIO(data))
            with im:
                im.load()
                mode = im.mode
                array = np.asarray(im)
        except Exception as exc:  # any decoder failure (OSError, SyntaxError, ValueError, bombs, ...)
            raise DataError(
                f"cannot read mask {path}: {exc}; masks must be lossless images (PNG) of class ids: "
                "re-export it, or remove it and its image"
            ) from exc
        if mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
            return array.astype(np.int64) if mode == "1" else array
        if mode in ("PA", "LA"):
            return array[..., 0]
        if mode in ("RGB", "RGBA", "RGBX"):
            return self._from_rgb(array[..., :3], path)
        raise DataError(
            f"mask {path} has pixel mode {mode!r}; masks must be 8/16-bit single-channel class ids or palette PNGs"
        )

    def _from_rgb(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """(H, W, 3) uint8 → raw ids: the grey value when R = G = B everywhere, else by colour."""
        if self.colors is None or self.color_ids is None:
            colored = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
            if not colored.any():
                return rgb[..., 0]
            y, x = np.unravel_index(int(np.argmax(colored)), colored.shape)
            raise DataError(
                f"mask {path} is an RGB image ({int(colored.sum())} pixels with R, G, B not all equal, e.g. "
                f"colour {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y}); masks must be single-channel "
                "class ids (8/16-bit grey PNG) or palette PNGs (palette index = class id). Convert it to class "
                "ids, e.g. ids = colour→id lookup, then PIL.Image.fromarray(ids.astype('uint8')).save(...), or, "
                "if its colours are class colours, set rgb_masks: true and give every class a colour in 'classes'"
            )
        codes = color_codes(rgb)  # (H, W)
        pos = np.clip(np.searchsorted(self.colors, codes), 0, len(self.colors) - 1)
        known = self.colors[pos] == codes
        if not known.all():
            unknown, counts = np.unique(codes[~known], return_counts=True)
            order = np.argsort(-counts)[:_MAX_LISTED]
            listed = ", ".join(
                f"({c >> 16}, {(c >> 8) & 255}, {c & 255}): {n} px"
                for c, n in zip(unknown[order], counts[order], strict=True)
            )
            raise DataError(
                f"mask {path} has {len(unknown)} colour(s) that are no class colour: {listed}; "
                "give those classes a colour in 'classes', set ignore_color, or fix the mask"
            )
        return self.color_ids[pos]


def palette_colors(path: Path) -> list[RGB] | None:
    """The palette of a palette image (reads only its header), else ``None`` (also when unreadable)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "PA"):
                return None
            flat = im.getpalette("RGB") or []
    except Exception:  # unreadable: the mask reader names the file when it reads it
        return None
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat) - 2, 3)]
