"""Hook specifications: everything a vision-pipe plugin can implement.

A plugin is a module (or object) with functions marked ``@vision_pipe.hookimpl``
whose names are those below. Hooks are called with keyword arguments; a plugin
may accept any subset of a hook's arguments. Plugins are found through the
entry-point group ``vision_pipe.plugins`` and the ``plugins:`` list of a
pipeline YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline

PROJECT = "vision_pipe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------


@hookspec
def vision_pipe_stages() -> list[Callable[..., Any]]:
    """Return the stage factories this plugin provides.

    Called once per plugin when the plugin manager loads it. Each factory is a
    function (or class) marked with :func:`vision_pipe.stage`, whose parameters
    carry type hints. The factories are validated at once; a (kind, name) that
    another plugin registered already is an error naming both plugins unless
    the later one was marked ``override=True``.
    """


# -------------------------------------------------------------------------
# Pipeline lifecycle
# -------------------------------------------------------------------------


@hookspec
def vision_pipe_config_resolved(config: dict[str, Any]) -> None:
    """Called after a pipeline's YAML, its ``base:`` files and the overrides are
    merged, before validation. ``config`` is a plain dict the hook may change in
    place; the result is validated and saved with the run."""


@hookspec
def vision_pipe_pipeline_built(pipeline: Pipeline) -> None:
    """Called once the pipeline's stages are built and the chain checked."""


@hookspec
def vision_pipe_before_fit(pipeline: Pipeline, run_dir: Path) -> None:
    """Called before training starts; ``run_dir`` holds ``config.yaml`` already."""


@hookspec
def vision_pipe_after_fit(pipeline: Pipeline, run_dir: Path, metrics: dict[str, float]) -> None:
    """Called after training ended normally; ``metrics`` are the last logged values."""


@hookspec
def vision_pipe_before_test(pipeline: Pipeline, run_dir: Path) -> None:
    """Called before evaluating on the test split."""


@hookspec
def vision_pipe_after_test(pipeline: Pipeline, run_dir: Path, metrics: dict[str, float]) -> None:
    """Called with the test metrics (keys like ``test/acc``) after they were written to ``metrics.json``."""


@hookspec
def vision_pipe_before_predict(pipeline: Pipeline, inputs: list[Any]) -> None:
    """Called before predicting on ``inputs`` (paths or arrays)."""


@hookspec
def vision_pipe_after_predict(pipeline: Pipeline, predictions: list[Any]) -> None:
    """Called with the list of :class:`vision_pipe.results.Prediction`."""


@hookspec
def vision_pipe_on_error(pipeline: Pipeline, action: str, error: BaseException) -> None:
    """Called when ``fit``/``validate``/``test``/``predict`` (``action``) raises ``error``.
    The error is re-raised afterwards; the return value is ignored."""
