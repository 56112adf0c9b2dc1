"""The stage registry: a stage factory's signature becomes its validated parameters.

Owns :class:`Parameter` (one typed factory parameter, its constraints and how
they read), :class:`StageEntry` (a registered factory, its pydantic parameter
model and :meth:`StageEntry.build`, the one place where stage parameters are
validated — for the YAML, the Python API and the testing kit alike),
:class:`StageRegistry` (all stages by kind and name) and :data:`RESERVED_KEYS`.

Type hints are read with their ``Annotated`` metadata, so constraints written
in a signature — ``Annotated[int, Field(ge=1)]``, ``Annotated[float,
annotated_types.Interval(gt=0, le=1)]``, ``Literal["avg", "max"]`` — are checked
before the factory runs, and factories need no hand-written range checks.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Union

import annotated_types
import pydantic

from vision_pipe.errors import PluginError, StageError, VisionPipeError, did_you_mean
from vision_pipe.stages import KINDS, StageContext, StageInfo

#: Keys of a stage entry in the YAML that are not factory parameters.
RESERVED_KEYS: dict[str, tuple[str, ...]] = {
    "loading": ("name",),
    "normalization": ("name",),
    "augmentation": ("name",),
    "backbone": ("name", "weights", "freeze"),
    "head": ("name",),
}

Loc = tuple[str | int, ...]


class ParameterError(StageError):
    """A stage parameter failed validation.

    ``loc`` is where, inside the stage's parameters (``("nms_thresh",)``,
    ``("variances", 1)``); ``problem`` the message without the stage's name.
    """

    def __init__(self, message: str, *, loc: Loc, problem: str, missing: bool = False) -> None:
        super().__init__(message)
        self.loc = loc
        self.problem = problem
        self.missing = missing


# ----------------------------------------------------------------------------
# reading constraints and types
# ----------------------------------------------------------------------------


def _bounds(metadata: typing.Iterable[Any]) -> tuple[list[tuple[str, Any]], list[str]]:
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


def constraint_str(metadata: typing.Iterable[Any]) -> str:
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


@dataclass(frozen=True)
class Parameter:
    """One parameter of a stage factory, as the YAML sees it.

    ``annotation`` keeps its ``Annotated`` constraints and ``Literal`` choices.
    """

    name: str
    annotation: Any
    default: Any  #: ``inspect.Parameter.empty`` when required

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def type_str(self) -> str:
        """The type with its constraints, as ``vision-pipe stages`` shows it (``float in (0, 1]``)."""
        return type_str(self.annotation)


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------

#: pydantic error types whose message is better said with the parameter's own constraint.
_CONSTRAINT_ERRORS = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
    "too_short", "too_long", "multiple_of", "finite_number",
}  # fmt: skip


def _describe(annotation: Any) -> str:
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
            return _describe(real[0])
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


def _annotation_at(annotation: Any, loc: Loc) -> Any:
    """The annotation of the value at ``loc`` (list indices, tuple positions) inside ``annotation``."""
    for part in loc:
        outer = _unwrap(annotation)
        args = typing.get_args(outer)
        if not isinstance(part, int) or not args or typing.get_origin(outer) in (Union, types.UnionType):
            return None
        annotation = args[0] if (len(args) == 1 or args[-1] is Ellipsis) else args[min(part, len(args) - 1)]
    return annotation


def _path(loc: Loc) -> str:
    text = str(loc[0])
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


@dataclass
class StageEntry:
    """A registered stage: its factory, where it came from, and its parameters."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str  #: plugin name (entry-point name or module path)
    distribution: str | None  #: the package that provides the plugin, if installed
    parameters: list[Parameter]
    takes_context: bool
    overrides: str | None = None  #: the plugin whose stage this one replaced

    @property
    def label(self) -> str:
        """How messages name the stage: ``head stage 'ssd'``."""
        return f"{self.kind} stage '{self.name}'"

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.factory) or ""

    @property
    def summary(self) -> str:
        return self.doc.split("\n\n")[0].replace("\n", " ")

    @cached_property
    def params_model(self) -> type[pydantic.BaseModel]:
        """A pydantic model of the factory's parameters (unknown keys forbidden)."""
        fields: dict[str, Any] = {}
        for p in self.parameters:
            default = ... if p.required else p.default
            fields[p.name] = (p.annotation, default)
        return pydantic.create_model(  # type: ignore[call-overload,no-any-return]
            f"{self.kind}_{self.name}_params",
            __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )

    def validate(self, params: typing.Mapping[str, Any]) -> pydantic.BaseModel:
        """``params`` checked against the factory's signature (types, constraints, choices).

        Raises :class:`ParameterError` naming the stage, the parameter and what it must be.
        """
        try:
            return self.params_model.model_validate(dict(params))
        except pydantic.ValidationError as exc:
            raise self._parameter_error(exc, params) from None

    def _parameter_error(self, exc: pydantic.ValidationError, params: typing.Mapping[str, Any]) -> ParameterError:
        errors = exc.errors()
        err = errors[0]
        loc: Loc = tuple(err["loc"])
        by_name = {p.name: p for p in self.parameters}
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        missing = False
        if err["type"] == "extra_forbidden":
            key = str(loc[0])
            valid = [p.name for p in self.parameters] + [r for r in RESERVED_KEYS.get(self.kind, ()) if r != "name"]
            problem = (
                f"unknown parameter '{key}'.{did_you_mean(key, valid)} Its parameters: {', '.join(valid) or '(none)'}"
            )
            return ParameterError(
                f"unknown parameter '{key}' for {self.label}.{did_you_mean(key, valid)} "
                f"Its parameters: {', '.join(valid) or '(none)'}",
                loc=loc,
                problem=problem,
            )
        if err["type"] == "missing":
            missing = True
            problem = f"required parameter '{loc[0]}' is missing"
        else:
            # pydantic tries each member of a union; report the error at the deepest real location
            loc = tuple(part for part in loc if part in by_name or isinstance(part, int))
            loc = loc or tuple(err["loc"])
            value = err.get("input")
            param = by_name.get(str(loc[0]))
            annotation = _annotation_at(param.annotation, loc[1:]) if param is not None else None
            if err["type"] in _CONSTRAINT_ERRORS and annotation is not None:
                problem = f"{_path(loc)} must be {_describe(annotation)}, got {value!r}"
                if err["type"] == "literal_error" and isinstance(value, str):
                    choices = [str(a) for a in typing.get_args(annotation) if isinstance(a, str)]
                    hint = did_you_mean(value, choices, n=1)
                    problem += f".{hint}" if hint else ""
            else:
                problem = f"{_path(loc)}: {err['msg']} (got {value!r})"
                if param is not None:
                    problem += f"; it must be {_describe(param.annotation)}"
        return ParameterError(f"{self.label}: {problem}{more}", loc=loc, problem=problem + more, missing=missing)

    def build(self, params: typing.Mapping[str, Any], context: StageContext | None = None) -> Any:
        """Validate ``params`` (:meth:`validate`), then call the factory (with ``context`` if it takes one)."""
        validated = self.validate(params)
        kwargs = {p.name: getattr(validated, p.name) for p in self.parameters}
        if self.takes_context:
            kwargs["context"] = context
        try:
            return self.factory(**kwargs)
        except VisionPipeError:
            raise
        except Exception as exc:  # a factory's own ValueError etc.
            raise StageError(
                f"{self.label} (plugin '{self.plugin}') could not be built: {type(exc).__name__}: {exc}"
            ) from exc


