"""``vision-pipe predict``: a checkpoint (through the façade) or an exported model (ONNX Runtime / TorchScript)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vision_pipe.cli._common import (
    add_checkpoint_plugins,
    add_common,
    add_trust,
    describe,
    expand_inputs,
    manager,
    printable,
)
from vision_pipe.errors import VisionPipeError


def register(sub: Any) -> None:
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
    add_checkpoint_plugins(p)
    add_trust(p)
    add_common(p, overrides=False)
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if source.suffix in (".onnx", ".pt"):
        return _predict_exported(args)  # before anything imports Lightning (or, for ONNX, torch): neither is needed
    from vision_pipe.pipeline import Pipeline

    plugins = manager(args)
    if source.suffix == ".ckpt":
        pipe = Pipeline.load(source, manager=plugins, trust=args.trust_checkpoint, plugins=args.plugin)
    else:
        if not args.ckpt:
            raise VisionPipeError("predict with a pipeline YAML needs --ckpt CKPT (or give the checkpoint as SOURCE)")
        pipe = Pipeline.from_yaml(source, manager=plugins, trust=args.trust_checkpoint)
        pipe.load_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    paths = expand_inputs(args.inputs)
    predictions = pipe.predict(paths, out=args.out, device=args.device)
    for pred in predictions:
        print(describe(pred))
    extra = ", detections_coco.json" if predictions and "boxes" in predictions[0].to_dict() else ""
    print(f"\nwrote predictions.json{extra} and {len(predictions)} annotated image(s) to {args.out}/")
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
    paths = expand_inputs(args.inputs)
    predictions = predictor.predict(paths)
    predictor.write(paths, predictions, args.out)
    for pred in predictions:
        print(printable(task_of_prediction(pred).describe(pred)))
    print(f"\nwrote predictions.json and {len(predictions)} annotated image(s) to {args.out}/")
    return 0
