"""Class names and colours: the one reader of class files, and the default (Pascal VOC) palette.

Loaders that take a ``classes`` parameter read it with :func:`read_class_file`
(or :func:`parse_classes` for a list given in the YAML), so every loader
accepts the same formats:

- ``.yaml`` / ``.yml`` / ``.json``: a list of names (index = id), a mapping id → entry, or a
  mapping with ``names:`` holding either (a YOLO data YAML); an entry is a name or
  ``{name: ..., color: [r, g, b] | "#rrggbb"}``;
- any other file (``.txt``, darknet's ``.names``): one class name per line (line ``i`` names
  class ``i - 1``; trailing blank lines are ignored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vision_pipe.errors import DataError

#: An (R, G, B) colour, 0..255 each.
RGB = tuple[int, int, int]
_EXAMPLE = "e.g. [background, cat, dog] or {0: background, 1: {name: cat, color: [255, 0, 0]}}"


def voc_palette(n: int) -> list[RGB]:
    """The Pascal VOC colour map for ``n`` classes: class ``i``'s colour from the bits of ``i`` (0 → black)."""
    colors = []
    for i in range(n):
        rgb = [0, 0, 0]
        c = i
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        colors.append((rgb[0], rgb[1], rgb[2]))
    return colors


@dataclass(frozen=True)
class ClassSpec:
    """Class names by id, and a colour per class where one was given (``None`` where not)."""

    names: list[str]
    colors: list[RGB | None]


def _color(value: Any, where: str) -> RGB:
    """``[r, g, b]`` (0..255) or ``"#rrggbb"`` → (r, g, b)."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
        except ValueError:
            pass
    elif (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (value[0], value[1], value[2])
    raise DataError(f"{where}: colour {value!r} is not [r, g, b] with 0..255 integers or '#rrggbb'")


def _class_entry(value: Any, where: str) -> tuple[str, RGB | None]:
    """A class entry: ``name`` or ``{name: ..., color: ...}``."""
    if isinstance(value, str) and value.strip():
        return value.strip(), None
    if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"].strip():
        unknown = set(value) - {"name", "color"}
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; a class has 'name' and optionally 'color'")
        color = _color(value["color"], where) if value.get("color") is not None else None
        return value["name"].strip(), color
    raise DataError(f"{where}: {value!r} is not a class name or a {{name: ..., color: [r, g, b]}} mapping")


def _class_id(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def parse_classes(data: Any, where: str) -> ClassSpec:
    """Classes from a list (index = id), a mapping id → entry, or a mapping with ``names:`` holding either.

    Each entry is a name or ``{name, color}``. ``where`` names the source in error
    messages. Ids must be 0..n-1 without gaps, names non-empty and unique.
    """
    if isinstance(data, dict) and "names" in data:
        data, where = data["names"], f"{where}: 'names'"
    if isinstance(data, list):
        entries = [_class_entry(v, f"{where}: entry {i}") for i, v in enumerate(data)]
    elif isinstance(data, dict):
        ids = {key: _class_id(key) for key in data}
        not_ids = [key for key, i in ids.items() if i is None]
        if not_ids:
            raise DataError(
                f"{where}: key {not_ids[0]!r} is not a class id (0, 1, 2, ...); give a list of names, "
                f"a mapping id → name, or a mapping with 'names:' ({_EXAMPLE})"
            )
        by_id = {i: data[key] for key, i in ids.items() if i is not None}
        if sorted(by_id) != list(range(len(by_id))):
            missing = sorted(set(range(len(by_id))) - set(by_id))
            raise DataError(
                f"{where}: class ids must be 0, 1, ..., C-1 without gaps; given {sorted(by_id, key=str)}, "
                f"missing {missing}"
            )
        entries = [_class_entry(by_id[i], f"{where}: class {i}") for i in range(len(by_id))]
    else:
        raise DataError(f"{where}: expected a list of class names or a mapping id → name ({_EXAMPLE})")
    if not entries:
        raise DataError(f"{where}: no class names ({_EXAMPLE})")
    names = [name for name, _ in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{where}: class name(s) {twice} appear more than once; give each class one entry")
    return ClassSpec(names, [color for _, color in entries])


def _text_names(path: Path, text: str) -> list[str]:
    """One name per line; blank lines at the end are ignored, blank lines between names are an error."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for n, line in enumerate(lines, start=1):
        if not line:
            raise DataError(
                f"{path}:{n}: empty line: line i names class i-1, so every line up to the last must name a class"
            )
    return lines


def read_class_file(
    path: Path, *, what: str = "classes file", fix: str = "check the loading stage's 'classes' parameter"
) -> ClassSpec:
    """Read a classes file (``.yaml``/``.yml``, ``.json``, or one name per line; see the module docstring).

    ``what`` names the file in messages (``"YOLO classes file"``), ``fix`` says what to do when it is missing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist: {fix}")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file: {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        return parse_classes(_text_names(path, text), f"{what} {path}")
    try:
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except ValueError as exc:
        raise DataError(f"{path}: invalid JSON ({exc}): fix the file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DataError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}): fix the file") from exc
    return parse_classes(data, f"{what} {path}")


__all__ = ["RGB", "ClassSpec", "parse_classes", "read_class_file", "voc_palette"]
