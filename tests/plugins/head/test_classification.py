"""The built-in classification head: shapes, loss, the task's metrics, decoding, build errors."""

from __future__ import annotations

import math
import typing

import numpy as np
import pluggy
import pytest
import torch
import torch.nn.functional as F

import vision_pipe.hookspecs
from vision_pipe import (
    Batch,
    ChainError,
    ClassificationPrediction,
    FeatureInfo,
    Features,
    StageContext,
    StageError,
)
from vision_pipe.registry import make_entry
from vision_pipe_plugins.head import classification as module
from vision_pipe_plugins.head.classification import ClassificationHead, classification

NAMES6 = ("a", "b", "c", "d", "e", "f")


def make_context(class_names: tuple[str, ...] = NAMES6) -> StageContext:
    return StageContext(
        task="classification",
        seed=0,
        input_size=(32, 32),
        class_names=class_names,
        feature_info=(FeatureInfo("stage1", 8, 2), FeatureInfo("stage2", 16, 4)),
        backbone_name="tiny",
    )


def make_features(batch_size: int = 2) -> Features:
    g = torch.Generator().manual_seed(0)
    return Features(
        maps={
            "stage1": torch.randn(batch_size, 8, 16, 16, generator=g),
            "stage2": torch.randn(batch_size, 16, 8, 8, generator=g),
        }
    )


def ranked_logits(order: list[int]) -> list[float]:
    """Logits whose classes rank as ``order`` (best first): 5, 4, 3, ..."""
    logits = [0.0] * len(order)
    for rank, cls in enumerate(order):
        logits[cls] = float(len(order) - 1 - rank)
    return logits



# ----------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------


def test_forward_uses_coarsest_map_by_default() -> None:
    head = classification(make_context())
    assert head.task == "classification"
    assert head.feature == "stage2"
    assert head.classifier[-1].in_features == 16
    assert head(make_features()).shape == (2, 6)


def test_forward_with_named_feature_and_hidden_layer() -> None:
    head = classification(make_context(), feature="stage1", hidden=32, dropout=0.5)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 32), (32, 6)]
    head.eval()
    assert head(make_features(batch_size=3)).shape == (3, 6)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling: str) -> None:
    head = classification(make_context(), pooling=pooling)
    linear = head.classifier[-1]
    with torch.no_grad():  # logit k = pooled channel k
        linear.weight.zero_()
        linear.weight[:, :6] = torch.eye(6)
    features = make_features()
    x = features.maps["stage2"]
    pooled = x.amax(dim=(2, 3)) if pooling == "max" else x.mean(dim=(2, 3))
    torch.testing.assert_close(head(features), pooled[:, :6])


def test_linear_init_is_small_normal_with_zero_bias() -> None:
    torch.manual_seed(0)
    head = classification(make_context(), hidden=64)
    for linear in (m for m in head.modules() if isinstance(m, torch.nn.Linear)):
        assert torch.all(linear.bias == 0)
        assert 0.005 < float(linear.weight.detach().std()) < 0.015
        assert abs(float(linear.weight.detach().mean())) < 0.005


def test_loss_is_cross_entropy() -> None:
    head = classification(make_context(("a", "b")))
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    batch: Batch = {"label": torch.tensor([0, 1])}
    # sample 0: -log(1/2); sample 1: -log(1/4)
    expected = (math.log(2.0) + math.log(4.0)) / 2
    loss = head.loss(logits, batch)
    assert set(loss) == {"loss"}
    assert float(loss["loss"]) == pytest.approx(expected)
    torch.testing.assert_close(loss["loss"], F.cross_entropy(logits, batch["label"]))


def test_loss_label_smoothing() -> None:
    head = classification(make_context(("a", "b")), label_smoothing=0.2)
    logits = torch.tensor([[math.log(3.0), 0.0]])
    # target (0.9, 0.1); log-probs (log 3/4, log 1/4)
    expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    loss = head.loss(logits, {"label": torch.tensor([0])})["loss"]
    assert float(loss) == pytest.approx(expected)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0]), label_smoothing=0.2))


def test_loss_backpropagates_into_the_head() -> None:
    head = classification(make_context(), hidden=4)
    loss = head.loss(head(make_features()), {"label": torch.tensor([1, 4])})["loss"]
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


# ----------------------------------------------------------------------------
# metrics: the classification task's (tests/vision_pipe/tasks/test_classification_task.py)
# ----------------------------------------------------------------------------


def test_metrics_are_the_classification_tasks() -> None:
    head = classification(make_context())
    assert not {"make_metrics", "update_metrics", "summarize"} & set(vars(ClassificationHead))
    metrics = head.make_metrics()
    logits = torch.tensor([ranked_logits([0, 1, 2, 3, 4, 5]), ranked_logits([1, 0, 2, 3, 4, 5])])
    head.update_metrics(metrics, logits, {"label": torch.tensor([0, 0])})
    summary = head.summarize(metrics.compute(), NAMES6, None)
    assert summary["acc"] == pytest.approx(0.5) and summary["acc/a"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------


def test_decode() -> None:
    head = classification(make_context(("a", "b", "c")))
    logits = torch.tensor([[0.0, 2.0, 1.0], [math.log(3.0), 0.0, 0.0]])
    batch: Batch = {"meta": [{"id": "x/1.png", "orig_size": (10, 10)}, {"id": "array:1", "orig_size": (5, 7)}]}
    predictions = head.decode(logits, batch, ("a", "b", "c"))
    assert [p.id for p in predictions] == ["x/1.png", "array:1"]
    assert all(isinstance(p, ClassificationPrediction) for p in predictions)
    assert [(p.label, p.class_name) for p in predictions] == [(1, "b"), (0, "a")]
    for p in predictions:
        assert p.scores.dtype == np.float32 and p.scores.shape == (3,)
        assert float(p.scores.sum()) == pytest.approx(1.0, abs=1e-6)
        assert isinstance(p.score, float) and p.score == pytest.approx(float(p.scores.max()))
    np.testing.assert_allclose(predictions[1].scores, [0.6, 0.2, 0.2], rtol=1e-6)
    assert predictions[1].to_dict()["class_name"] == "a"


# ----------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------


def test_unknown_feature_is_chain_error_naming_backbone_and_maps() -> None:
    with pytest.raises(ChainError) as info:
        classification(make_context(), feature="stage3")
    message = str(info.value)
    assert "tiny" in message and "stage1" in message and "stage2" in message and "stage3" in message


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"dropout": 1.5}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"hidden": -1}, "hidden"),
        ({"pooling": "median"}, "pooling"),
    ],
)
def test_invalid_parameters_are_stage_errors(params: dict[str, typing.Any], word: str) -> None:
    with pytest.raises(StageError, match=word):
        make_entry(classification).build(params, make_context())


def test_fewer_than_two_classes_is_stage_error() -> None:
    with pytest.raises(StageError, match="at least 2 classes"):
        classification(make_context(("only",)))


def test_registered_through_the_hook() -> None:
    pm = pluggy.PluginManager(vision_pipe.hookspecs.PROJECT)
    pm.add_hookspecs(vision_pipe.hookspecs)
    pm.register(module)
    assert pm.hook.vision_pipe_stages() == [[classification]]
    info = classification.__vision_pipe_stage__  # type: ignore[attr-defined]
    assert (info.kind, info.name, info.override) == ("head", "classification", False)


def test_factory_type_hints_resolve() -> None:
    hints = typing.get_type_hints(classification)
    assert hints["context"] is StageContext
    assert hints["pooling"] == typing.Literal["avg", "max"]
    assert hints["return"] is ClassificationHead
