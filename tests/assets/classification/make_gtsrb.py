"""Write the tiny GTSRB-layout sample in ``gtsrb/`` (run from anywhere; deterministic).

Three classes (0 red disc, 1 blue square, 2 yellow triangle) on grey noise, PPM images of
14 to 19 px with the sign inside a border (the ROI, x2/y2 exclusive), laid out as the official archives::

    gtsrb/Final_Training/Images/0000<c>/0000<c>_0000<i>.ppm + GT-0000<c>.csv   (4 per class)
    gtsrb/Final_Test/Images/0000<i>.ppm + GT-final_test.csv                    (2 per class)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "gtsrb"
HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
COLORS = [(0, 0, 220), (220, 60, 0), (0, 210, 230)]  # BGR: red, blue, yellow


def sign(rng: np.random.Generator, class_id: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A (H, W, 3) BGR image and its ROI (x1, y1, x2, y2)."""
    w, h = (int(v) for v in rng.integers(14, 20, size=2))
    image = rng.integers(90, 150, size=(h, w, 3), dtype=np.uint8)
    x1, y1 = (int(v) for v in rng.integers(2, 4, size=2))
    x2, y2 = w - int(rng.integers(2, 4)), h - int(rng.integers(2, 4))
    color = COLORS[class_id]
    if class_id == 0:
        cv2.circle(image, ((x1 + x2) // 2, (y1 + y2) // 2), min(x2 - x1, y2 - y1) // 2, color, -1)
    elif class_id == 1:
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), color, -1)
    else:
        cv2.fillPoly(image, [np.array([[x1, y2 - 1], [x2 - 1, y2 - 1], [(x1 + x2) // 2, y1]], np.int32)], color)
    return image, (x1, y1, x2, y2)


def write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".ppm", image)
    assert ok
    path.write_bytes(data.tobytes())


def row(name: str, image: np.ndarray, roi: tuple[int, int, int, int], class_id: int) -> str:
    return ";".join(str(v) for v in (name, image.shape[1], image.shape[0], *roi, class_id))


def main() -> None:
    rng = np.random.default_rng(0)
    for class_id in range(3):
        folder = OUT / "Final_Training" / "Images" / f"{class_id:05d}"
        lines = [HEADER]
        for i in range(4):
            image, roi = sign(rng, class_id)
            name = f"{class_id:05d}_{i:05d}.ppm"
            write(folder / name, image)
            lines.append(row(name, image, roi, class_id))
        (folder / f"GT-{class_id:05d}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    folder = OUT / "Final_Test" / "Images"
    lines = [HEADER]
    for i in range(6):
        image, roi = sign(rng, i % 3)
        write(folder / f"{i:05d}.ppm", image)
        lines.append(row(f"{i:05d}.ppm", image, roi, i % 3))
    (folder / "GT-final_test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
