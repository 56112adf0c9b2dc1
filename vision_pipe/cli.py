"""``vision-pipe`` command line: a thin layer over :class:`vision_pipe.Pipeline`.

    vision-pipe fit PIPELINE.yaml [key=value ...] [--resume CKPT] [--no-test] [--trust-checkpoint]
    vision-pipe validate|test PIPELINE.yaml [key=value ...] [--ckpt CKPT] [--trust-checkpoint]
    vision-pipe predict PIPELINE.yaml|CKPT INPUT... [--ckpt CKPT] [--out DIR] [--device DEVICE] [--plugin MODULE]
                        [--trust-checkpoint]
    vision-pipe predict MODEL.onnx|MODEL.pt INPUT... [--out DIR]   (ONNX Runtime, no torch; TorchScript, no Lightning)
    vision-pipe similar CKPT --index FOLDER --query IMAGE... [-k 8] [--metric euclidean|cosine] [--out DIR]
    vision-pipe export CKPT [--format onnx|torchscript] [--out DIR] [--opset N] [--dynamic-batch]
                       [--input-size H W] [--probabilities] [--plugin MODULE]
    vision-pipe check PIPELINE.yaml [key=value ...] [--trust-checkpoint]
    vision-pipe stages [--kind KIND] [--all] [--markdown]
    vision-pipe plugins
    vision-pipe backbones [PATTERN] [--pretrained]

Checkpoints and weight files are read as weights only (never code);
``--trust-checkpoint`` reads them in full, for files you trust.

Flags may come before, between or after the positionals and ``key=value``
overrides (``~key`` deletes a key, ``key={...}`` replaces a mapping).

Errors caused by the input (a bad YAML, a missing file, an unknown stage) are
printed as one message naming the file / key / stage, with exit status 2.

(Over 400 lines on purpose: one parser and one short handler per command, read together.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vision_pipe.errors import VisionPipeError

EXIT_USAGE = 2


def _add_common(p: argparse.ArgumentParser, *, overrides: bool = True) -> None:
    if overrides:
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="override config values, e.g. trainer.max_epochs=3"
        )
    p.add_argument(
        "--disable", action="append", default=[], metavar="PLUGIN", help="do not load this plugin (repeatable)"
    )


def _add_checkpoint_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this plugin module named in the checkpoint's config (repeatable; only modules you trust)",
    )


def _add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="read checkpoints and weight files in full, not as weights only: unpickling runs the code a file "
        "names, so only for files you trust (also imports the plugin modules a checkpoint's config names)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-pipe",
        description="Plugin-based image pipelines defined in YAML, trained with PyTorch Lightning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "fit",
        help="train a pipeline, then test its best checkpoint",
        description="Train a pipeline, then evaluate its best checkpoint on the test split.",
    )
    p.add_argument("pipeline", help="pipeline YAML (or a run's config.yaml to repeat that run)")
    _add_common(p)
    p.add_argument(
        "--resume", metavar="CKPT", help="continue training from this checkpoint (e.g. .../checkpoints/last.ckpt)"
    )
    p.add_argument("--no-test", action="store_true", help="do not evaluate on the test split after training")
    _add_trust(p)

    for name, what in (("validate", "validation"), ("test", "test")):
        p = sub.add_parser(
            name,
            help=f"evaluate a checkpoint on the {what} split",
            description=f"Evaluate a checkpoint on the {what} split; prints the metrics as JSON.",
        )
        p.add_argument("pipeline", help="pipeline YAML")
        _add_common(p)
        p.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint to evaluate")
        _add_trust(p)

    p = sub.add_parser(
        "predict",
        help="predict on images, write JSON and annotated images",
        description="Predict on image files or folders; writes predictions.json and annotated images to --out.",
    )
    p.add_argument(
        "source",
        help="a checkpoint (.ckpt), a pipeline YAML (then --ckpt is required) or an exported model.onnx "
        "(with its model.json beside it; runs without torch) or model.pt (TorchScript; torch, no Lightning)",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--ckpt", metavar="CKPT", help="checkpoint, when SOURCE is a YAML")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: predictions)")
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="where to predict: auto (default: the GPU when there is one), cpu, cuda, cuda:N or mps; "
        "on a GPU under the pipeline's trainer.precision (checkpoints only, not model.onnx)",
    )
    _add_checkpoint_plugins(p)
    _add_trust(p)
    _add_common(p, overrides=False)

    p = sub.add_parser(
        "similar",
        help="find the images of a folder most similar to query images",
        description="Embed the images of --index FOLDER with a checkpoint's backbone (its last map, pooled; "
        "kept in FOLDER/.vision_pipe_index/, rebuilt when the folder changes) and print each query's k nearest; "
        "writes a contact sheet PNG per query and similar.json to --out.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="a vision-pipe checkpoint (.ckpt)")
    p.add_argument("--index", required=True, metavar="FOLDER", help="the folder of images to search (recursively)")
    p.add_argument("--query", required=True, nargs="+", metavar="IMAGE", help="query image file(s)")
    p.add_argument("-k", type=int, default=8, help="neighbours per query (default: 8)")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean", help="default: euclidean")
    p.add_argument("--index-dir", metavar="DIR", help="where the index is kept (default: FOLDER/.vision_pipe_index)")
    p.add_argument("--out", default="similar", metavar="DIR", help="output folder (default: similar)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per forward (default: data.batch_size)")
    _add_checkpoint_plugins(p)
    _add_trust(p)
    _add_common(p, overrides=False)

    p = sub.add_parser(
        "export",
        help="export a checkpoint for deployment (ONNX or TorchScript)",
        description="Export a checkpoint to DIR/model.onnx or DIR/model.pt (TorchScript) (uint8 (N, H, W, 3) RGB "
        "images in; normalization and the task's decoding inside) with DIR/model.json; predict with it: "
        "vision-pipe predict DIR/model.onnx INPUT...",
    )
    p.add_argument("ckpt", metavar="CKPT", help="a vision-pipe checkpoint (.ckpt)")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "torchscript"],
        help="onnx: DIR/model.onnx; torchscript: DIR/model.pt, traced (default: onnx)",
    )
    p.add_argument("--out", default="export", metavar="DIR", help="output folder (default: export)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: 18)")
    p.add_argument(
        "--dynamic-batch", action="store_true", help="let the batch size vary (default: the graph takes one image)"
    )
    p.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="the images' height and width the model takes (default: the pipeline's data.input_size)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="segmentation: also output the per-pixel class probabilities (N, C, H, W) float32",
    )
    _add_checkpoint_plugins(p)
    _add_trust(p)
    _add_common(p, overrides=False)

    p = sub.add_parser(
        "check",
        help="validate a pipeline YAML and its chain without training",
        description="Validate a pipeline YAML, its stages and their chain, and index the data, without training.",
    )
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument(
        "--data", action="store_true", help="also read and check every sample (the pre-flight pass run before training)"
    )
    _add_common(p)
    _add_trust(p)

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
    _add_common(p, overrides=False)

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
    _add_common(p, overrides=False)

    p = sub.add_parser(
        "plugins",
        help="list loaded plugins and their stages",
        description="List loaded plugins with package, version and the stages each provides.",
    )
    _add_common(p, overrides=False)
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


def _manager(args: argparse.Namespace) -> Any:
    """The plugin manager; plugins that failed to load are one warning on stderr (``plugins`` lists them)."""
    import warnings

    from vision_pipe.plugins import PluginLoadWarning, PluginManager

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)
        manager = PluginManager(disabled=args.disable)
    if manager.load_errors and args.command != "plugins":
        listing = "".join(f"\n  {error}" for error in manager.load_errors.values())
        print(f"warning: {len(manager.load_errors)} plugin(s) failed to load:{listing}", file=sys.stderr)
    return manager


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"\n{title}")
    width = max((len(k) for k in metrics), default=0)
    for key in sorted(metrics):
        value = metrics[key]
        print(f"  {key:<{width}}  {value:.4f}" if value == value else f"  {key:<{width}}  nan")


def _run(args: argparse.Namespace) -> int:
    if args.command == "predict" and Path(args.source).suffix in (".onnx", ".pt"):
        return _predict_exported(args)  # before anything imports Lightning (or, for ONNX, torch): neither is needed
    from vision_pipe.distributed import is_secondary_process

    if is_secondary_process():
        # the other processes of a multi-process (DDP) run: rank 0 alone reports
        with contextlib.redirect_stdout(io.StringIO()):
            return _dispatch(args)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command in ("stages", "plugins", "backbones"):
        manager = _manager(args)
        manager.check_disabled()
        if command == "stages":
            return _stages(manager, args.kind, args.all, args.markdown)
        if command == "backbones":
            return _backbones(manager, args.pattern, args.pretrained)
        return _plugins(manager)

    from vision_pipe.pipeline import Pipeline

    if command == "predict":
        return _predict(args, Pipeline)
    if command == "export":
        return _export(args, Pipeline)
    if command == "similar":
        return _similar(args, Pipeline)

    trust = args.trust_checkpoint
    pipe = Pipeline.from_yaml(args.pipeline, args.overrides, manager=_manager(args), trust=trust)
    if command == "check":
        from vision_pipe.trainer import check_trainer

        check_trainer(pipe.config, pipe.locations)
        cfg = pipe.config
        print(f"{args.pipeline}: OK — pipeline '{cfg.name}', task {cfg.task}")
        print(
            f"  loading       {cfg.data.loader['name']}  ({len(pipe.class_names)} classes: {', '.join(pipe.class_names[:10])}{' ...' if len(pipe.class_names) > 10 else ''})"
        )
        print("  split         " + ", ".join(f"{k} {len(v)}" for k, v in pipe.splits.items()))
        if cfg.data.normalization:
            given = pipe.stages["normalization"].input_stats
            stats = f"  ({given.describe()}, from {given.source})" if given is not None else ""
            print(f"  normalization {cfg.data.normalization['name']}{stats}")
        for aug in cfg.data.augmentation:
            print(f"  augmentation  {aug['name']}")
        bb = pipe.stages["backbone"]
        maps = ", ".join(f"{f.name}(c={f.channels}, stride={f.stride})" for f in bb.feature_info)
        weights = " (pretrained)" if bb.pretrained else ""
        print(f"  backbone      {cfg.model.backbone['name']}{weights}: {maps}")
        n_params = sum(p.numel() for p in pipe.module.parameters())
        print(f"  head          {cfg.model.head['name']}  ({n_params:,} parameters in the model)")
        unused = pipe.module.unused_parameters
        if unused:
            shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
            print(f"  unused        {len(unused)} parameter tensors no output depends on, frozen: {shown}")
        if args.data:
            _preflight(pipe)
        return 0
    _preflight(pipe)
    if command == "fit":
        metrics = pipe.fit(resume=args.resume, trust=trust)
        _print_metrics("fit finished", {k: v for k, v in metrics.items() if k.startswith("val/") and k.count("/") == 1})
        if not args.no_test:
            test = pipe.test()
            _print_metrics("test metrics", {k: v for k, v in test.items() if k.count("/") == 1})
        print(f"\nrun directory: {pipe.run_dir}")
        if pipe.best_checkpoint:
            print(f"best checkpoint: {pipe.best_checkpoint}")
        return 0
    if command == "validate":
        _print_metrics("validation metrics", pipe.validate(args.ckpt, trust=trust))
        return 0
    if command == "test":
        metrics = pipe.test(args.ckpt, trust=trust)
        _print_metrics("test metrics", metrics)
        print(f"\nrun directory: {pipe.run_dir}")
        return 0
    raise AssertionError(command)


def _preflight(pipe: Any) -> None:
    report = pipe.preflight()
    how = "cached result" if report.cached else f"{report.seconds:.1f} s"
    line = f"pre-flight: {sum(report.checked.values())} samples checked ({how})"
    if report.bad:
        line += f"; {len(report.bad)} bad sample(s) left out (data.on_bad_sample: skip), listed in preflight.json:"
        line += "".join(f"\n  - [{b.split}] {b.reason}" for b in report.bad[:5])
        if len(report.bad) > 5:
            line += f"\n  ... and {len(report.bad) - 5} more"
    print(line, flush=True)


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
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


def _predict(args: argparse.Namespace, Pipeline: Any) -> int:
    source = Path(args.source)
    manager = _manager(args)
    if source.suffix == ".ckpt":
        pipe = Pipeline.load(source, manager=manager, trust=args.trust_checkpoint, plugins=args.plugin)
    else:
        if not args.ckpt:
            raise VisionPipeError("predict with a pipeline YAML needs --ckpt CKPT (or give the checkpoint as SOURCE)")
        pipe = Pipeline.from_yaml(source, manager=manager, trust=args.trust_checkpoint)
        pipe.load_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    paths = _expand_inputs(args.inputs)
    predictions = pipe.predict(paths, out=args.out, device=args.device)
    for pred in predictions:
        print(_describe(pred))
    extra = ", detections_coco.json" if predictions and "boxes" in predictions[0].to_dict() else ""
    print(f"\nwrote predictions.json{extra} and {len(predictions)} annotated image(s) to {args.out}/")
    return 0


def _similar(args: argparse.Namespace, Pipeline: Any) -> int:
    from vision_pipe.similar import find_similar

    pipe = Pipeline.load(args.ckpt, manager=_manager(args), trust=args.trust_checkpoint, plugins=args.plugin)
    queries = _expand_inputs(args.query)
    index, results = find_similar(
        pipe,
        args.index,
        queries,
        k=args.k,
        metric=args.metric,
        index_dir=args.index_dir,
        out=args.out,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"index: {len(index.files)} image(s) of {index.root}, {index.status} ({index.embedded} embedded)")
    for result in results:
        print(f"\n{result.query}")
        for rank, (path, distance) in enumerate(zip(result.neighbours, result.distances, strict=True), 1):
            print(f"  {rank:>2}. {distance:10.4f}  {path}")
    print(f"\nwrote similar.json and {len(results)} contact sheet(s) to {args.out}/")
    return 0


def _export(args: argparse.Namespace, Pipeline: Any) -> int:
    pipe = Pipeline.load(args.ckpt, manager=_manager(args), trust=args.trust_checkpoint, plugins=args.plugin)
    path = pipe.export(
        args.out,
        format=args.format,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        input_size=args.input_size,
        probabilities=args.probabilities,
    )
    print(f"wrote {path} and {path.with_name('model.json')}")
    return 0


def _predict_exported(args: argparse.Namespace) -> int:
    """``vision-pipe predict model.onnx|model.pt INPUT... --out DIR`` with ONNX Runtime (no torch) or TorchScript
    (torch, no Lightning); no plugins."""
    from vision_pipe.exported_predict import open_predictor
    from vision_pipe.render import prepare_out_dir
    from vision_pipe.tasks import task_of_prediction

    if args.ckpt:
        raise VisionPipeError(
            "predict with an exported model (.onnx, .pt) takes no --ckpt: the model holds the weights"
        )
    prepare_out_dir(args.out)
    if args.device not in ("auto", "cpu"):
        raise VisionPipeError(
            f"--device {args.device}: an exported model runs on the CPU (ONNX Runtime, TorchScript); "
            "predict from the checkpoint to use a GPU"
        )
    predictor = open_predictor(args.source)
    paths = _expand_inputs(args.inputs)
    predictions = predictor.predict(paths)
    predictor.write(paths, predictions, args.out)
    for pred in predictions:
        print(os.fsencode(task_of_prediction(pred).describe(pred)).decode("utf-8", "backslashreplace"))
    print(f"\nwrote predictions.json and {len(predictions)} annotated image(s) to {args.out}/")
    return 0


def _describe(pred: Any) -> str:
    """One line about a prediction, as its task describes it (a file name that is not valid UTF-8 shows its
    bytes escaped, ``\\xff``: printing it as is would fail)."""
    from vision_pipe.tasks import task_of_prediction

    return os.fsencode(task_of_prediction(pred).describe(pred)).decode("utf-8", "backslashreplace")


def _stages(manager: Any, kind: str | None, show_all: bool, markdown: bool = False) -> int:
    if markdown:
        from vision_pipe.stage_docs import render_markdown

        command = "vision-pipe stages --markdown" + (f" --kind {kind}" if kind else "")
        sys.stdout.write(render_markdown(manager.registry.entries(kind), command=command))
        return 0
    current = None
    for entry in manager.registry.entries(kind):
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


def _backbones(manager: Any, pattern: str, pretrained: bool) -> int:
    """Models of each backbone stage whose factory has ``list_models(pattern, pretrained=...)``."""
    listed = False
    for entry in manager.registry.entries("backbone"):
        list_models = getattr(entry.factory, "list_models", None)
        if list_models is None:
            continue
        listed = True
        names = list(list_models(pattern, pretrained=pretrained))
        print(f"backbone '{entry.name}': {len(names)} model(s) matching {pattern!r}")
        for name in names:
            print(f"  {name}")
    if not listed:
        raise VisionPipeError("no backbone stage offers a list of models (the 'timm' and 'torchvision' stages do)")
    return 0


def _plugins(manager: Any) -> int:
    for info in manager.plugins.values():
        package = f"{info.distribution} {info.version}" if info.distribution else "(module)"
        stages = ", ".join(f"{k}:{n}" for k, n in info.stages)
        if len(info.stages) > 6:
            stages = ", ".join(f"{k}:{n}" for k, n in info.stages[:6]) + f", ... ({len(info.stages)} stages)"
        print(f"{info.name:<18} {package:<22} {stages}")
    for name, error in manager.load_errors.items():
        print(f"{name:<18} {'(failed to load)':<22} {error}")
    if manager.disabled:
        print(f"\ndisabled: {', '.join(sorted(manager.disabled))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
