"""The stage registry: constraints kept from signatures, one validation on every build path, readable types."""

from __future__ import annotations

import textwrap
from typing import Annotated, Literal

import annotated_types
import pytest
from pydantic import Field

from vision_pipe import ConfigError, ContractError, Pipeline, PluginError, StageError, stage
from vision_pipe.registry import make_entry, type_str
from vision_pipe.testing import BoringBackbone, check_backbone, load_plugin


@stage("backbone", "constrained")
def constrained(
    width: Annotated[int, Field(ge=1)] = 4,
    ratio: Annotated[float, annotated_types.Interval(gt=0, le=1)] = 0.5,
    pooling: Literal["avg", "max"] = "avg",
    depth: Annotated[int, Field(ge=1)] | None = None,
    scales: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = [1.0],  # noqa: B006
) -> BoringBackbone:
    """A backbone whose parameters carry constraints (and that never checks them itself)."""
    return BoringBackbone(width, 2)


def test_constraints_are_kept_and_read_readably():
    types = {p.name: p.type_str() for p in make_entry(constrained).parameters}
    assert types == {
        "width": "int ≥ 1",
        "ratio": "float in (0, 1]",
        "pooling": "'avg' | 'max'",
        "depth": "int ≥ 1 | None",
        "scales": "list[float > 0] (≥ 1 item)",
    }
    assert type_str(Annotated[float, Field(ge=0, lt=1)]) == "float in [0, 1)"
    assert type_str(Annotated[list[int], Field(min_length=3, max_length=3)]) == "list[int] (3 items)"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"width": 0}, "backbone stage 'constrained': width must be ≥ 1, got 0"),
        ({"ratio": 2}, "backbone stage 'constrained': ratio must be in (0, 1], got 2"),
        ({"pooling": "mx"}, "backbone stage 'constrained': pooling must be one of 'avg', 'max', got 'mx'. Did you mean 'max'?"),  # noqa: E501
        ({"depth": 0}, "backbone stage 'constrained': depth must be ≥ 1, got 0"),
        ({"scales": [1.0, -1.0]}, "backbone stage 'constrained': scales[1] must be > 0, got -1.0"),
        ({"widht": 3}, "unknown parameter 'widht' for backbone stage 'constrained'. Did you mean 'width'"),
    ],
)
def test_build_validates_before_calling_the_factory(params, message):
    with pytest.raises(StageError) as info:
        make_entry(constrained).build(params)
    assert str(info.value).startswith(message)


def test_build_converts_like_the_yaml_does():
    entry = make_entry(constrained, plugin="tests")
    built = entry.build({"width": "3"})
    assert built.feature_info[0].channels == 3 and entry.plugin == "tests"


def test_the_testing_kit_validates_a_bare_factory():
    with pytest.raises(ContractError, match=r"width must be ≥ 1, got 0"):
        check_backbone(constrained, width=0)
    assert isinstance(check_backbone(constrained, width=2), BoringBackbone)


def test_a_yaml_value_outside_its_constraint_names_file_line_and_constraint(tiny_config, write_yaml):
    tiny_config["model"]["backbone"]["stages"] = 9
    path = write_yaml("p.yaml", tiny_config)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    message = str(info.value)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "stages: 9" in text)
    assert f"{path}:{line}" in message and "model.backbone.stages" in message
    assert "backbone stage 'vgg': stages must be in [1, 5], got 9" in message


def test_load_plugin_holds_just_that_plugin(tmp_path, monkeypatch):
    manager = load_plugin("vgg")  # an installed entry point
    assert set(manager.plugins) == {"vgg"} and manager.registry.names("backbone") == ["vgg"]
    assert manager.plugins["vgg"].distribution == "vision-pipe"
    (tmp_path / "one_stage_plugin.py").write_text(
        textwrap.dedent(
            '''
            from vision_pipe import hookimpl, stage
            from vision_pipe.testing import BoringBackbone

            @stage("backbone", "lonely")
            def lonely(width: int = 2) -> BoringBackbone:
                return BoringBackbone(width, 2)

            @hookimpl
            def vision_pipe_stages():
                return [lonely]
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    manager = load_plugin("one_stage_plugin")  # a module path
    assert set(manager.plugins) == {"one_stage_plugin"}
    assert manager.registry.names("backbone") == ["lonely"]
    import one_stage_plugin

    assert load_plugin(one_stage_plugin).registry.get("backbone", "lonely").factory is one_stage_plugin.lonely
    with pytest.raises(PluginError, match="plugin module 'no_such_plugin_xyz' not found"):
        load_plugin("no_such_plugin_xyz")
