"""The built-in classification head: global pooling → (hidden layer) → linear classifier.

Loss is cross-entropy (optionally label-smoothed); metrics are top-1 and top-5
accuracy and the confusion matrix; predictions are softmax probabilities.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    ChainError,
    ClassificationPrediction,
    Features,
    Head,
    StageContext,
    StageError,
    did_you_mean,
    hookimpl,
    stage,
)

if TYPE_CHECKING:
    import torchmetrics

#: Above this many classes the confusion-matrix picture has no numbers in its cells.
_MAX_ANNOTATED_CLASSES = 30


class ClassificationHead(Head):
    """Pools one feature map (B, C, h, w) to (B, C) and classifies it into (B, num_classes) logits.

    Every ``nn.Linear`` is initialized with weights ~ N(0, 0.01²) and zero bias,
    so that the initial logits are close to zero (uniform softmax).
    """

    task = "classification"

    def __init__(
        self,
        feature: str,
        in_channels: int,
        num_classes: int,
        *,
        dropout: float = 0.0,
        pooling: Literal["avg", "max"] = "avg",
        hidden: int = 0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.feature = feature
        self.num_classes = num_classes
        self.pooling = pooling
        self.label_smoothing = label_smoothing
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = in_channels
        if hidden > 0:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)
        for module in self.classifier.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    # -- model ---------------------------------------------------------------

    def forward(self, features: Features) -> Tensor:
        """:class:`Features` with map ``self.feature`` (B, C, h, w) → logits (B, num_classes)."""
        x = features.maps[self.feature]
        x = x.amax(dim=(2, 3)) if self.pooling == "max" else x.mean(dim=(2, 3))  # (B, C)
        return self.classifier(x)

    def loss(self, outputs: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Cross-entropy of logits (B, num_classes) against ``batch["label"]`` (B,) int64."""
        return {"loss": F.cross_entropy(outputs, batch["label"], label_smoothing=self.label_smoothing)}

    # -- metrics -------------------------------------------------------------

    def make_metrics(self) -> torchmetrics.MetricCollection:
        """``acc`` (top-1), ``acc_top5`` (top-min(5, num_classes)), ``confmat`` (num_classes, num_classes)."""
        # imported here: torchmetrics takes seconds to import, and plugins load on every CLI call
        import torchmetrics
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        n = self.num_classes
        return torchmetrics.MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=n, average="micro"),
                "acc_top5": MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro"),
                "confmat": MulticlassConfusionMatrix(num_classes=n),
            }
        )

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Tensor, batch: Batch) -> None:
        """Feed logits (B, num_classes) and ``batch["label"]`` (B,) to ``metrics``."""
        metrics.update(outputs.detach(), batch["label"])

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``acc``, ``acc_top5``, ``error``, ``error_top5`` and ``acc/<class>`` (recall of each class;
        NaN for a class with no samples in the split). With ``plots_dir``, writes
        ``confusion_matrix.csv`` and ``confusion_matrix.png`` there (rows = true, columns = predicted).
        """
        acc = float(computed["acc"])
        acc_top5 = float(computed["acc_top5"])
        confmat = computed["confmat"].detach().cpu().to(torch.int64).numpy()  # (C, C), [true, pred]
        out = {"acc": acc, "acc_top5": acc_top5, "error": 1.0 - acc, "error_top5": 1.0 - acc_top5}
        for i, name in enumerate(class_names):
            total = int(confmat[i].sum())
            out[f"acc/{name}"] = float(confmat[i, i]) / total if total else math.nan
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            _write_confusion_csv(confmat, class_names, plots_dir / "confusion_matrix.csv")
            _write_confusion_png(confmat, class_names, plots_dir / "confusion_matrix.png")
        return out

    # -- predictions ---------------------------------------------------------

    def decode(self, outputs: Tensor, batch: Batch, class_names: Sequence[str]) -> list[ClassificationPrediction]:
        """Logits (B, num_classes) → one :class:`ClassificationPrediction` per image, ids from ``batch["meta"]``."""
        probs = torch.softmax(outputs.detach().float(), dim=1).cpu().numpy().astype(np.float32)  # (B, C)
        predictions = []
        for i, scores in enumerate(probs):
            label = int(scores.argmax())
            predictions.append(
                ClassificationPrediction(
                    id=str(batch["meta"][i]["id"]),
                    label=label,
                    class_name=class_names[label],
                    score=float(scores[label]),
                    scores=scores,
                )
            )
        return predictions


def _write_confusion_csv(confmat: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Header row and first column are the class names; rows are true classes, columns predicted."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, confmat):
            writer.writerow([name, *(int(v) for v in row)])


def _write_confusion_png(confmat: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """A heat map of the counts (annotated when there are few classes), saved at 100 dpi."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state is touched

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


@stage("head", "classification")
def classification(
    context: StageContext,
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    pooling: Literal["avg", "max"] = "avg",
    feature: str | None = None,
    hidden: Annotated[int, Field(ge=0)] = 0,
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
) -> ClassificationHead:
    """Classify images from one backbone map (the coarsest unless ``feature`` names another).

    ``pooling``: global ``avg`` or ``max`` pooling; ``dropout``: before each linear layer;
    ``hidden``: width of an extra Linear+ReLU layer (0: none); ``label_smoothing``: of the
    cross-entropy loss.
    """
    if context.class_names is None or context.feature_info is None:
        raise StageError("head 'classification' needs the class names and the backbone's feature maps")
    if context.num_classes < 2:
        raise StageError(
            f"head 'classification' needs at least 2 classes, the loader gives {context.num_classes}: "
            f"{list(context.class_names)}"
        )
    maps = {info.name: info for info in context.feature_info}
    if not maps:
        raise ChainError(f"head 'classification': backbone '{context.backbone_name}' declares no feature maps")
    if feature is None:
        info = context.feature_info[-1]
    elif feature in maps:
        info = maps[feature]
    else:
        raise ChainError(
            f"head 'classification': feature {feature!r} is not a map of backbone '{context.backbone_name}'; "
            f"its maps are {list(maps)}.{did_you_mean(feature, maps)}"
        )
    return ClassificationHead(
        info.name,
        info.channels,
        context.num_classes,
        dropout=dropout,
        pooling=pooling,
        hidden=hidden,
        label_smoothing=label_smoothing,
    )


@hookimpl
def vision_pipe_stages() -> list[object]:
    return [classification]
