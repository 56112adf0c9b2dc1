"""Building the stage under test, for every check of the kit.

Owns how a check turns what it is given — a registry entry, a factory marked
with :func:`vision_pipe.stage` (built through a validated registry entry, as a
pipeline would), any other callable, or an already built stage — into the
built stage, how messages name that stage, the :class:`ContractError` a broken
rule raises, and the :class:`StageContext` the kit builds with (``KIT_CLASSES``, and as the
input statistics of the backbone ``KIT_INPUT_STATS``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from vision_pipe.errors import ContractError
from vision_pipe.registry import StageEntry, make_entry
from vision_pipe.stages import InputStats, StageContext, StageInfo

#: The class names the kit gives stages that need some (background first, for segmentation).
KIT_CLASSES: tuple[str, ...] = ("background", "circle", "square")
#: The input statistics of the kit's stand-in pretrained backbone (ImageNet's), seen by normalizations.
KIT_INPUT_STATS = InputStats((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "the testing kit (ImageNet's)")


def _label(stage_like: Any, kind: str) -> str:
    """How messages name the stage: ``backbone stage 'tiny' (plugin 'x')``."""
    if isinstance(stage_like, StageEntry):
        return f"{stage_like.kind} stage '{stage_like.name}' (plugin '{stage_like.plugin}')"
    info = getattr(stage_like, "__vision_pipe_stage__", None)
    if isinstance(info, StageInfo):
        return f"{info.kind} stage '{info.name}'"
    name = getattr(stage_like, "__name__", None) or type(stage_like).__name__
    return f"{kind} stage {name}"


def _call_factory(factory: Callable[..., Any], params: Mapping[str, Any], context: StageContext) -> Any:
    """Build with ``params`` as a pipeline would: a factory marked with :func:`vision_pipe.stage` through
    a validated registry entry (its signature's types and constraints are checked first); any other
    callable (e.g. an albumentations class) is called with ``params``, and ``context`` when its
    signature asks for it."""
    if isinstance(getattr(factory, "__vision_pipe_stage__", None), StageInfo):
        return make_entry(factory).build(params, context)
    kwargs = dict(params)
    try:
        if "context" in inspect.signature(factory).parameters:
            kwargs["context"] = context
    except (TypeError, ValueError):
        pass
    return factory(**kwargs)


def _build(
    stage_like: Any,
    kind: str,
    expected: type | tuple[type, ...],
    what: str,
    context: StageContext,
    params: Mapping[str, Any],
) -> tuple[Any, str]:
    """Build ``stage_like`` (entry, factory or instance) and check the kind of object it gives."""
    label = _label(stage_like, kind)
    declared = stage_like.kind if isinstance(stage_like, StageEntry) else None
    info = getattr(stage_like, "__vision_pipe_stage__", None)
    declared = declared or (info.kind if isinstance(info, StageInfo) else None)
    if declared is not None and declared != kind:
        raise ContractError(f"{label} is a {declared} stage, not a {kind} stage")
    if isinstance(stage_like, expected):
        if params:
            raise ContractError(f"{label}: parameters {sorted(params)} given for a stage that is already built")
        return stage_like, label
    try:
        if isinstance(stage_like, StageEntry):
            built = stage_like.build(dict(params), context)
        elif callable(stage_like):
            built = _call_factory(stage_like, params, context)
        else:
            raise ContractError(f"{label}: expected a stage factory, a registry entry or {what}, got {stage_like!r}")
    except ContractError:
        raise
    except Exception as exc:
        raise ContractError(
            f"{label} could not be built with parameters {dict(params)}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(built, expected):
        raise ContractError(f"{label} returned {type(built).__name__}; a {kind} stage must return {what}")
    return built, label


def _fail(label: str, rule: str) -> ContractError:
    return ContractError(f"{label}: {rule}")


def _context(task: str = "classification", input_size: tuple[int, int] = (32, 32)) -> StageContext:
    return StageContext(
        task=task,
        seed=0,
        input_size=tuple(input_size),  # type: ignore[arg-type]
        class_names=KIT_CLASSES,
        backbone_input_stats=KIT_INPUT_STATS,
    )
