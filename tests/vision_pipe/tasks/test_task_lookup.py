"""Looking tasks up: one list of tasks for the config, the stage contracts and the kit; did-you-mean
for a wrong name; what a head that uses its task's metrics must provide."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

import vision_pipe
from vision_pipe import ConfigError, Features, Head, Pipeline, StageError
from vision_pipe.tasks import (
    IMAGES_ONLY,
    TASKS,
    Task,
    as_task,
    get_task,
    task_of_item,
    task_of_prediction,
)


def test_one_list_of_tasks() -> None:
    assert TASKS == ("classification", "segmentation", "detection", "reconstruction")
    assert vision_pipe.TASKS is TASKS
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task_of_prediction(task.prediction_type(id="x")) is task
        # reconstruction has no targets: its items are images only
        assert task_of_item(dict.fromkeys(task.target_keys[:1])) is (task if task.target_keys else IMAGES_ONLY)


def test_an_unknown_task_is_a_config_error_with_did_you_mean() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'detecton'; the tasks are classification, segmentation, "
                       r"detection, reconstruction\. Did you mean 'detection'\?"):  # fmt: skip
        get_task("detecton")


def test_a_pipeline_with_an_unknown_task_lists_the_tasks(tiny_config) -> None:
    tiny_config["task"] = "segmentaton"
    with pytest.raises(ConfigError, match="'classification', 'segmentation', 'detection' or 'reconstruction'"):
        Pipeline.from_dict(tiny_config)


def test_images_only_for_prediction() -> None:
    assert as_task(None) is IMAGES_ONLY and as_task("prediction") is IMAGES_ONLY
    assert as_task(get_task("detection")) is get_task("detection")
    assert task_of_item({"image": None}) is IMAGES_ONLY
    assert IMAGES_ONLY.transform_inputs({"boxes": [[0, 0, 1, 1]]}) == {}


class _NoClassCount(Head):
    task = "classification"

    def forward(self, features: Features) -> Tensor:
        return torch.zeros(1, 2)

    def loss(self, outputs: Tensor, batch) -> dict[str, Tensor]:
        return {"loss": outputs.sum()}

    def decode(self, outputs: Tensor, batch, class_names: Sequence[str]) -> list:
        return []


def test_a_head_without_num_classes_is_told_what_to_set() -> None:
    with pytest.raises(StageError, match=r"head _NoClassCount \(classification\) uses its task's metrics, which need "
                       r"the number of classes: set self.num_classes in __init__"):  # fmt: skip
        _NoClassCount().make_metrics()
    head = _NoClassCount()
    head.num_classes = 2
    assert set(head.make_metrics()) == {"acc", "acc_top5", "confmat"}
