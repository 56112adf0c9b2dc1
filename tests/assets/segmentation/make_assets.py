"""Regenerate the tiny segmentation assets in this folder (run once; the outputs are committed).

    .venv/bin/python tests/assets/segmentation/make_assets.py

Six 40×48 (H×W) scenes ``scene_<i>``, i = 0..5, each with two axis-aligned rectangles
(row and column ranges are half-open, in pixels):

- class 1 ``circle``: rows [4+i, 16+i), columns [4, 20); its outer 1-px border is 255 (ignore),
  so class 1 proper covers rows [5+i, 15+i), columns [5, 19) — 10 × 14 = 140 pixels;
- class 2 ``square``: rows [22, 34), columns [24+i, 40+i) — 12 × 16 = 192 pixels;
- everything else is class 0 ``background``.

Outputs: ``images/scene_<i>.jpg`` (``scene_5.png``: a PNG image, to test stem matching),
``masks/scene_<i>.png`` (8-bit single-channel class ids), ``palette_masks/scene_<i>.png``
(the same ids as a palette PNG with the 256-colour Pascal VOC palette), ``classes.yaml``,
``splits/train.txt`` (scenes 0-3) and ``splits/val.txt`` (scenes 4, 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
HEIGHT, WIDTH = 40, 48
NUM_SCENES = 6
#: RGB colour of background, class 1 and class 2 in the images.
IMAGE_COLORS = ((40, 40, 40), (220, 60, 60), (60, 200, 90))
IGNORE = 255


def voc_palette() -> list[int]:
    """The Pascal VOC colour map: 256 RGB triples, flattened (index 255 is (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def scene_mask(i: int) -> np.ndarray:
    """(HEIGHT, WIDTH) uint8 class ids of scene ``i`` (see the module docstring)."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[4 + i : 16 + i, 4:20] = IGNORE
    mask[5 + i : 15 + i, 5:19] = 1
    mask[22:34, 24 + i : 40 + i] = 2
    return mask


def scene_image(mask: np.ndarray) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 RGB: the class colours, the ignore border drawn as class 1."""
    ids = np.where(mask == IGNORE, 1, mask)
    return np.array(IMAGE_COLORS, np.uint8)[ids]


def main() -> None:
    for folder in ("images", "masks", "palette_masks", "splits"):
        (HERE / folder).mkdir(exist_ok=True)
    for i in range(NUM_SCENES):
        mask = scene_mask(i)
        suffix = ".png" if i == 5 else ".jpg"
        Image.fromarray(scene_image(mask)).save(HERE / "images" / f"scene_{i}{suffix}", quality=95)
        Image.fromarray(mask, mode="L").save(HERE / "masks" / f"scene_{i}.png", optimize=True)
        palette = Image.fromarray(mask, mode="P")
        palette.putpalette(voc_palette())
        palette.save(HERE / "palette_masks" / f"scene_{i}.png", optimize=True)
    (HERE / "splits" / "train.txt").write_text("".join(f"scene_{i}\n" for i in range(4)))
    (HERE / "splits" / "val.txt").write_text("scene_4\nscene_5\n")
    (HERE / "classes.yaml").write_text(
        "# class id: name and RGB colour (used when drawing predictions)\n"
        "0: {name: background, color: [0, 0, 0]}\n"
        "1: {name: circle, color: [220, 60, 60]}\n"
        "2: {name: square, color: [60, 200, 90]}\n"
    )


if __name__ == "__main__":
    main()
