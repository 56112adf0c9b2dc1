"""The stage registry: a stage factory's signature becomes its validated parameters.

Owns :class:`Parameter` (one typed factory parameter, its constraints and how
they read), :class:`StageEntry` (a registered factory, its pydantic parameter
model and :meth:`StageEntry.build`, the one place where stage parameters are
validated — for the YAML, the Python API and the testing kit alike),
:class:`StageRegistry` (all stages by kind and name) and :data:`RESERVED_KEYS`.

Type hints are read with their ``Annotated`` metadata, so constraints written
in a signature — ``Annotated[int, Field(ge=1)]``, ``Annotated[float,
annotated_types.Interval(gt=0, le=1)]``, ``Literal["avg", "max"]`` — are checked
before the factory runs, and factories need no hand-written range checks. How
those types read (docs, messages) is :mod:`vision_pipe.param_types`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pydantic

from vision_pipe.errors import PluginError, StageError, VisionPipeError, did_you_mean
from vision_pipe.param_types import CONSTRAINT_ERRORS, Loc, annotation_at, describe, path, type_str
from vision_pipe.stages import KINDS, StageContext, StageInfo

#: Keys of a stage entry in the YAML that are not factory parameters.
RESERVED_KEYS: dict[str, tuple[str, ...]] = {
    "loading": ("name",),
    "normalization": ("name",),
    "augmentation": ("name",),
    "backbone": ("name", "weights", "strict", "freeze", "unfreeze_at_epoch"),
    "head": ("name",),
}


class StageConflictError(PluginError):
    """Two plugins register the same (kind, name) and neither or both say ``override=True``."""


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
        return pydantic.create_model(
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
            problem = f"{did_you_mean(key, valid)} Its parameters: {', '.join(valid) or '(none)'}"
            return ParameterError(
                f"unknown parameter '{key}' for {self.label}.{problem}",
                loc=loc,
                problem=f"unknown parameter '{key}'.{problem}",
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
            annotation = annotation_at(param.annotation, loc[1:]) if param is not None else None
            if err["type"] in CONSTRAINT_ERRORS and annotation is not None:
                problem = f"{path(loc)} must be {describe(annotation)}, got {value!r}"
                if err["type"] == "literal_error" and isinstance(value, str):
                    choices = [str(a) for a in typing.get_args(annotation) if isinstance(a, str)]
                    hint = did_you_mean(value, choices, n=1)
                    problem += f".{hint}" if hint else ""
            else:
                problem = f"{path(loc)}: {err['msg']} (got {value!r})"
                if param is not None:
                    problem += f"; it must be {describe(param.annotation)}"
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


def make_entry(
    factory: Callable[..., Any], *, plugin: str | None = None, distribution: str | None = None
) -> StageEntry:
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
        #: disabled plugins (name → module), set by the plugin manager: named when a stage is unknown
        self.disabled: dict[str, str] = {}

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
                raise StageConflictError(
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
        raise StageError(self._disabled_note(name) + message)

    def _disabled_note(self, name: str) -> str:
        """``stage 'vgg' is provided by plugin 'vgg', which is disabled (--disable vgg). `` when a disabled
        plugin (by its name or its module's) is the likely provider; else the disabled plugins, if any."""
        for plugin, module in self.disabled.items():
            if name in (plugin, module.rsplit(".", 1)[-1]):
                return f"stage '{name}' is provided by plugin '{plugin}', which is disabled (--disable {plugin}). "
        if self.disabled:
            listing = ", ".join(f"'{p}'" for p in self.disabled)
            return f"stage '{name}' may be provided by a disabled plugin ({listing}). "
        return ""

    def discard_plugin(self, plugin: str) -> None:
        """Forget the stages of ``plugin`` (one that failed half-way through registering)."""
        self._entries = {key: e for key, e in self._entries.items() if e.plugin != plugin}

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[StageEntry]:
        order = {k: i for i, k in enumerate(KINDS)}
        items = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(items, key=lambda e: (order[e.kind], e.name))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries
