"""Plugin manager and stage registry.

Plugins are found through the entry-point group ``vision_pipe.plugins`` (the
built-in stages are registered that way too) and through module paths named
in a pipeline YAML (``plugins: [my_package.my_stages]``). Every stage factory a
plugin returns from ``vision_pipe_stages`` is validated when the plugin loads.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pluggy
import pydantic

from vision_pipe import hookspecs
from vision_pipe.errors import PluginError, StageError, VisionPipeError, did_you_mean
from vision_pipe.stages import KINDS, StageContext, StageInfo

ENTRY_POINT_GROUP = "vision_pipe.plugins"
#: Environment variable: comma-separated plugin names not to load.
DISABLE_ENV = "VISION_PIPE_DISABLE_PLUGINS"
#: Environment variable: set to 1 to load no entry-point plugins at all.
NO_AUTOLOAD_ENV = "VISION_PIPE_NO_AUTOLOAD"

#: Keys of a stage entry in the YAML that are not factory parameters.
RESERVED_KEYS: dict[str, tuple[str, ...]] = {
    "loading": ("name",),
    "normalization": ("name",),
    "augmentation": ("name",),
    "backbone": ("name", "weights", "freeze"),
    "head": ("name",),
}


@dataclass(frozen=True)
class Parameter:
    """One parameter of a stage factory, as the YAML sees it."""

    name: str
    annotation: Any
    default: Any  #: ``inspect.Parameter.empty`` when required

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def type_str(self) -> str:
        return _type_str(self.annotation)


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

    def build(self, params: dict[str, Any], context: StageContext | None = None) -> Any:
        """Call the factory with validated ``params`` (and ``context`` if it takes one)."""
        kwargs = dict(params)
        if self.takes_context:
            kwargs["context"] = context
        try:
            return self.factory(**kwargs)
        except VisionPipeError:
            raise
        except Exception as exc:  # a factory's own ValueError etc.
            raise StageError(
                f"{self.kind} stage '{self.name}' (plugin '{self.plugin}') could not be built: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _type_str(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "Any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("<class '", "").replace("'>", "")


def _signature_parameters(factory: Callable[..., Any], where: str) -> tuple[list[Parameter], bool]:
    """Read a factory's typed parameters; reject what the YAML could not validate."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: cannot read the signature of {factory!r}: {exc}") from exc
    try:
        hints = typing.get_type_hints(factory)
    except Exception:
        # Annotations that cannot be evaluated (e.g. names only imported under TYPE_CHECKING).
        hints = {}
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


class StageRegistry:
    """All stages by (kind, name)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], StageEntry] = {}

    def add(self, factory: Callable[..., Any], *, plugin: str, distribution: str | None = None) -> StageEntry:
        """Validate and register a factory marked with :func:`vision_pipe.stage`."""
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
        params, takes_context = _signature_parameters(factory, f"{where}, {info.kind} stage '{info.name}'")
        for p in params:
            if p.name in RESERVED_KEYS[info.kind]:
                raise PluginError(
                    f"{where}: {info.kind} stage '{info.name}' has a parameter '{p.name}', "
                    f"which is reserved for {info.kind} entries ({', '.join(RESERVED_KEYS[info.kind])}); rename it"
                )
        entry = StageEntry(info.kind, info.name, factory, plugin, distribution, params, takes_context)
        key = (info.kind, info.name)
        previous = self._entries.get(key)
        if previous is not None:
            # Whichever of the two says override=True wins, in any loading order.
            previous_overrides = previous.factory.__vision_pipe_stage__.override
            if info.override == previous_overrides:
                prev_where = f"plugin '{previous.plugin}'" + (
                    f" (package {previous.distribution})" if previous.distribution else ""
                )
                both = " Both say override=True: disable one of the plugins." if info.override else ""
                raise PluginError(
                    f"{info.kind} stage '{info.name}' is registered twice: by {prev_where} and by {where}.{both} "
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
        """The stage (kind, name), or a :class:`StageError` listing what exists."""
        entry = self._entries.get((kind, name))
        if entry is not None:
            return entry
        elsewhere = [k for (k, n) in self._entries if n == name]
        names = self.names(kind)
        if elsewhere:
            raise StageError(
                f"'{name}' is a {' and '.join(elsewhere)} stage, not a {kind} stage; "
                f"{kind} stages: {', '.join(names) or '(none)'}"
            )
        plugins = sorted({e.plugin for e in self._entries.values()})
        raise StageError(
            f"unknown {kind} stage '{name}'.{did_you_mean(name, names)} "
            f"Available {kind} stages: {', '.join(names) or '(none)'}. "
            f"Loaded plugins: {', '.join(plugins) or '(none)'}"
        )

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._entries if k == kind)

    def entries(self, kind: str | None = None) -> list[StageEntry]:
        order = {k: i for i, k in enumerate(KINDS)}
        items = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(items, key=lambda e: (order[e.kind], e.name))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries


@dataclass
class PluginInfo:
    """A loaded plugin: its name, the package that provides it, and its stages."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    stages: list[tuple[str, str]] = field(default_factory=list)


