"""vision-pipe: plugin-based image pipelines chained by YAML, trained with PyTorch Lightning.

Public API (everything a pipeline user or plugin author needs)::

    from vision_pipe import Pipeline                      # run pipelines from Python
    from vision_pipe import hookimpl, stage               # write plugins
    from vision_pipe import Loader, Normalizer, Backbone, Head, ...  # stage contracts
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vision_pipe.errors import (
    ChainError,
    ConfigError,
    ContractError,
    DataError,
    PluginError,
    StageError,
    VisionPipeError,
    did_you_mean,
)
from vision_pipe.hookspecs import hookimpl
from vision_pipe.io import IMAGE_EXTENSIONS, read_image
from vision_pipe.results import (
    ClassificationPrediction,
    DetectionPrediction,
    Prediction,
    SegmentationPrediction,
)
from vision_pipe.stages import (
    KINDS,
    TASKS,
    Backbone,
    Batch,
    FeatureInfo,
    Features,
    Head,
    LoadedData,
    Loader,
    Normalizer,
    Sample,
    SampleSource,
    StageContext,
    stage,
)

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline

__version__ = "0.1.0"

__all__ = [
    "IMAGE_EXTENSIONS",
    "KINDS",
    "TASKS",
    "Backbone",
    "Batch",
    "ChainError",
    "ClassificationPrediction",
    "ConfigError",
    "ContractError",
    "DataError",
    "DetectionPrediction",
    "FeatureInfo",
    "Features",
    "Head",
    "LoadedData",
    "Loader",
    "Normalizer",
    "Pipeline",
    "PluginError",
    "Prediction",
    "Sample",
    "SampleSource",
    "SegmentationPrediction",
    "StageContext",
    "StageError",
    "VisionPipeError",
    "did_you_mean",
    "hookimpl",
    "read_image",
    "stage",
]


def __getattr__(name: str) -> Any:
    # Pipeline pulls in Lightning; import it only when asked for, so that
    # plugins (which import this package) load fast.
    if name == "Pipeline":
        from vision_pipe.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'vision_pipe' has no attribute {name!r}")
