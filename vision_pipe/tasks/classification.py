"""The classification task: one class ``label`` per image.

Owns the label's check and tensor, the metrics (top-1 and top-5 accuracy, the
confusion matrix) with their summary (``acc``, ``acc_top5``, ``error``,
``error_top5``, ``acc/<class>``) and pictures (``confusion_matrix.csv`` /
``.png``), and drawing a :class:`~vision_pipe.results.ClassificationPrediction`.
Evaluation form of a head's outputs: logits (B, num_classes).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np

from vision_pipe.drawing import upscale
from vision_pipe.results import ClassificationPrediction, Prediction
from vision_pipe.samples import IGNORE_INDEX, check_label
from vision_pipe.tasks.base import Graded, Task

if TYPE_CHECKING:
    import torchmetrics
    from torch import Tensor

#: Above this many classes the confusion-matrix picture has no numbers in its cells.
_MAX_ANNOTATED_CLASSES = 30


class ClassificationTask(Task):
    """Classification: ``label`` int in [0, num_classes) per sample, (B,) int64 per batch."""

    name = "classification"
    prediction_type = ClassificationPrediction
    has_class_scores = True
    target_keys = ("label",)
    main_metrics = ("acc",)
    per_class_metrics = ("acc",)
    report_plots = ("confusion_matrix.png",)

    # -- samples ---------------------------------------------------------------

    def check_targets(self, sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
        check_label(sample.get("label"), num_classes, sample_id)

    def transformed_targets(self, sample: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
        # an int here and one tensor per batch in collate_targets: a tensor per sample costs ~4 µs
        return {"label": int(sample["label"])}

    def collate_targets(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        return {"label": torch.tensor([int(it["label"]) for it in items], dtype=torch.int64)}

    def random_targets(
        self, rng: np.random.Generator, batch_size: int, input_size: tuple[int, int], num_classes: int
    ) -> dict[str, Any]:
        import torch

        return {"label": torch.from_numpy(np.arange(batch_size, dtype=np.int64) % num_classes)}

    # -- evaluation ------------------------------------------------------------

    def make_metrics(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torchmetrics.MetricCollection:
        """``acc`` (top-1), ``acc_top5`` (top-min(5, num_classes)), ``confmat`` (num_classes, num_classes)."""
        import torchmetrics
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
        )

        n = num_classes
        return torchmetrics.MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=n, average="micro", validate_args=False),
                "acc_top5": MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro", validate_args=False),
                "confmat": MulticlassConfusionMatrix(num_classes=n, validate_args=False),
            }
        )

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Tensor, batch: Mapping[str, Any]) -> None:
        """Feed logits (B, num_classes) and ``batch["label"]`` (B,)."""
        metrics.update(outputs.detach(), batch["label"])

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``acc``, ``acc_top5``, ``error``, ``error_top5`` and ``acc/<class>`` (recall of each class;
        NaN for a class with no samples in the split). With ``plots_dir``, writes
        ``confusion_matrix.csv`` and ``confusion_matrix.png`` there (rows = true, columns = predicted).
        """
        import torch

        acc = float(computed["acc"])
        acc_top5 = float(computed["acc_top5"])
        confmat = computed["confmat"].detach().cpu().to(torch.int64).numpy()  # (C, C), [true, pred]
        out = {"acc": acc, "acc_top5": acc_top5, "error": 1.0 - acc, "error_top5": 1.0 - acc_top5}
        for i, name in enumerate(class_names):
            total = int(confmat[i].sum())
            out[f"acc/{name}"] = float(confmat[i, i]) / total if total else math.nan
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            write_confusion_csv(confmat, class_names, plots_dir / "confusion_matrix.csv")
            write_confusion_png(confmat, class_names, plots_dir / "confusion_matrix.png")
        return out

    # -- predictions -------------------------------------------------------------

    def export_outputs(self, outputs: Any) -> dict[str, Tensor]:
        """Logits (B, C) → ``{"probabilities": (B, C) float32}``."""
        import torch

        return {"probabilities": torch.softmax(outputs.float(), dim=1)}

    def class_scores(self, outputs: Any) -> Tensor:
        """Logits (B, C) → the logits themselves (Grad-CAM's class score)."""
        return outputs.float()

    def draw(
        self, image: np.ndarray, prediction: Prediction, class_colors: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """The class name and score in a black bar at the top."""
        prediction = cast(ClassificationPrediction, prediction)
        canvas = np.ascontiguousarray(upscale(image.copy())[0])
        text = f"{prediction.class_name} {prediction.score:.2f}"
        cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 24), (0, 0, 0), -1)
        cv2.putText(canvas, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        return canvas

    def describe(self, prediction: Prediction) -> str:
        prediction = cast(ClassificationPrediction, prediction)
        return f"{prediction.id}: {prediction.class_name} ({prediction.score:.3f})"

    def grade(self, prediction: Prediction, sample: Mapping[str, Any], class_names: Sequence[str]) -> Graded:
        """Right: the predicted class's probability; wrong (a misclassified image): minus it, so the surest
        mistakes are the worst."""
        prediction = cast(ClassificationPrediction, prediction)
        true = int(sample["label"])
        right = prediction.label == true
        name = class_names[true] if 0 <= true < len(class_names) else str(true)
        caption = f"true {name}, predicted {prediction.class_name} ({prediction.score:.2f})"
        return Graded(prediction.score if right else -prediction.score, caption, prediction)


def write_confusion_csv(confmat: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Header row and first column are the class names; rows are true classes, columns predicted."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, confmat, strict=True):
            writer.writerow([name, *(int(v) for v in row)])


def write_confusion_png(confmat: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """A heat map of the counts (annotated when there are few classes), saved at 100 dpi."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no global backend state is touched
    )

    n = len(class_names)
    side = min(max(4.0, 0.5 * n + 2.0), 40.0)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(confmat, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    if n <= _MAX_ANNOTATED_CLASSES:
        threshold = confmat.max() / 2 if confmat.size else 0
        for i in range(n):
            for j in range(n):
                color = "white" if confmat[i, j] > threshold else "black"
                ax.text(j, i, str(int(confmat[i, j])), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


CLASSIFICATION = ClassificationTask()
