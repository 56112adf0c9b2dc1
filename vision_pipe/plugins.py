"""The plugin manager: finds plugins, validates their hooks and collects their stages.

Plugins are found through the entry-point group ``vision_pipe.plugins`` (the
built-in stages are registered that way too) and through module paths named
in a pipeline YAML (``plugins: [my_package.my_stages]``). :class:`PluginManager`
is a :class:`pluggy.PluginManager` (as pytest's ``PytestPluginManager``): pluggy
loads the entry points, blocks disabled plugins, checks hook implementations
against the specs and remembers each plugin's package; this module turns its
errors into ours and registers each plugin's stages in the
:class:`~vision_pipe.registry.StageRegistry`.

An installed plugin that fails to load does not stop the others: its error is
kept in :attr:`PluginManager.load_errors`, one warning lists them all, and a
pipeline fails only if it needs a stage that is not registered (the error then
names the plugins that failed to load).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from vision_pipe import hookspecs
from vision_pipe.errors import PluginError, did_you_mean
from vision_pipe.registry import RESERVED_KEYS, StageConflictError, StageRegistry

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "NO_AUTOLOAD_ENV",
    "RESERVED_KEYS",
    "PluginInfo",
    "PluginLoadWarning",
    "PluginManager",
]

ENTRY_POINT_GROUP = "vision_pipe.plugins"
#: Environment variable: comma-separated plugin names not to load.
DISABLE_ENV = "VISION_PIPE_DISABLE_PLUGINS"
#: Environment variable: set to 1 to load no entry-point plugins at all.
NO_AUTOLOAD_ENV = "VISION_PIPE_NO_AUTOLOAD"


class PluginLoadWarning(UserWarning):
    """Some installed plugins failed to load; the others work."""


@dataclass
class PluginInfo:
    """A loaded plugin: its name, the package that provides it, and its stages."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    stages: list[tuple[str, str]] = field(default_factory=list)


