"""Tasks: one :class:`Task` object per task, looked up by name.

Everything that belongs to a task rather than to one head lives in its task
object (see :mod:`vision_pipe.tasks.base`): the sample contract, the
albumentations targets, tensors and collation of the targets, the prediction
type, metrics with summaries and plots, drawing and writing predictions. The
core (data, pre-flight, testing kit, rendering, CLI) asks the task and has no
``if task == ...`` branches; :data:`TASKS` — what a pipeline's ``task:`` may
be — is derived from the registered tasks.

The task modules import torch inside the functions that need it, so that
drawing and writing predictions work without it (:mod:`vision_pipe.onnx_predict`).

A new task is a :class:`Task` subclass in a module of this package, added to
``_REGISTERED`` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vision_pipe.errors import ConfigError, did_you_mean
from vision_pipe.results import Prediction
from vision_pipe.tasks.base import IMAGES_ONLY, Graded, Task
from vision_pipe.tasks.classification import CLASSIFICATION
from vision_pipe.tasks.detection import DETECTION
from vision_pipe.tasks.segmentation import SEGMENTATION

_REGISTERED: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, SEGMENTATION, DETECTION)}

#: The tasks a pipeline can have.
TASKS: tuple[str, ...] = tuple(_REGISTERED)


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`~vision_pipe.errors.ConfigError` listing the tasks otherwise."""
    try:
        return _REGISTERED[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown task {name!r}; the tasks are {', '.join(TASKS)}.{did_you_mean(str(name), TASKS)}"
        ) from None


def as_task(task: str | Task | None) -> Task:
    """``task`` itself, the task of that name, or :data:`IMAGES_ONLY` for ``None`` (and ``"prediction"``:
    samples without targets, as :meth:`vision_pipe.Pipeline.predict` transforms them)."""
    if isinstance(task, Task):
        return task
    if task is None or task == "prediction":
        return IMAGES_ONLY
    return get_task(task)


def task_of_prediction(prediction: Prediction) -> Task:
    """The task whose :attr:`~Task.prediction_type` ``prediction`` is (:data:`IMAGES_ONLY` for none)."""
    for task in _REGISTERED.values():
        if isinstance(prediction, task.prediction_type):
            return task
    return IMAGES_ONLY


def task_of_item(item: Mapping[str, Any]) -> Task:
    """The task of a transformed sample (or batch) from the target keys it has (:data:`IMAGES_ONLY` for none)."""
    for task in _REGISTERED.values():
        if task.target_keys[0] in item:
            return task
    return IMAGES_ONLY


__all__ = [
    "CLASSIFICATION",
    "DETECTION",
    "Graded",
    "IMAGES_ONLY",
    "SEGMENTATION",
    "TASKS",
    "Task",
    "as_task",
    "get_task",
    "task_of_item",
    "task_of_prediction",
]
