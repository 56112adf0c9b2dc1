"""``vision-pipe export``: a checkpoint as ONNX or TorchScript for deployment."""

from __future__ import annotations

import argparse
from typing import Any

from vision_pipe.cli._common import add_checkpoint_source, load_checkpoint


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint for deployment (ONNX or TorchScript)",
        description="Export a checkpoint to DIR/model.onnx or DIR/model.pt (TorchScript) (uint8 (N, H, W, 3) RGB "
        "images in; normalization and the task's decoding inside) with DIR/model.json; predict with it: "
        "vision-pipe predict DIR/model.onnx INPUT...",
    )
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
    add_checkpoint_source(p)
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    pipe = load_checkpoint(args)
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
