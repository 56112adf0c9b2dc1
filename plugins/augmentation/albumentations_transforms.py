"""Every albumentations transform as an augmentation stage, by its class name.

``- {name: HorizontalFlip, p: 0.5}`` in a pipeline's ``data.augmentation`` list
builds ``albumentations.HorizontalFlip(p=0.5)``. The stage parameters are the
transform's own constructor parameters (with its type hints), so the YAML is
validated against them and ``vision-pipe stages`` lists them; no transform
needs a hand-written wrapper. Masks and boxes follow the geometric transforms
(the pipeline composes them with the targets of its task).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import albumentations as A
import annotated_types

from vision_pipe import hookimpl, stage

#: Base classes and transforms that need inputs a pipeline YAML cannot give.
_SKIP = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D", "Lambda", "TemplateTransform"}


def _constrained(annotation: Any, metadata: list[Any]) -> Any:
    """``annotation`` with the numeric bounds among ``metadata`` (``Annotated[float, Ge(0), Le(1)]``)."""
    kinds = (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le)
    bounds = [m for m in metadata if isinstance(m, kinds)]
    return Annotated[(annotation, *bounds)] if bounds else annotation


def _factory(cls: type) -> Callable[..., Any]:
    """A typed factory with ``cls``'s constructor signature."""
    signature = inspect.signature(cls)
    # albumentations validates its parameters with a pydantic ``InitSchema``;
    # its field annotations are the resolved types of the constructor's hints,
    # and its bounds (``Field(ge=0, le=1)``) become the stage's constraints.
    schema = getattr(cls, "InitSchema", None)
    fields = getattr(schema, "model_fields", {})
    hints = {name: _constrained(field.annotation, field.metadata) for name, field in fields.items()}
    parameters = [
        p.replace(annotation=hints.get(p.name, Any))
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]

    def build(**params: Any) -> A.BasicTransform:
        return cls(**params)

    build.__signature__ = signature.replace(parameters=parameters, return_annotation=cls)  # type: ignore[attr-defined]
    build.__annotations__ = {p.name: p.annotation for p in parameters}
    build.__name__ = build.__qualname__ = cls.__name__
    build.__doc__ = inspect.getdoc(cls)
    build.__module__ = __name__
    return stage("augmentation", cls.__name__)(build)


def _transform_classes() -> list[type]:
    classes = []
    for name in sorted(dir(A)):
        obj = getattr(A, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, (A.ImageOnlyTransform, A.DualTransform))
            and not inspect.isabstract(obj)
            and name not in _SKIP
            and not name.startswith("_")
            and obj.__name__ == name  # skip deprecated aliases
        ):
            classes.append(obj)
    return classes


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [_factory(cls) for cls in _transform_classes()]
