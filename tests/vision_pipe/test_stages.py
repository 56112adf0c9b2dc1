"""vision_pipe.stages: what StageContext answers about the chain built so far."""

from __future__ import annotations

import pytest

from vision_pipe import ChainError, FeatureInfo, StageContext, StageError

MAPS = (FeatureInfo("c1", 8, 2), FeatureInfo("c2", 16, 4), FeatureInfo("c3", 32, 8))


def _context(**fields: object) -> StageContext:
    return StageContext(task="classification", seed=0, input_size=(32, 32), **fields)  # type: ignore[arg-type]


def test_features_and_lookup_by_name() -> None:
    context = _context(class_names=("a", "b"), feature_info=MAPS, backbone_name="tiny")
    assert context.features[-1].name == "c3" and context.num_classes == 2
    assert context.feature("c2") == FeatureInfo("c2", 16, 4)
    with pytest.raises(ChainError, match=r"feature_maps: backbone 'tiny' has no map 'c22'; its maps are c1 \(stride 2\), c2 \(stride 4\), c3 \(stride 8\)\. Did you mean 'c2'\?"):
        context.feature("c22", param="feature_maps")


def test_what_is_not_known_yet_is_a_stage_error() -> None:
    context = _context()
    with pytest.raises(StageError, match="class names are not known yet"):
        _ = context.num_classes
    with pytest.raises(StageError, match="feature maps are not known yet"):
        _ = context.features
    with pytest.raises(ChainError, match="backbone 'empty' declares no feature maps"):
        _ = _context(feature_info=(), backbone_name="empty").features
