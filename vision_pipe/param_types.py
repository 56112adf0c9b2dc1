"""Reading stage parameter types: their constraints, as words and in error messages.

Owns how an annotation reads — ``Annotated[int, Field(ge=1)]`` is ``int ≥ 1``,
``Annotated[float, Field(gt=0, le=1)]`` is ``float in (0, 1]``, ``Literal["avg",
"max"]`` is ``'avg' | 'max'`` — for ``vision-pipe stages``, ``docs/stages.md`` and the
messages of :class:`vision_pipe.registry.ParameterError`. Constraints are pydantic's
``Field(...)`` or ``annotated_types`` objects (``Ge``, ``Interval``, ``MinLen``, ...).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union

import annotated_types
import pydantic

#: Where a value sits inside a stage's parameters: ``("nms_thresh",)``, ``("variances", 1)``.
Loc = tuple[str | int, ...]


def _bounds(metadata: Iterable[Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """(``[(op, value)]`` bounds, other constraint words) of ``Annotated`` metadata."""
    bounds: list[tuple[str, Any]] = []
    words: list[str] = []
    for item in metadata:
        if isinstance(item, pydantic.fields.FieldInfo):
            sub, more = _bounds(item.metadata)
            bounds += sub
            words += more
            continue
        for attr, op in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, (annotated_types.BaseMetadata, annotated_types.Interval)):
                bounds.append((op, value))
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            words.append(f"≥ {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if isinstance(item, annotated_types.MaxLen):
            words.append(f"≤ {item.max_length} items")
        if isinstance(item, annotated_types.Len):
            words.append(
                f"{item.min_length} items"
                if item.min_length == item.max_length
                else f"{item.min_length}..{item.max_length} items"
            )
        if isinstance(item, annotated_types.MultipleOf):
            words.append(f"multiple of {item.multiple_of}")
    return bounds, words


def constraint_str(metadata: Iterable[Any]) -> str:
    """``Annotated`` metadata as words: ``≥ 1``, ``in (0, 1]``, ``3 items``; empty if none."""
    bounds, words = _bounds(metadata)
    low = [(op, v) for op, v in bounds if op in (">", "≥")]
    high = [(op, v) for op, v in bounds if op in ("<", "≤")]
    parts: list[str] = []
    if low and high:
        (lop, lv), (hop, hv) = low[-1], high[-1]
        parts.append(f"in {'(' if lop == '>' else '['}{lv}, {hv}{')' if hop == '<' else ']'}")
    elif low or high:
        op, value = (low or high)[-1]
        parts.append(f"{op} {value}")
    if len(words) > 1 and words[0].startswith("≥ ") and words[1].startswith("≤ "):
        low_n, high_n = words[0].split()[1], words[1].split()[1]
        words = [f"{low_n} items" if low_n == high_n else f"{low_n}..{high_n} items", *words[2:]]
    return ", ".join(parts + words)


def type_str(annotation: Any) -> str:
    """A readable type: ``int ≥ 1``, ``float in (0, 1] | None``, ``'avg' | 'max'``, ``list[str]``."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "Any"
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        base = type_str(args[0])
        extra = constraint_str(annotation.__metadata__)
        if not extra:
            return base
        return f"{base} ({extra})" if " | " in base or "item" in extra else f"{base} {extra}"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_str(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        if name == "Callable" or not args:
            return name
        return f"{name}[{', '.join(type_str(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    text = repr(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("<class '", "").replace("'>", "")


#: pydantic error types whose message is better said with the parameter's own constraint.
CONSTRAINT_ERRORS = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
    "too_short", "too_long", "multiple_of", "finite_number",
}  # fmt: skip


def describe(annotation: Any) -> str:
    """What a value of ``annotation`` must be, for an error message."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Annotated and typing.get_origin(args[0]) is None:
        extra = constraint_str(annotation.__metadata__)
        if extra:
            return extra if extra.startswith("in ") or extra[0] in "<>≤≥" else f"{type_str(args[0])} with {extra}"
    if origin is Union or origin is types.UnionType:
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            return describe(real[0])
    return type_str(annotation)


def _unwrap(annotation: Any) -> Any:
    """``annotation`` without its ``Annotated`` layer and ``| None``."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
        elif origin is Union or origin is types.UnionType:
            real = [a for a in args if a is not type(None)]
            if len(real) != 1:
                return annotation
            annotation = real[0]
        else:
            return annotation


def annotation_at(annotation: Any, loc: Loc) -> Any:
    """The annotation of the value at ``loc`` (list indices, tuple positions) inside ``annotation``."""
    for part in loc:
        outer = _unwrap(annotation)
        args = typing.get_args(outer)
        if not isinstance(part, int) or not args or typing.get_origin(outer) in (Union, types.UnionType):
            return None
        annotation = args[0] if (len(args) == 1 or args[-1] is Ellipsis) else args[min(part, len(args) - 1)]
    return annotation


def path(loc: Loc) -> str:
    text = str(loc[0])
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
