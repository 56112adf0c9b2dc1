"""Writes the tiny detection datasets in this folder (run from anywhere: ``python make_assets.py``).

Every image is a grey canvas with each annotated object drawn as a filled
rectangle over exactly its pixels, so that a reader who opens the files sees
the boxes the annotations give. The expected boxes (pixel edges, xyxy) are
computed by hand in tests/plugins/loading/test_{coco,voc,yolo}.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
COLOURS = [(230, 60, 60), (60, 200, 60), (60, 60, 230)]  # RGB


def draw(path: Path, width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> None:
    """A (height, width) grey image with each xyxy pixel-edge box filled in its own colour."""
    image = np.full((height, width, 3), 128, np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = COLOURS[i % len(COLOURS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok, path
    path.write_bytes(data.tobytes())


def coco() -> None:
    root = HERE / "coco"
    draw(root / "images" / "a.png", 64, 48, [(10, 20, 15, 26), (30, 4, 62, 44)])
    draw(root / "images" / "b.png", 32, 32, [(4, 4, 12, 12), (16, 16, 28, 30)])
    draw(root / "images" / "c.png", 40, 40, [])
    instances = {
        "info": {"description": "vision-pipe test data: 3 images, 3 categories with ids 1, 3, 7"},
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
            {"id": 5, "file_name": "c.png", "width": 40, "height": 40},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 5, 6], "area": 30, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [30, 4, 32, 40], "area": 1280, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [4, 4, 8, 8], "area": 64, "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [16, 16, 12, 14], "area": 168, "iscrowd": 1},
        ],
        "categories": [
            {"id": 3, "name": "cat", "supercategory": "animal"},
            {"id": 1, "name": "dog", "supercategory": "animal"},
            {"id": 7, "name": "bird", "supercategory": "animal"},
        ],
    }
    (root / "instances.json").write_text(json.dumps(instances, indent=1) + "\n", encoding="utf-8")


VOC_OBJECT = """  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>{difficult}
    <bndbox>
      <xmin>{xmin}</xmin>
      <ymin>{ymin}</ymin>
      <xmax>{xmax}</xmax>
      <ymax>{ymax}</ymax>
    </bndbox>
  </object>
"""


def voc_xml(stem: str, width: int, height: int, objects: list[tuple[str, int | None, tuple[int, ...]]]) -> str:
    """A VOC annotation; ``objects`` are (name, difficult or None for no tag, 1-based (xmin, ymin, xmax, ymax))."""
    body = ""
    for name, difficult, (xmin, ymin, xmax, ymax) in objects:
        tag = "" if difficult is None else f"\n    <difficult>{difficult}</difficult>"
        body += VOC_OBJECT.format(name=name, difficult=tag, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)
    return (
        f"<annotation>\n  <folder>VOC</folder>\n  <filename>{stem}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{body}</annotation>\n"
    )


def voc() -> None:
    root = HERE / "voc"
    samples = {
        # pixel edges drawn; annotations are 1-based inclusive: xmin = x1 + 1, xmax = x2
        "000001": (64, 48, [("dog", 0, (11, 21, 15, 26)), ("person", 1, (1, 1, 64, 48))]),
        "000002": (32, 32, [("cat", None, (5, 9, 20, 30))]),
        "000003": (40, 40, []),
    }
    for stem, (width, height, objects) in samples.items():
        edges = [(x1 - 1, y1 - 1, x2, y2) for _, _, (x1, y1, x2, y2) in objects]
        draw(root / "JPEGImages" / f"{stem}.jpg", width, height, edges[:1] if stem == "000001" else edges)
        xml = voc_xml(stem, width, height, objects)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(xml, encoding="utf-8")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / "train.txt").write_text("000001\n000002\n", encoding="utf-8")
    (main / "val.txt").write_text("000003\n", encoding="utf-8")


def yolo() -> None:
    root = HERE / "yolo"
    draw(root / "images" / "train" / "a.png", 64, 48, [(24, 12, 40, 36), (0, 0, 16, 24)])
    draw(root / "images" / "train" / "b.png", 32, 32, [])
    draw(root / "images" / "val" / "c.png", 40, 40, [])
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n", encoding="utf-8")
    (root / "labels" / "val" / "c.txt").write_text("", encoding="utf-8")  # an empty txt: no objects
    (root / "classes.txt").write_text("circle\nsquare\n", encoding="utf-8")
    (root / "data.yaml").write_text(
        "# Ultralytics-style data YAML: only 'names' is read by vision-pipe\n"
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: circle\n  1: square\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    coco()
    voc()
    yolo()