class PluginManager(pluggy.PluginManager):
    """Loads plugins, validates their hook implementations and collects their stages.

    ``disabled``: plugin names (entry-point names or module paths) not to load;
    also read from ``$VISION_PIPE_DISABLE_PLUGINS`` (comma-separated).
    ``autoload``: load the ``vision_pipe.plugins`` entry points (default: unless
    ``$VISION_PIPE_NO_AUTOLOAD`` is set to 1).

    ``plugins``: the loaded plugins by name; ``load_errors``: the installed
    plugins that failed to load, by name (a :class:`PluginError` each).
    """

    def __init__(self, *, disabled: Iterable[str] = (), autoload: bool | None = None) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.registry = StageRegistry()
        self.plugins: dict[str, PluginInfo] = {}
        self.load_errors: dict[str, PluginError] = {}
        self.registry.load_errors = self.load_errors  # type: ignore[assignment]
        env_disabled = [s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()]
        #: the plugins disabled by the caller (``--disable``), checked by :meth:`check_disabled`
        self.disabled_on_request = list(dict.fromkeys(disabled))
        self.disabled = set(disabled) | set(env_disabled)
        for name in self.disabled:
            self.set_blocked(name)
        self.registry.disabled = {name: self._disabled_module(name) for name in sorted(self.disabled)}
        self._loading: metadata.EntryPoint | None = None
        if autoload is None:
            autoload = os.environ.get(NO_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
        if autoload:
            self.load_entry_points()

    # -- disabled plugins -------------------------------------------------------

    @staticmethod
    def _entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, str]:
        """The installed plugins: entry-point name → module."""
        return {ep.name: ep.value for ep in metadata.entry_points(group=group)}

    def _disabled_module(self, name: str) -> str:
        """The module of the disabled plugin ``name`` (its entry point's, or ``name`` itself for a module path)."""
        return self._entry_points().get(name, name)

    def check_disabled(self, modules: Iterable[str] = ()) -> None:
        """Raise a :class:`PluginError` for a ``--disable`` name that is no installed plugin (entry-point name
        or module) and none of ``modules`` (a pipeline's ``plugins:``), with the closest names."""
        installed = self._entry_points()
        known = [*installed, *installed.values(), *self.plugins, *modules]
        for name in self.disabled_on_request:
            if name not in known:
                raise PluginError(
                    f"--disable {name}: no plugin '{name}' is installed or named in the pipeline."
                    f"{did_you_mean(name, known)} Installed plugins: {', '.join(sorted(installed)) or '(none)'}"
                )

    # -- entry points ----------------------------------------------------------

    def load_entry_points(
        self, group: str = ENTRY_POINT_GROUP, *, names: Iterable[str] | None = None, warn: bool = True
    ) -> None:
        """Load every plugin of the entry-point group that is not disabled (only ``names``, if given).

        A plugin that fails to load is recorded in :attr:`load_errors` (and warned
        about, all at once); the others load. Two plugins registering the same
        stage is an error at once: which one to use is for the user to say.
        """
        failed: list[str] = []
        wanted = None if names is None else set(names)
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            if wanted is not None and ep.name not in wanted:
                continue
            if ep.value in self.disabled:
                self.set_blocked(ep.name)
            if self.is_blocked(ep.name) or self.has_plugin(ep.name) or ep.name in self.load_errors:
                continue
            self._loading = ep
            try:
                self.load_setuptools_entrypoints(group, name=ep.name)
            except StageConflictError:
                raise  # not a broken plugin: which of the two to use is for the user to say
            except Exception as exc:
                package = ep.dist.name if ep.dist is not None else "unknown"
                cause = exc.__cause__ if isinstance(exc, PluginError) and exc.__cause__ is not None else exc
                what = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                error = PluginError(
                    f"Error loading plugin '{ep.name}' (package {package}, module {ep.value}): {what.rstrip('.')}. "
                    f"Disable it with --disable {ep.name} or {DISABLE_ENV}={ep.name}"
                )
                error.__cause__ = cause
                self.load_errors[ep.name] = error
                failed.append(ep.name)
            finally:
                self._loading = None
        for plugin, dist in self.list_plugin_distinfo():
            name = self.get_name(plugin)
            if name in self.plugins:
                self.plugins[name].distribution = dist.project_name
                self.plugins[name].version = dist.version
        if failed and warn:
            listing = "\n".join(f"  {self.load_errors[name]}" for name in failed)
            warnings.warn(
                f"{len(failed)} plugin(s) failed to load; pipelines that need their stages will fail:\n{listing}",
                PluginLoadWarning,
                stacklevel=2,
            )

    def load_module(self, module_path: str) -> None:
        """Import and register a plugin module named in a pipeline YAML (its errors raise at once)."""
        if self.has_plugin(module_path) or self.is_blocked(module_path):
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
        if self.is_registered(module):
            return  # already loaded, e.g. through its entry point under another name
        self.register(module, name=module_path)

    # -- registration ----------------------------------------------------------

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> str | None:
        """Register a plugin object (usually a module): validate its hooks, then collect its stages."""
        name = name or self.get_canonical_name(plugin)
        if isinstance(plugin, type):
            raise PluginError(f"plugin '{name}' is a class; register an instance of it (have you forgotten the `()`?)")
        ep = self._loading
        if ep is not None and ep.name == name and ep.dist is not None:
            distribution = distribution or ep.dist.name
            version = version or ep.dist.version
        # pluggy ignores functions without @hookimpl; a misspelt one is still worth a word
        unmarked = [
            attr
            for attr in dir(plugin)
            if attr.startswith("vision_pipe_")
            and callable(getattr(plugin, attr, None))
            and self.parse_hookimpl_opts(plugin, attr) is None
            and not hasattr(self.hook, attr)
        ]
        if unmarked:
            known = self._known_hooks()
            raise PluginError(
                f"plugin '{name}' defines unknown hook '{unmarked[0]}'.{did_you_mean(unmarked[0], known)} "
                f"Hooks: {', '.join(known)}"
            )
        try:
            registered = super().register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise self._hook_error(plugin, name, exc) from exc
        except ValueError as exc:
            raise PluginError(f"plugin '{name}' could not be registered: {exc}") from exc
        if registered is None:  # blocked
            return None
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            error = self._unknown_hook_error(plugin, name)
            self.unregister(plugin)
            raise error from exc
        module_name = getattr(plugin, "__name__", type(plugin).__module__)
        info = PluginInfo(name, module_name, distribution, version)
        try:
            self._collect_stages(plugin, info)
        except BaseException:
            self.registry.discard_plugin(name)
            self.unregister(plugin)
            raise
        self.plugins[name] = info
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        """Unregister a plugin (and forget its stages' listing; registered stages stay)."""
        name = name or (self.get_name(plugin) if plugin is not None else None)
        removed = super().unregister(plugin, name)
        self.plugins.pop(name or "", None)
        return removed

    def _collect_stages(self, plugin: object, info: PluginInfo) -> None:
        for impl in self.hook.vision_pipe_stages.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            factories = impl.function()
            if factories is None:
                continue
            if not isinstance(factories, (list, tuple)):
                raise PluginError(f"plugin '{info.name}': vision_pipe_stages must return a list of factories")
            for factory in factories:
                entry = self.registry.add(factory, plugin=info.name, distribution=info.distribution)
                info.stages.append((entry.kind, entry.name))

    # -- pluggy's validation errors, in our words --------------------------------

    def _known_hooks(self) -> list[str]:
        return sorted(n for n in vars(self.hook) if not n.startswith("_") and getattr(self.hook, n).has_spec())

    def _unknown_hook_error(self, plugin: object, name: str) -> PluginError:
        known = self._known_hooks()
        for hook in sorted(vars(self.hook)):
            caller = getattr(self.hook, hook)
            if hook.startswith("_") or caller.has_spec():
                continue
            if any(impl.plugin is plugin for impl in caller.get_hookimpls()):
                return PluginError(
                    f"plugin '{name}' defines unknown hook '{hook}'.{did_you_mean(hook, known)} "
                    f"Hooks: {', '.join(known)}"
                )
        return PluginError(f"plugin '{name}' implements a hook that has no specification")

    def _hook_error(self, plugin: object, name: str, exc: pluggy.PluginValidationError) -> PluginError:
        """pluggy's "Argument(s) ... are declared in the hookimpl but can not be found in the hookspec"
        as: the plugin, the hook, the arguments the hook offers and the closest one."""
        for attr in dir(plugin):
            if self.parse_hookimpl_opts(plugin, attr) is None:
                continue
            caller = getattr(self.hook, attr, None)
            if caller is None or caller.spec is None:
                continue
            valid = list(caller.spec.argnames)
            try:
                function = getattr(plugin, attr)
                arguments = [p for p in inspect.signature(function).parameters if p != "self"]
            except (TypeError, ValueError):
                continue
            unknown = [a for a in arguments if a not in valid]
            if unknown:
                return PluginError(
                    f"plugin '{name}': hook '{attr}' takes argument(s) {', '.join(repr(a) for a in unknown)} that "
                    f"the hook does not provide.{did_you_mean(unknown[0], valid)} "
                    f"'{attr}' provides: {', '.join(valid) or '(no arguments)'} (accept any subset of them)"
                )
        return PluginError(f"plugin '{name}' has an invalid hook implementation: {exc}")