class PluginManager:
    """Loads plugins, validates their hook implementations and collects their stages.

    ``disabled``: plugin names (entry-point names or module paths) not to load;
    also read from ``$VISION_PIPE_DISABLE_PLUGINS`` (comma-separated).
    ``autoload``: load the ``vision_pipe.plugins`` entry points (default: unless
    ``$VISION_PIPE_NO_AUTOLOAD`` is set to 1).
    """

    def __init__(self, *, disabled: Iterable[str] = (), autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = StageRegistry()
        self.plugins: dict[str, PluginInfo] = {}
        env_disabled = [s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()]
        self.disabled = set(disabled) | set(env_disabled)
        if autoload is None:
            autoload = os.environ.get(NO_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
        if autoload:
            self.load_entry_points()

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``manager.hook.vision_pipe_before_fit(...)``)."""
        return self.pm.hook

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every plugin of the entry-point group that is not disabled."""
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            if ep.name in self.disabled or ep.value in self.disabled or ep.name in self.plugins:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"Error loading plugin '{ep.name}' (package {dist or 'unknown'}, module {ep.value}): "
                    f"{type(exc).__name__}: {exc}. Disable it with --disable {ep.name} or "
                    f"{DISABLE_ENV}={ep.name}"
                ) from exc
            self.register(obj, name=ep.name, distribution=dist, version=version)

    def load_module(self, module_path: str) -> None:
        """Import and register a plugin module named in a pipeline YAML."""
        if module_path in self.plugins or module_path in self.disabled:
            return
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            if exc.name and module_path.startswith(exc.name):
                raise PluginError(
                    f"plugin module '{module_path}' not found; is it installed or on PYTHONPATH? ({exc})"
                ) from exc
            raise PluginError(f"Error loading plugin '{module_path}': {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise PluginError(f"Error loading plugin '{module_path}': {type(exc).__name__}: {exc}") from exc
        self.register(module, name=module_path)

    def register(
        self, plugin: object, *, name: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        """Register a plugin object (usually a module) and its stages."""
        if isinstance(plugin, type):
            raise PluginError(
                f"plugin '{name}' is a class; register an instance of it (have you forgotten the `()`?)"
            )
        known = {h for h in dir(hookspecs) if h.startswith("vision_pipe_")}
        unknown = [
            attr
            for attr in dir(plugin)
            if attr.startswith("vision_pipe_") and callable(getattr(plugin, attr, None)) and attr not in known
        ]
        if unknown:
            raise PluginError(
                f"plugin '{name}' defines unknown hook '{unknown[0]}'." + did_you_mean(unknown[0], sorted(known))
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}' has an invalid hook implementation: {exc}") from exc
        except ValueError as exc:
            raise PluginError(f"plugin '{name}' could not be registered: {exc}") from exc
        module_name = getattr(plugin, "__name__", type(plugin).__module__)
        info = PluginInfo(name, module_name, distribution, version)
        self.plugins[name] = info
        for impl in self.pm.hook.vision_pipe_stages.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            factories = impl.function()
            if factories is None:
                continue
            if not isinstance(factories, (list, tuple)):
                raise PluginError(f"plugin '{name}': vision_pipe_stages must return a list of factories")
            for factory in factories:
                entry = self.registry.add(factory, plugin=name, distribution=distribution)
                info.stages.append((entry.kind, entry.name))
