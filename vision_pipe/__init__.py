"""vision-pipe: plugin-based image pipelines chained by YAML, trained with PyTorch Lightning.

Public API (everything a pipeline user or plugin author needs)::

    from vision_pipe import Pipeline                      # run pipelines from Python
    from vision_pipe import hookimpl, stage               # write plugins
    from vision_pipe import Loader, Normalizer, Backbone, Head, ...  # stage contracts
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vision_pipe.classes import RGB, ClassSpec, parse_classes, read_class_file, voc_palette
from vision_pipe.errors import (
    ChainError,
    ConfigError,
    ContractError,
    DataError,
    PluginError,
    StageError,
    TrainingError,
    VisionPipeError,
    did_you_mean,
)
from vision_pipe.hookspecs import hookimpl
from vision_pipe.io import (
    IMAGE_EXTENSION_LIST,
    IMAGE_EXTENSIONS,
    SPLITS,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_image_pixels,
    file_stamp,
    fs_key,
    image_header_size,
    is_image_file,
    list_files,
    list_images,
    max_image_pixels,
    read_image,
    require_dir,
    require_file,
    resolve_inside,
    write_png,
)
from vision_pipe.results import (
    ClassificationPrediction,
    DetectionPrediction,
    Prediction,
    SegmentationPrediction,
)
from vision_pipe.samples import (
    BOX_TOLERANCE,
    IGNORE_INDEX,
    box_iou,
    box_problem,
    check_boxes,
    check_id,
    check_image,
    check_label,
    check_mask,
    fmt_box,
    pack_targets,
)
from vision_pipe.tasks import TASKS

if TYPE_CHECKING:
    from vision_pipe.checkpoints import load_weights_file
    from vision_pipe.inspect import inspect_model
    from vision_pipe.pipeline import Pipeline
    from vision_pipe.report import rebuild_report, write_report
    from vision_pipe.run_table import RunSummary, find_runs, load_run, plot_comparison, summarize_runs
    from vision_pipe.similar import find_similar
    from vision_pipe.stages import (
        KINDS,
        Backbone,
        Batch,
        FeatureInfo,
        Features,
        Head,
        InputStats,
        LoadedData,
        Loader,
        Normalizer,
        Sample,
        SampleSource,
        StageContext,
        stage,
    )

#: The stage contracts, imported from :mod:`vision_pipe.stages` when first asked for: they build on
#: ``torch.nn``, and ``import vision_pipe`` imports no torch (the ONNX predictor, :mod:`vision_pipe.onnx_predict`,
#: runs without it).
_STAGE_NAMES = frozenset(
    {
        "KINDS",
        "Backbone",
        "Batch",
        "FeatureInfo",
        "Features",
        "Head",
        "InputStats",
        "LoadedData",
        "Loader",
        "Normalizer",
        "Sample",
        "SampleSource",
        "StageContext",
        "stage",
    }
)

#: Runs side by side and their reports (:mod:`vision_pipe.run_table`, :mod:`vision_pipe.report`), imported when
#: first asked for.
_RUN_NAMES = {
    "RunSummary": "vision_pipe.run_table",
    "find_runs": "vision_pipe.run_table",
    "load_run": "vision_pipe.run_table",
    "plot_comparison": "vision_pipe.run_table",
    "summarize_runs": "vision_pipe.run_table",
    "rebuild_report": "vision_pipe.report",
    "write_report": "vision_pipe.report",
}

__version__ = "0.1.0"

__all__ = [
    "BOX_TOLERANCE",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "IMAGE_EXTENSION_LIST",
    "KINDS",
    "RGB",
    "SPLITS",
    "TASKS",
    "Backbone",
    "Batch",
    "ChainError",
    "ClassSpec",
    "ClassificationPrediction",
    "ConfigError",
    "ContractError",
    "DataError",
    "DetectionPrediction",
    "FeatureInfo",
    "Features",
    "Head",
    "InputStats",
    "LoadedData",
    "Loader",
    "Normalizer",
    "Pipeline",
    "PluginError",
    "Prediction",
    "RunSummary",
    "Sample",
    "SampleSource",
    "SegmentationPrediction",
    "StageContext",
    "StageError",
    "TrainingError",
    "VisionPipeError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "box_iou",
    "box_problem",
    "check_boxes",
    "check_id",
    "check_image",
    "check_image_pixels",
    "check_label",
    "check_mask",
    "did_you_mean",
    "file_stamp",
    "find_runs",
    "find_similar",
    "fmt_box",
    "fs_key",
    "hookimpl",
    "image_header_size",
    "inspect_model",
    "is_image_file",
    "list_files",
    "list_images",
    "load_run",
    "load_weights_file",
    "max_image_pixels",
    "parse_classes",
    "plot_comparison",
    "read_class_file",
    "read_image",
    "rebuild_report",
    "require_dir",
    "require_file",
    "resolve_inside",
    "pack_targets",
    "stage",
    "summarize_runs",
    "voc_palette",
    "write_png",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # Pipeline pulls in Lightning; import it only when asked for, so that
    # plugins (which import this package) load fast.
    if name == "Pipeline":
        from vision_pipe.pipeline import Pipeline

        return Pipeline
    if name == "load_weights_file":  # reads torch files: torch is imported when it is used
        from vision_pipe.checkpoints import load_weights_file

        return load_weights_file
    if name == "inspect_model":  # runs the model with torch: imported when it is used
        from vision_pipe.inspect import inspect_model

        return inspect_model
    if name == "find_similar":  # embeds with torch: imported when it is used
        from vision_pipe.similar import find_similar

        return find_similar
    if name in _RUN_NAMES:
        import importlib

        return getattr(importlib.import_module(_RUN_NAMES[name]), name)
    if name in _STAGE_NAMES:
        import vision_pipe.stages

        value = getattr(vision_pipe.stages, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vision_pipe' has no attribute {name!r}")
