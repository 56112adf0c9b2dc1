"""``vision-pipe attack``: a checkpoint's test metrics under an adversarial attack (FGSM or PGD) for each ε."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vision_pipe.cli._common import add_checkpoint_plugins, add_common, add_trust, manager


def register(sub: Any) -> None:
    p = sub.add_parser(
        "attack",
        help="evaluate a checkpoint on adversarial versions of its test split (FGSM, PGD)",
        description="Evaluate a checkpoint on the test split its config describes, with every image perturbed in "
        "pixel space by FGSM (x + eps*sign(grad_x loss), clipped to [0, 255]) or PGD, for each eps (in /255). "
        "Merges test/<method>/eps=<eps>/<metric> into the run's metrics.json and writes "
        "plots/<method>_curve.png and plots/<method>_examples.png.",
    )
    p.add_argument("ckpt", metavar="CKPT", help="a vision-pipe checkpoint (.ckpt) of the pipeline to attack")
    add_common(p)
    p.add_argument("--method", choices=["fgsm", "pgd"], default="fgsm", help="default: fgsm")
    p.add_argument(
        "--eps", type=eps_list, metavar="E,E,...", help="perturbation sizes in /255, e.g. 0,1,2,4,8 (the default)"
    )
    p.add_argument("--alpha", type=float, metavar="A", help="pgd: step size in /255 (default 2.5*eps/steps)")
    p.add_argument("--steps", type=int, metavar="K", help="pgd: iterations (default 10)")
    p.add_argument("--no-random-start", action="store_true", help="pgd: start from the image itself")
    p.add_argument("--examples", type=int, metavar="N", help="test images in the examples figure (default 4)")
    add_checkpoint_plugins(p)
    add_trust(p)
    p.set_defaults(handler=_attack)


def eps_list(text: str) -> list[float]:
    """``--eps 0,1,2.5`` → [0.0, 1.0, 2.5]: numbers >= 0 (argparse reports a bad value naming ``--eps``)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in /255, e.g. 0,1,2,4,8 (got {text!r})"
        ) from None
    if not values or any(not 0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"each eps must be a number from 0 to 255 (in /255; got {text!r})")
    return values


def _attack(args: argparse.Namespace) -> int:
    from vision_pipe.attack import metric_key
    from vision_pipe.pipeline import Pipeline
    from vision_pipe.tasks import get_task

    pipe = Pipeline.load(
        args.ckpt,
        manager=manager(args),
        trust=args.trust_checkpoint,
        plugins=args.plugin,
        data=True,
        overrides=args.overrides,
    )
    metrics = pipe.attack(
        args.ckpt,
        method=args.method,
        eps=args.eps,
        alpha=args.alpha,
        steps=args.steps,
        random_start=False if args.no_random_start else None,
        examples=args.examples,
        trust=args.trust_checkpoint,
    )
    metric = get_task(pipe.config.task).main_metrics[0]
    prefix = f"test/{args.method}/eps="
    eps = sorted({float(k[len(prefix) :].split("/")[0]) for k in metrics if k.startswith(prefix)})
    print(f"\n{args.method}: test {metric} vs eps (/255), {len(pipe.splits['test'])} images")
    for e in eps:
        print(f"  eps={e:<6g} {metrics[metric_key(args.method, e, metric)]:.4f}")
    plots = pipe.run_dir / "plots" if pipe.run_dir is not None else Path("plots")
    for what in ("curve", "examples"):
        if (plots / f"{args.method}_{what}.png").is_file():
            print(f"{what}: {plots / f'{args.method}_{what}.png'}")
    print(f"metrics: {pipe.run_dir}/metrics.json")
    return 0
