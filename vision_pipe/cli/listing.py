"""``vision-pipe stages | backbones | plugins``: what the loaded plugins offer."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vision_pipe.cli._common import add_common, manager
from vision_pipe.errors import VisionPipeError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stages",
        help="list every registered stage",
        description="List every registered stage: kind, name, parameters (types, defaults) and plugin.",
    )
    p.add_argument(
        "--kind", choices=["loading", "normalization", "augmentation", "backbone", "head"], help="only this kind"
    )
    p.add_argument("--all", action="store_true", help="show all parameters of every augmentation (long)")
    p.add_argument(
        "--markdown", action="store_true", help="print a Markdown reference (parameter tables and docstrings)"
    )
    add_common(p, overrides=False)
    p.set_defaults(handler=_stages)

    p = sub.add_parser(
        "backbones",
        help="list the library models a backbone stage can build (timm, torchvision)",
        description="List the models of every backbone stage that offers a list (timm's and torchvision's), "
        "optionally only those matching a shell-style PATTERN (e.g. 'resnet*', '*convnext*'; case-insensitive).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'resnet*' (default: all)")
    p.add_argument(
        "--pretrained", action="store_true", help="only models with pretrained weights (names with their tags)"
    )
    add_common(p, overrides=False)
    p.set_defaults(handler=_backbones)

    p = sub.add_parser(
        "plugins",
        help="list loaded plugins and their stages",
        description="List loaded plugins with package, version and the stages each provides.",
    )
    add_common(p, overrides=False)
    p.set_defaults(handler=_plugins)


def _loaded(args: argparse.Namespace) -> Any:
    plugins = manager(args)
    plugins.check_disabled()
    return plugins


def _stages(args: argparse.Namespace) -> int:
    registry = _loaded(args).registry
    kind, show_all = args.kind, args.all
    if args.markdown:
        from vision_pipe.stage_docs import render_markdown

        command = "vision-pipe stages --markdown" + (f" --kind {kind}" if kind else "")
        sys.stdout.write(render_markdown(registry.entries(kind), command=command))
        return 0
    current = None
    for entry in registry.entries(kind):
        if entry.kind != current:
            current = entry.kind
            print(f"\n{current}")
        origin = entry.plugin + (f" ({entry.distribution})" if entry.distribution else "")
        if entry.overrides:
            origin += f", overrides {entry.overrides}"
        print(f"  {entry.name}  [{origin}]")
        if entry.summary:
            print(f"      {entry.summary[:110]}")
        if entry.kind == "augmentation" and not show_all and kind != "augmentation":
            continue
        for p in entry.parameters:
            default = "required" if p.required else f"= {p.default!r}"
            print(f"      {p.name}: {p.type_str()} {default}")
    if kind is None and not show_all:
        print("\n(augmentation parameters: vision-pipe stages --kind augmentation)")
    return 0


def _backbones(args: argparse.Namespace) -> int:
    """Models of each backbone stage whose factory has ``list_models(pattern, pretrained=...)``."""
    listed = False
    for entry in _loaded(args).registry.entries("backbone"):
        list_models = getattr(entry.factory, "list_models", None)
        if list_models is None:
            continue
        listed = True
        names = list(list_models(args.pattern, pretrained=args.pretrained))
        print(f"backbone '{entry.name}': {len(names)} model(s) matching {args.pattern!r}")
        for name in names:
            print(f"  {name}")
    if not listed:
        raise VisionPipeError("no backbone stage offers a list of models (the 'timm' and 'torchvision' stages do)")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    loaded = _loaded(args)
    for info in loaded.plugins.values():
        package = f"{info.distribution} {info.version}" if info.distribution else "(module)"
        stages = ", ".join(f"{k}:{n}" for k, n in info.stages)
        if len(info.stages) > 6:
            stages = ", ".join(f"{k}:{n}" for k, n in info.stages[:6]) + f", ... ({len(info.stages)} stages)"
        print(f"{info.name:<18} {package:<22} {stages}")
    for name, error in loaded.load_errors.items():
        print(f"{name:<18} {'(failed to load)':<22} {error}")
    if loaded.disabled:
        print(f"\ndisabled: {', '.join(sorted(loaded.disabled))}")
    return 0
