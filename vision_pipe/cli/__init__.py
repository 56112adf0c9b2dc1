"""``vision-pipe`` command line: a thin layer over :class:`vision_pipe.Pipeline`.

    vision-pipe fit PIPELINE.yaml [key=value ...] [--resume CKPT] [--no-test] [--save-json] [--trust-checkpoint]
    vision-pipe validate|test PIPELINE.yaml [key=value ...] [--ckpt CKPT] [--trust-checkpoint]   (test: [--save-json])
    vision-pipe attack CKPT [key=value ...] [--method fgsm|pgd] [--eps 0,1,2,4,8] [--alpha A] [--steps K]
                       [--no-random-start] [--examples N] [--plugin MODULE] [--trust-checkpoint]
    vision-pipe predict PIPELINE.yaml|CKPT INPUT... [--ckpt CKPT] [--out DIR] [--device DEVICE] [--plugin MODULE]
                        [--trust-checkpoint]
    vision-pipe predict MODEL.onnx|MODEL.pt INPUT... [--out DIR]   (ONNX Runtime, no torch; TorchScript, no Lightning)
    vision-pipe similar CKPT --index FOLDER --query IMAGE... [-k 8] [--metric euclidean|cosine] [--out DIR]
    vision-pipe inspect CKPT [IMAGE...] [--out DIR] [--channels N] [--class NAME] [--no-saliency] [--device DEVICE]
    vision-pipe export CKPT [--format onnx|torchscript] [--out DIR] [--opset N] [--dynamic-batch]
                       [--input-size H W] [--probabilities] [--plugin MODULE]
    vision-pipe check PIPELINE.yaml [key=value ...] [--trust-checkpoint]
    vision-pipe runs [DIR] [--json]
    vision-pipe compare RUN RUN... [--out compare.png]
    vision-pipe report RUN [--no-predictions] [--trust-checkpoint]
    vision-pipe stages [--kind KIND] [--all] [--markdown]
    vision-pipe plugins
    vision-pipe backbones [PATTERN] [--pretrained]

Each command group is one module of this package (:data:`COMMAND_MODULES`), with ``register(sub)`` adding
its subcommands and their handlers; ``_common`` holds what they share.

Checkpoints and weight files are read as weights only (never code);
``--trust-checkpoint`` reads them in full, for files you trust.

Flags may come before, between or after the positionals and ``key=value``
overrides (``~key`` deletes a key, ``key={...}`` replaces a mapping).

Errors caused by the input (a bad YAML, a missing file, an unknown stage) are
printed as one message naming the file / key / stage, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
from collections.abc import Iterator, Sequence

from vision_pipe.cli._common import EXIT_USAGE
from vision_pipe.errors import VisionPipeError

#: The command modules, in the order their commands are listed by ``vision-pipe --help``.
COMMAND_MODULES = ("train", "runs", "attack", "predict", "similar", "inspect", "export", "listing")

__all__ = ["COMMAND_MODULES", "EXIT_USAGE", "build_parser", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The ``vision-pipe`` parser, with every command module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="vision-pipe",
        description="Plugin-based image pipelines defined in YAML, trained with PyTorch Lightning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"vision_pipe.cli.{name}").register(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line; a command's flags may come before, between or after its positionals
    (``fit p.yaml trainer.max_epochs=1 --no-test`` = ``fit --no-test p.yaml trainer.max_epochs=1``)."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if not args or args[0] not in commands:
        return parser.parse_args(args)  # --help, a missing or unknown command: argparse's own messages
    # argparse cannot intermix a parser that has subcommands; the subcommand's own parser can
    namespace = commands[args[0]].parse_intermixed_args(args[1:])
    namespace.command = args[0]
    return namespace


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for an error in the input, 130 when interrupted)."""
    args = parse_args(argv)
    try:
        with _warnings_on_stderr():
            return _run(args)
    except VisionPipeError as exc:
        print(f"error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from vision_pipe.ranks import is_secondary_process  # torch-free: predict model.onnx imports no torch

    if is_secondary_process():
        # the other processes of a multi-process (DDP) run: rank 0 alone reports
        with contextlib.redirect_stdout(io.StringIO()):
            return int(args.handler(args))
    return int(args.handler(args))


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """While the command runs, the ``vision_pipe`` logger's warnings are ``warning: ...`` lines on stderr."""
    import logging

    logger = logging.getLogger("vision_pipe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _message(exc: BaseException) -> str:
    """The error's own message; for an error re-raised from a DataLoader worker, without the worker's traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        name = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(name) :] if last.startswith(name) else last
    return text
