"""Detections in the COCO results format, with the dataset's own ids: what ``COCO.loadRes`` reads.

Owns :class:`CocoIds` (our label → the dataset's ``category_id``, an image path →
the dataset's ``image_id``) and :func:`coco_results` (the records of
``detections_coco.json`` / ``detections_test_coco.json``).

Ids written:

- ``category_id``: the dataset's category id of the label when the model was
  trained on a dataset that has them (the ``coco`` loader: label ``i`` is the
  ``i``-th smallest category id; the mapping travels in the checkpoint and in
  an export's ``model.json`` as ``category_ids``); otherwise the label itself
  (0..C-1).
- ``image_id``: the dataset's image id when the image is one of the dataset's
  (its path, resolved, equals the folder + ``file_name`` of an image entry; a
  pipeline loaded from a checkpoint reads the annotation files its config names,
  when they are still there); otherwise the image's position in the inputs (0, 1, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from vision_pipe.io import path_key
from vision_pipe.results import DetectionPrediction, Prediction


@dataclass(frozen=True)
class CocoIds:
    """The dataset's ids. ``category_ids[label]`` is the category id of class ``label`` (None: the label is
    written); ``image_ids`` maps :func:`vision_pipe.io.path_key` of an image to its dataset image id."""

    category_ids: Sequence[int] | None = None
    image_ids: Mapping[str, Any] = field(default_factory=dict)

    def category(self, label: int) -> int:
        """The ``category_id`` written for ``label``."""
        return int(self.category_ids[label]) if self.category_ids is not None else int(label)

    def image(self, sample_id: str, position: int) -> Any:
        """The ``image_id`` written for the image ``sample_id`` (a path, or e.g. ``array:3``) at ``position``."""
        if self.image_ids and not sample_id.startswith("array:"):
            found = self.image_ids.get(path_key(sample_id))
            if found is not None:
                return found
        return position


def coco_results(predictions: Sequence[Prediction], ids: CocoIds | None = None) -> list[dict[str, Any]]:
    """One record per box: ``image_id``, ``category_id`` (see the module docstring), ``bbox`` [x, y, width,
    height] in original-image pixels, ``score``, and ``file_name`` / ``category_name`` for reading."""
    ids = ids or CocoIds()
    records: list[dict[str, Any]] = []
    for position, prediction in enumerate(predictions):
        prediction = cast(DetectionPrediction, prediction)
        image_id = ids.image(prediction.id, position)
        for box, label, name, score in zip(
            prediction.boxes, prediction.labels, prediction.class_names, prediction.scores, strict=True
        ):
            x1, y1, x2, y2 = (float(v) for v in box)
            records.append(
                {
                    "image_id": image_id,
                    "file_name": prediction.id,
                    "category_id": ids.category(int(label)),
                    "category_name": name,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return records
