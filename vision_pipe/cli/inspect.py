"""``vision-pipe inspect``: what a checkpoint's network learned — first-layer filters, feature maps, Grad-CAM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vision_pipe.cli._common import add_checkpoint_source, expand_inputs, load_checkpoint, printable
from vision_pipe.errors import VisionPipeError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="draw a checkpoint's first-layer filters, feature maps and class saliency (Grad-CAM)",
        description="Write to --out: filters.png (the first convolution's filters), per image one PNG per "
        "backbone map (its first --channels channels) and a Grad-CAM heat map on the image "
        "(classification, segmentation), and inspect.json listing every PNG.",
    )
    add_checkpoint_source(p, what="a vision-pipe checkpoint (.ckpt; e.g. runs/<name>/<time>/checkpoints/best.ckpt)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders of images (optional)")
    p.add_argument("--out", default="inspect", metavar="DIR", help="output folder (default: inspect)")
    p.add_argument("--channels", type=int, default=16, metavar="N", help="channels drawn per map (default: 16)")
    p.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="the class the saliency map explains (default: each image's predicted class)",
    )
    p.add_argument("--no-saliency", action="store_true", help="no Grad-CAM maps")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N or mps")
    p.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    from vision_pipe.inspect import inspect_model

    if Path(args.ckpt).suffix.lower() in (".yaml", ".yml"):
        raise VisionPipeError(
            f"{args.ckpt}: inspect takes a checkpoint, not a pipeline YAML; fit it first "
            "(vision-pipe fit) and give its runs/<name>/<time>/checkpoints/best.ckpt"
        )
    images = expand_inputs(args.images)
    pipe = load_checkpoint(args)
    report = inspect_model(
        pipe,
        images,
        out=args.out,
        channels=args.channels,
        class_name=args.class_name,
        saliency=not args.no_saliency,
        device=args.device,
    )
    for record in report.files:
        print(f"{record['file']}  {describe_record(record)}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nwrote inspect.json and {len(report.files)} PNG(s) to {args.out}/")
    return 0


def describe_record(record: dict[str, Any]) -> str:
    """One line about an ``inspect.json`` record."""
    if record["shows"] == "filters":
        kernel = "x".join(str(k) for k in record["kernel"])
        return f"filters of {record['layer']!r}: {record['filters']} x {kernel}"
    image = printable(record["image"])
    if record["shows"] == "feature_map":
        return f"{image}: map {record['layer']!r}, channels 0-{record['channels'][-1]} of {record['of']}"
    return (
        f"{image}: Grad-CAM of {record['class']!r} (score {record['score']:.3f}; predicted {record['predicted']!r}) "
        f"on map {record['layer']!r}"
    )
