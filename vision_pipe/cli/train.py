"""``vision-pipe fit | validate | test | check``: the commands that take a pipeline YAML."""

from __future__ import annotations

import argparse
from typing import Any

from vision_pipe.cli._common import add_common, add_trust, manager, print_metrics


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fit",
        help="train a pipeline, then test its best checkpoint",
        description="Train a pipeline, then evaluate its best checkpoint on the test split.",
    )
    p.add_argument("pipeline", help="pipeline YAML (or a run's config.yaml to repeat that run)")
    add_common(p)
    p.add_argument(
        "--resume", metavar="CKPT", help="continue training from this checkpoint (e.g. .../checkpoints/last.ckpt)"
    )
    p.add_argument("--no-test", action="store_true", help="do not evaluate on the test split after training")
    _add_save_json(p)
    add_trust(p)
    p.set_defaults(handler=_fit)

    for name, what in (("validate", "validation"), ("test", "test")):
        p = sub.add_parser(
            name,
            help=f"evaluate a checkpoint on the {what} split",
            description=f"Evaluate a checkpoint on the {what} split; prints the metrics.",
        )
        p.add_argument("pipeline", help="pipeline YAML")
        add_common(p)
        p.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint to evaluate")
        if name == "test":
            _add_save_json(p)
        add_trust(p)
        p.set_defaults(handler=_validate if name == "validate" else _test)

    p = sub.add_parser(
        "check",
        help="validate a pipeline YAML and its chain without training",
        description="Validate a pipeline YAML, its stages and their chain, and index the data, without training.",
    )
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument(
        "--data", action="store_true", help="also read and check every sample (the pre-flight pass run before training)"
    )
    add_common(p)
    add_trust(p)
    p.set_defaults(handler=_check)


def _add_save_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-json",
        action="store_true",
        help="detection: write the test split's detections in the COCO results format (detections_test_coco.json "
        "in the run directory, with the dataset's image and category ids)",
    )


def _print_results(args: argparse.Namespace, pipe: Any) -> None:
    from vision_pipe.runs import TEST_RESULTS

    if getattr(args, "save_json", False) and not getattr(args, "no_test", False):
        print(f"COCO results: {pipe.run_dir / TEST_RESULTS}")


def _pipeline(args: argparse.Namespace) -> Any:
    from vision_pipe.pipeline import Pipeline

    return Pipeline.from_yaml(args.pipeline, args.overrides, manager=manager(args), trust=args.trust_checkpoint)


def _fit(args: argparse.Namespace) -> int:
    from vision_pipe.pipeline import check_save_json

    pipe = _pipeline(args)
    if args.save_json and not args.no_test:
        check_save_json(pipe.config)
    _preflight(pipe)
    metrics = pipe.fit(resume=args.resume, trust=args.trust_checkpoint)
    print_metrics("fit finished", {k: v for k, v in metrics.items() if k.startswith("val/") and k.count("/") == 1})
    if not args.no_test:
        test = pipe.test(save_json=args.save_json)
        print_metrics("test metrics", {k: v for k, v in test.items() if k.count("/") == 1})
    print(f"\nrun directory: {pipe.run_dir}")
    _print_results(args, pipe)
    if pipe.best_checkpoint:
        print(f"best checkpoint: {pipe.best_checkpoint}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    _preflight(pipe)
    print_metrics("validation metrics", pipe.validate(args.ckpt, trust=args.trust_checkpoint))
    return 0


def _test(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    _preflight(pipe)
    print_metrics("test metrics", pipe.test(args.ckpt, trust=args.trust_checkpoint, save_json=args.save_json))
    print(f"\nrun directory: {pipe.run_dir}")
    _print_results(args, pipe)
    return 0


def _check(args: argparse.Namespace) -> int:
    from vision_pipe.trainer import check_trainer

    pipe = _pipeline(args)
    check_trainer(pipe.config, pipe.locations)
    cfg = pipe.config
    names = pipe.class_names
    print(f"{args.pipeline}: OK — pipeline '{cfg.name}', task {cfg.task}")
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    classes = f"{len(names)} classes: {shown}" if names else "images only, no classes"
    print(f"  loading       {cfg.data.loader['name']}  ({classes})")
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
