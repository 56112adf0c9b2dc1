"""The built-in classification head: global pooling → (hidden layer) → linear classifier.

Loss is cross-entropy (optionally label-smoothed); predictions are softmax
probabilities. Metrics (top-1 and top-5 accuracy, the confusion matrix) are the
classification task's (``vision_pipe.tasks.classification``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vision_pipe import (
    Batch,
    ClassificationPrediction,
    Features,
    Head,
    StageContext,
    StageError,
    hookimpl,
    stage,
)


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
    if context.num_classes < 2:
        raise StageError(
            f"head 'classification' needs at least 2 classes, the loader gives {context.num_classes}: "
            f"{list(context.classes)}"
        )
    info = context.features[-1] if feature is None else context.feature(feature)
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
