"""Config files: YAML read with the ``file:line`` of every key, ``base:`` inheritance,
and ``key=value`` / ``~key`` overrides from the command line.

Owns :class:`Locations` (where each dotted key came from: a file line or an
override), so that every later error — schema, stage parameters, Trainer
arguments — names the file and line or the override that caused it. The
schema itself is in :mod:`vision_pipe.config`.

Overrides (:func:`apply_overrides`), in the style of Hydra:

- ``a.b=value`` sets a key (the value is parsed as YAML: ``3`` → int, ``[1, 2]`` → list);
- ``a.b={x: 1}`` replaces the mapping at ``a.b`` wholesale (nothing of the old one is kept);
- ``~a.b`` deletes the key ``a.b``;
- ``model.backbone.name=resnet`` — changing a stage's ``name`` starts that stage
  from the new stage's defaults: the old stage's parameters are dropped (other
  overrides of the same stage apply on top, whatever their order).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from vision_pipe.errors import ConfigError, did_you_mean

Loc = tuple[str | int, ...]

#: Where stage entries sit in a config (``data.augmentation.<i>`` is a list of them).
STAGE_SLOTS: tuple[Loc, ...] = (
    ("data", "loader"),
    ("data", "normalization"),
    ("model", "backbone"),
    ("model", "head"),
)


class Locations:
    """Where each dotted key of a config came from (``file:line`` or an override)."""

    def __init__(self) -> None:
        self._where: dict[Loc, str] = {}

    def set(self, loc: Loc, where: str) -> None:
        self._where[loc] = where

    def find(self, loc: Iterable[str | int]) -> str | None:
        """The location of ``loc`` or of its nearest ancestor that has one."""
        parts = tuple(loc)
        while True:
            if parts in self._where:
                return self._where[parts]
            if not parts:
                return None
            parts = parts[:-1]

    def update(self, other: Locations) -> None:
        self._where.update(other._where)

    def overrides_within(self, loc: Iterable[str | int]) -> list[str]:
        """The overrides that set ``loc`` or a key below it (``["override 'a.b=1'", ...]``), in order."""
        parts = tuple(loc)
        found = [w for k, w in self._where.items() if k[: len(parts)] == parts and w.startswith("override ")]
        return list(dict.fromkeys(found))

    def drop_below(self, loc: Iterable[str | int]) -> None:
        """Forget the locations of every key strictly below ``loc`` (its value was replaced)."""
        parts = tuple(loc)
        for key in [k for k in self._where if len(k) > len(parts) and k[: len(parts)] == parts]:
            del self._where[key]


#: The most keys and values a YAML document may have, aliases counted every time they are used: a
#: pipeline has a few hundred; an "alias bomb" (billion laughs) has billions in a few hundred bytes.
MAX_YAML_NODES = 100_000
#: The deepest nesting of mappings and lists a YAML document may have (a recursive alias has no bottom).
MAX_YAML_DEPTH = 64


class _Walk:
    """One walk over a composed YAML document: the line of every key, aliases counted each time they are used."""

    def __init__(self, file: str, locs: Locations) -> None:
        self.file = file
        self.locs = locs
        self.nodes = 0

    def _refuse(self, node: yaml.Node, loc: Loc, why: str) -> ConfigError:
        return ConfigError(
            f"{why}; a pipeline file is far smaller: this looks like an alias bomb (anchors '&' used through "
            "aliases '*' that expand into each other), or a recursive alias. Write the values out, or use fewer "
            "aliases",
            location=f"{self.file}:{node.start_mark.line + 1}",
            key=(dotted(loc[:8]) + (".…" if len(loc) > 8 else "")) or None,
        )

    def walk(self, node: yaml.Node, loc: Loc) -> None:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise self._refuse(node, loc, f"the YAML document expands to more than {MAX_YAML_NODES} values")
        if len(loc) > MAX_YAML_DEPTH:
            raise self._refuse(node, loc, f"the YAML document nests deeper than {MAX_YAML_DEPTH} levels")
        file, locs = self.file, self.locs
        locs.set(loc, f"{file}:{node.start_mark.line + 1}")
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ConfigError(
                        "a key must be a plain value (a name), not a mapping or a list",
                        location=f"{file}:{key_node.start_mark.line + 1}",
                        key=dotted(loc) or None,
                    )
                if key in seen:
                    raise ConfigError(
                        f"key '{key}' appears twice (first on line {seen[key]})",
                        location=f"{file}:{key_node.start_mark.line + 1}",
                        key=dotted(loc + (key,)),
                    )
                seen[key] = key_node.start_mark.line + 1
                locs.set(loc + (key,), f"{file}:{key_node.start_mark.line + 1}")
                self.walk(value_node, loc + (key,))
                locs.set(loc + (key,), f"{file}:{key_node.start_mark.line + 1}")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, loc + (i,))


def _yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    location = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return ConfigError(f"YAML syntax error: {problem}" + (f" ({context})" if context else ""), location=location)


def parse_yaml(text: str, where: str, locs: Locations | None = None) -> Any:
    """The data of one YAML document (``None`` when empty), composed once and bounded.

    The document is composed into nodes, walked once (recording the line of
    every key into ``locs``; refusing more than :data:`MAX_YAML_NODES` values,
    aliases counted each time they are used, or nesting deeper than
    :data:`MAX_YAML_DEPTH`), then built from the same nodes — so an alias bomb
    is a :class:`ConfigError` naming ``where`` and the line, in milliseconds,
    before anything is expanded. ``where`` names the file (or the override).
    """
    try:
        loader = yaml.SafeLoader(text)  # the reader checks the characters here already
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, where) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Walk(where, locs if locs is not None else Locations()).walk(node, ())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, where) from exc
    except RecursionError as exc:
        raise ConfigError(
            f"the YAML document nests too deeply (more than {MAX_YAML_DEPTH} levels of mappings and lists)",
            location=where,
        ) from exc
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Locations]:
    """Read one YAML mapping and the line of every key; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a pipeline YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    locs = Locations()
    data = parse_yaml(text, str(path), locs)
    if data is None:
        raise ConfigError("the file is empty; a pipeline needs at least name, data and model", location=str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            f"a pipeline file must be a mapping of keys (name, data, model, ...), not a {type(data).__name__}",
            location=str(path),
        )
    return data, locs


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively by ``update`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            # A stage entry whose name changes starts from scratch: the old stage's parameters do not apply.
            if "name" in value and value.get("name") != out[key].get("name"):
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_with_bases(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Locations]:
    """Read ``path`` and, recursively, the files named by its ``base:`` (relative to it)."""
    path = Path(path).resolve() if _chain else Path(path)
    data, locs = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data, locs
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    merged_locs = Locations()
    for b in bases:
        if not isinstance(b, str):
            raise ConfigError(
                "base must be a file path or a list of file paths", location=locs.find(("base",)), key="base"
            )
        base_path = (path.parent / b).resolve()
        chain = _chain + (path.resolve(),)
        if base_path in chain:
            cycle = " -> ".join(str(p) for p in chain + (base_path,))
            raise ConfigError(f"base files form a cycle: {cycle}", location=locs.find(("base",)), key="base")
        if not base_path.exists():
            raise ConfigError(f"base file not found: {base_path}", location=locs.find(("base",)), key="base")
        base_data, base_locs = load_yaml_with_bases(base_path, chain)
        merged = deep_merge(merged, base_data)
        merged_locs.update(base_locs)
    merged = deep_merge(merged, data)
    merged_locs.update(locs)
    return merged, merged_locs


def dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _is_stage_slot(loc: Loc) -> bool:
    return loc in STAGE_SLOTS or (len(loc) == 3 and loc[:2] == ("data", "augmentation") and isinstance(loc[2], int))


def _parse_override(item: str) -> tuple[bool, list[str], Any, str]:
    """``(delete, key segments, value, where)`` of one override."""
    where = f"override '{item}'"
    usage = "an override must look like key.path=value (or ~key.path to delete a key)"
    delete = item.startswith("~")
    if delete:
        key, raw = item[1:], ""
        if "=" in key:
            raise ConfigError("a deletion takes no value: write ~key.path", location=where)
    else:
        if "=" not in item:
            raise ConfigError(usage, location=where)
        key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(usage, location=where)
    value = parse_yaml(raw, where) if raw.strip() else None
    return delete, key.split("."), value, where


def _changes_stage_name(segments: list[str]) -> bool:
    return (
        len(segments) >= 3
        and segments[-1] == "name"
        and _is_stage_slot(tuple(int(s) if s.isdigit() else s for s in segments[:-1]))
    )


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], locs: Locations) -> dict[str, Any]:
    """Apply ``a.b.c=value`` / ``a.b={...}`` / ``~a.b`` overrides (see the module docstring).

    Overrides that change a stage's ``name`` are applied first (the stage then
    starts from the new stage's defaults), the others in the order given. Every
    key an override sets is located at that override, so an error it causes names it.
    """
    data = copy.deepcopy(data)
    parsed = [_parse_override(item) for item in overrides]
    parsed.sort(key=lambda p: not (not p[0] and _changes_stage_name(p[1])))  # stable: name changes first
    for delete, segments, value, where in parsed:
        parts: list[str | int] = []
        node: Any = data
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if isinstance(node, list):
                if not seg.isdigit() or int(seg) >= len(node):
                    raise ConfigError(
                        f"'{seg}' is not an index of this list (it has {len(node)} items)",
                        location=where,
                        key=dotted(parts),
                    )
                idx: str | int = int(seg)
            elif isinstance(node, dict):
                idx = seg
            else:
                raise ConfigError(
                    f"cannot set '{seg}' inside a {type(node).__name__}", location=where, key=dotted(parts)
                )
            parts.append(idx)
            if last:
                _apply_one(data, node, idx, tuple(parts), delete, value, where, locs)
            else:
                if isinstance(node, dict) and (idx not in node or node[idx] is None):
                    if delete:
                        raise ConfigError(
                            f"cannot delete '{dotted(segments)}': there is no '{dotted(parts)}'",
                            location=where,
                            key=dotted(parts),
                        )
                    node[idx] = {}
                    locs.set(tuple(parts), where)
                node = node[idx]
    return data


def _apply_one(
    data: dict[str, Any], node: Any, idx: str | int, loc: Loc, delete: bool, value: Any, where: str, locs: Locations
) -> None:
    if delete:
        if isinstance(node, dict) and idx not in node:
            raise ConfigError(
                f"cannot delete '{dotted(loc)}': no such key." + did_you_mean(str(idx), [str(k) for k in node]),
                location=where,
                key=dotted(loc),
            )
        del node[idx]
        locs.drop_below(loc)
        locs.set(loc, where)  # a "missing key" error about it names the deletion
        return
    stage = loc[:-1]
    if loc[-1] == "name" and _is_stage_slot(stage) and isinstance(node, dict) and node.get("name") != value:
        # A new stage: the old stage's parameters do not apply to it.
        node.clear()
        locs.drop_below(stage)
        locs.set(stage, where)
    node[idx] = value
    locs.drop_below(loc)
    locs.set(loc, where)


__all__ = [
    "STAGE_SLOTS",
    "Loc",
    "Locations",
    "apply_overrides",
    "deep_merge",
    "dotted",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "load_yaml_with_bases",
    "parse_yaml",
    "read_yaml",
]
