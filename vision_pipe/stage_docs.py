"""The stage reference, generated from the plugin registry (``docs/stages.md``).

    python -m vision_pipe.stage_docs --output docs/stages.md   # regenerate (vision-pipe's own stages)
    python -m vision_pipe.stage_docs --check docs/stages.md    # exit 1 when the file is stale
    vision-pipe stages --markdown                             # every loaded stage, third-party ones too

The output is deterministic: stages sorted by kind (pipeline order) and name,
no memory addresses, no absolute paths — so the file only changes when a
stage, a parameter or a docstring does.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from vision_pipe.plugins import PluginManager
from vision_pipe.registry import StageEntry
from vision_pipe.stages import KINDS

#: The command that regenerates the shipped reference.
REGENERATE = "python -m vision_pipe.stage_docs --output docs/stages.md"
#: The distribution whose stages the shipped reference documents.
BUILTIN_DISTRIBUTION = "vision-pipe"
#: Where albumentations documents each transform (the transform's name is appended).
ALBUMENTATIONS_DOCS = "https://explore.albumentations.ai/transform/"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _scrub(text: str) -> str:
    """Drop memory addresses and absolute paths of this machine from ``text``."""
    text = _ADDRESS.sub("", text)
    for path, short in ((str(Path.cwd()), "."), (str(Path.home()), "~"), (sys.prefix, "<prefix>")):
        if len(path) > 1:
            text = text.replace(path, short)
    return text


def _cell(text: str) -> str:
    """``text`` as inline code in a Markdown table cell."""
    return "`" + _scrub(text).replace("|", "\\|").replace("`", "'") + "`"


def _default(entry_default: Any) -> str:
    if entry_default is inspect.Parameter.empty:
        return "required"
    return _cell(repr(entry_default))


def _fence(text: str) -> str:
    """A fenced text block long enough not to be closed by ``text``'s own fences."""
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}text\n{text}\n{ticks}"


def render_entry(entry: StageEntry) -> str:
    """One stage: heading, origin, parameter table and docstring."""
    origin = f"plugin `{entry.plugin}`" + (f" (package `{entry.distribution}`)" if entry.distribution else "")
    if entry.overrides:
        origin += f", overrides plugin `{entry.overrides}`"
    lines = [f"### `{entry.name}`", "", f"*{entry.kind} stage, {origin}*", ""]
    if entry.takes_context:
        lines += ["Receives the pipeline's `StageContext` as `context`.", ""]
    if entry.parameters:
        lines += ["| parameter | type | default |", "|---|---|---|"]
        lines += [f"| `{p.name}` | {_cell(p.type_str())} | {_default(p.default)} |" for p in entry.parameters]
    else:
        lines.append("No parameters.")
    doc = _scrub(entry.doc.strip())
    summary = _scrub(entry.summary.strip())
    if summary:
        lines += ["", summary]
    if _is_albumentations(entry):
        lines += ["", f"Full documentation: albumentations' [`{entry.name}`]({ALBUMENTATIONS_DOCS}{entry.name})."]
    elif doc and doc != summary:
        lines += ["", "<details><summary>docstring</summary>", "", _fence(doc), "", "</details>"]
    return "\n".join(lines)


def _is_albumentations(entry: StageEntry) -> bool:
    """A built-in augmentation: its docstring is albumentations' own (long) one, linked instead of copied."""
    return (
        entry.kind == "augmentation" and entry.plugin == "albumentations" and entry.distribution == BUILTIN_DISTRIBUTION
    )


def render_markdown(entries: Iterable[StageEntry], *, command: str = REGENERATE) -> str:
    """The reference for ``entries``: a contents list, then every stage by kind."""
    by_kind: dict[str, list[StageEntry]] = {kind: [] for kind in KINDS}
    for entry in sorted(entries, key=lambda e: (KINDS.index(e.kind), e.name)):
        by_kind[entry.kind].append(entry)
    parts = [
        "# Stage reference",
        "",
        f"Generated from the plugin registry by `{command}` — do not edit by hand.",
        (
            f"vision-pipe {_version('vision-pipe')}; augmentation stages are the transforms of "
            f"albumentations {_version('albumentations')}. Parameters are what a pipeline YAML may set; "
            "`vision-pipe stages` prints the same from the command line."
        ),
        "",
        "## Contents",
        "",
    ]
    for kind, items in by_kind.items():
        if items:
            parts.append(f"- **{kind}** ({len(items)}): " + ", ".join(f"[{e.name}](#{_anchor(e.name)})" for e in items))
    for kind, items in by_kind.items():
        if items:
            parts += ["", f"## {kind}", ""]
            parts += ["\n\n".join(render_entry(e) for e in items)]
    return "\n".join(parts) + "\n"


def _anchor(name: str) -> str:
    """GitHub's heading anchor for ``### `name` ``."""
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def builtin_entries(manager: PluginManager | None = None) -> list[StageEntry]:
    """The stages vision-pipe itself ships (its own distribution's plugins)."""
    manager = manager or PluginManager()
    return [e for e in manager.registry.entries() if e.distribution == BUILTIN_DISTRIBUTION]


def render_builtin(manager: PluginManager | None = None) -> str:
    """The text of ``docs/stages.md``."""
    return render_markdown(builtin_entries(manager))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vision_pipe.stage_docs", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--output", type=Path, help="write the reference to this file (default: print it)")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the generated reference")
    args = parser.parse_args(argv)
    text = render_builtin()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