# ----------------------------------------------------------------------------
# reading a factory
# ----------------------------------------------------------------------------


def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's type hints with ``Annotated`` metadata kept ({} if they cannot be evaluated)."""
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        # Annotations that cannot be evaluated (e.g. names only imported under TYPE_CHECKING).
        return {}


def signature_parameters(factory: Callable[..., Any], where: str) -> tuple[list[Parameter], bool]:
    """Read a factory's typed parameters (and whether it takes ``context``); reject what the YAML
    could not validate."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: cannot read the signature of {factory!r}: {exc}") from exc
    hints = _hints(factory)
    params: list[Parameter] = []
    takes_context = False
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise PluginError(
                f"{where}: parameter '*{p.name}' is not allowed: a stage's parameters must be named "
                "so that the YAML can be validated against them"
            )
        if p.name == "context":
            takes_context = True
            continue
        annotation = hints.get(p.name, p.annotation)
        if annotation is inspect.Parameter.empty:
            raise PluginError(
                f"{where}: parameter '{p.name}' has no type hint. Stage parameters are validated "
                f"from their type hints; write e.g. `{p.name}: int = ...`"
            )
        if isinstance(annotation, str):
            annotation = Any
        params.append(Parameter(p.name, annotation, p.default))
    return params, takes_context


def make_entry(factory: Callable[..., Any], *, plugin: str | None = None, distribution: str | None = None) -> StageEntry:
    """A :class:`StageEntry` for a factory marked with :func:`vision_pipe.stage`, checked as at registration.

    ``plugin`` defaults to the factory's module. Raises :class:`PluginError` for what the
    YAML could not validate (unmarked, unknown kind, untyped or variadic or reserved parameters).
    """
    plugin = plugin or getattr(factory, "__module__", None) or "?"
    where = f"plugin '{plugin}'" + (f" (package {distribution})" if distribution else "")
    info = getattr(factory, "__vision_pipe_stage__", None)
    if not callable(factory):
        hint = ""
        if info is None and callable(type(factory)):
            hint = " (an instance was given; return the factory function or class itself)"
        raise PluginError(f"{where}: vision_pipe_stages returned {factory!r}, which is not callable{hint}")
    if not isinstance(info, StageInfo):
        raise PluginError(
            f"{where}: {getattr(factory, '__qualname__', factory)!r} is not marked as a stage; "
            "decorate it with @vision_pipe.stage(kind, name)"
        )
    if info.kind not in KINDS:
        raise PluginError(
            f"{where}: stage '{info.name}' has unknown kind '{info.kind}'; kinds are {', '.join(KINDS)}."
            + did_you_mean(info.kind, KINDS)
        )
    params, takes_context = signature_parameters(factory, f"{where}, {info.kind} stage '{info.name}'")
    for p in params:
        if p.name in RESERVED_KEYS[info.kind]:
            raise PluginError(
                f"{where}: {info.kind} stage '{info.name}' has a parameter '{p.name}', "
                f"which is reserved for {info.kind} entries ({', '.join(RESERVED_KEYS[info.kind])}); rename it"
            )
    return StageEntry(info.kind, info.name, factory, plugin, distribution, params, takes_context)


# ----------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------


class StageRegistry:
    """All stages by (kind, name).

    ``load_errors`` (plugin name → message), set by the plugin manager, are named when a
    stage is unknown: a plugin that failed to load may be the one that provides it.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], StageEntry] = {}
        self.load_errors: dict[str, str] = {}

    def add(self, factory: Callable[..., Any], *, plugin: str, distribution: str | None = None) -> StageEntry:
        """Validate and register a factory marked with :func:`vision_pipe.stage`."""
        entry = make_entry(factory, plugin=plugin, distribution=distribution)
        where = f"plugin '{plugin}'" + (f" (package {distribution})" if distribution else "")
        info: StageInfo = factory.__vision_pipe_stage__  # type: ignore[attr-defined]
        key = (entry.kind, entry.name)
        previous = self._entries.get(key)
        if previous is not None:
            # Whichever of the two says override=True wins, in any loading order.
            previous_overrides = previous.factory.__vision_pipe_stage__.override  # type: ignore[attr-defined]
            if info.override == previous_overrides:
                prev_where = f"plugin '{previous.plugin}'" + (
                    f" (package {previous.distribution})" if previous.distribution else ""
                )
                both = " Both say override=True: disable one of the plugins." if info.override else ""
                raise PluginError(
                    f"{entry.kind} stage '{entry.name}' is registered twice: by {prev_where} and by {where}.{both} "
                    "Disable one of the plugins, or mark the intended one with "
                    "@stage(..., override=True)"
                )
            if previous_overrides:
                previous.overrides = plugin
                return previous
            entry.overrides = previous.plugin
        self._entries[key] = entry
        return entry

    def get(self, kind: str, name: str) -> StageEntry:
        """The stage (kind, name), or a :class:`StageError` listing what exists (and the plugins
        that failed to load, which may provide it)."""
        entry = self._entries.get((kind, name))
        if entry is not None:
            return entry
        elsewhere = [k for (k, n) in self._entries if n == name]
        names = self.names(kind)
        if elsewhere:
            message = (
                f"'{name}' is a {' and '.join(elsewhere)} stage, not a {kind} stage; "
                f"{kind} stages: {', '.join(names) or '(none)'}"
            )
        else:
            plugins = sorted({e.plugin for e in self._entries.values()})
            message = (
                f"unknown {kind} stage '{name}'.{did_you_mean(name, names)} "
                f"Available {kind} stages: {', '.join(names) or '(none)'}. "
                f"Loaded plugins: {', '.join(plugins) or '(none)'}"
            )
        for plugin, error in self.load_errors.items():
            message += f"\nplugin '{plugin}' failed to load and may provide it: {error}"
        raise StageError(message)

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[StageEntry]:
        order = {k: i for i, k in enumerate(KINDS)}
        items = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(items, key=lambda e: (order[e.kind], e.name))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries
