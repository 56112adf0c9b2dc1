"""What every ``vision-pipe`` command shares: common flags, the plugin manager, metric printing, input lists.

A command module (``vision_pipe/cli/<group>.py``) has ``register(sub)``, which adds its subcommands to the
parser and sets each one's ``handler`` (``args -> exit status``); it imports torch, Lightning and the
façade inside its handlers only, so that ``vision-pipe --help`` and the torch-free paths stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def add_common(p: argparse.ArgumentParser, *, overrides: bool = True) -> None:
    """``key=value`` overrides (when the command takes a pipeline) and ``--disable PLUGIN``."""
    if overrides:
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="override config values, e.g. trainer.max_epochs=3"
        )
    p.add_argument(
        "--disable", action="append", default=[], metavar="PLUGIN", help="do not load this plugin (repeatable)"
    )


def add_checkpoint_plugins(p: argparse.ArgumentParser) -> None:
    """``--plugin MODULE``: import a plugin module a checkpoint's config names."""
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this plugin module named in the checkpoint's config (repeatable; only modules you trust)",
    )


def add_trust(p: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint``: read checkpoints in full (unpickling), for files the user trusts."""
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read checkpoints and weight files in full, not as weights only: unpickling runs the code a file "
        "names, so only for files you trust (also imports the plugin modules a checkpoint's config names)",
    )


def add_checkpoint_source(p: argparse.ArgumentParser, *, what: str = "a vision-pipe checkpoint (.ckpt)") -> None:
    """A positional ``CKPT`` with ``--plugin``, ``--trust-checkpoint`` and ``--disable``."""
    p.add_argument("ckpt", metavar="CKPT", help=what)
    add_checkpoint_plugins(p)
    add_trust(p)
    add_common(p, overrides=False)


def manager(args: argparse.Namespace) -> Any:
    """The plugin manager; plugins that failed to load are one warning on stderr (``plugins`` lists them)."""
    import warnings

    from vision_pipe.plugins import PluginLoadWarning, PluginManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        loaded = PluginManager(disabled=args.disable)
    if loaded.load_errors and args.command != "plugins":
        listing = "".join(f"\n  {error}" for error in loaded.load_errors.values())
        print(f"warning: {len(loaded.load_errors)} plugin(s) failed to load:{listing}", file=sys.stderr)
    return loaded


def load_checkpoint(args: argparse.Namespace) -> Any:
    """The :class:`~vision_pipe.Pipeline` of ``args.ckpt`` (with ``--plugin`` / ``--trust-checkpoint``)."""
    from vision_pipe.pipeline import Pipeline

    return Pipeline.load(args.ckpt, manager=manager(args), trust=args.trust_checkpoint, plugins=args.plugin)


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    """``title`` then one ``  key  value`` line per metric, sorted, aligned, 4 decimals."""
    print(f"\n{title}")
    width = max((len(k) for k in metrics), default=0)
    for key in sorted(metrics):
        value = metrics[key]
        print(f"  {key:<{width}}  {value:.4f}" if value == value else f"  {key:<{width}}  nan")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image files and the images of folders (not recursive), in order; a missing input is a DataError."""
    from vision_pipe.errors import DataError
    from vision_pipe.io import IMAGE_EXTENSION_LIST, list_images

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path, recursive=False)
            if not found:
                raise DataError(f"{path}: folder contains no images ({IMAGE_EXTENSION_LIST})")
            paths += found
        elif path.exists():
            paths.append(path)
        else:
            raise DataError(f"input not found: {path}")
    return paths


def printable(text: str) -> str:
    """``text`` safe to print: a file name that is not valid UTF-8 shows its bytes escaped (``\\xff``)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def describe(pred: Any) -> str:
    """One line about a prediction, as its task describes it."""
    from vision_pipe.tasks import task_of_prediction

    return printable(task_of_prediction(pred).describe(pred))
