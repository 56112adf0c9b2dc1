"""Pretraining on unlabelled images: an autoencoder's backbone fine-tuned on a few labelled images, against the
same backbone from scratch.

Target (issue #15, section 3): learning from unlabelled images helps a small labelled task
with the same budget (epochs, learning-rate schedule) in both arms.

    .venv/bin/python bench/autoencoder_pretrain.py [--seeds 2] [--epochs 30] [--train-images 150]
                                                   [--pretrain-epochs 8] [--pretrain-images 3000]
                                                   [--workers W] [--workdir DIR] [--reuse WORKDIR]
                                                   [--pretrain-set KEY=VALUE ...] [--tuned-set KEY=VALUE ...]
                                                   [--load-stages stage1,stage2] [key=value ...]

- pretraining (once, a real ``Pipeline.fit()`` of ``pipelines/shapes_autoencoder.yaml``: VGG-11
  width 16 with batch norm, the ``autoencoder`` head, transposed-conv decoder, MSE, gaussian
  noise 0.1): ``--pretrain-images`` images of ``synthetic_shapes`` loader seed 1 are written
  as PNG files into a folder and read back, without labels, by the ``unlabelled_folder``
  loader; split 0.8 / 0.1 / 0.1; best.ckpt by val/psnr;
- fine-tuning (``pipelines/shapes_from_autoencoder.yaml``, its 3 classes: circle, square,
  triangle), images of loader seed 0: ``--train-images`` for training, a third of that for
  validation (picks best.ckpt), twice that for the test. Two arms per seed, from the same
  overrides: (a) from scratch (``model.backbone.weights=null``, He init), (b)
  ``model.backbone.weights`` = the pretraining run's folder (its best.ckpt's ``backbone.*``
  tensors, strictly). Same split per seed in both arms (checked from ``splits.json``).

Every fine-tuning arm: ``--epochs`` epochs, cosine schedule, no early stopping, Adam lr
0.002, the YAML's augmentation, an empty statistics cache of its own. ``--tuned-set`` overrides the
pretrained arm only (e.g. ``optimizer.backbone_lr=0.0005``, or a frozen backbone for the first epochs);
``--load-stages`` gives it only those backbone stages' tensors of the autoencoder (a partial state
dict, loaded with ``strict: false``; the other stages keep their He init). ``--reuse WORKDIR`` skips the
pretraining and fine-tunes from the one an earlier ``--workdir WORKDIR`` run made (its ``pretrain/`` run
and ``unlabelled/`` images), so that fine-tuning variants do not pay for it again. The script checks that
no fine-tuning test image is among the pretraining images (by their pixels) and reads the
tensors loaded from ``weights.json``. Prints the pretraining PSNR and time (paid once), each
seed's test accuracy per arm, then mean ± sample std and the range.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import cv2
import torch
from _job import device_name
from transfer import every_job, image_hashes, job, print_arms, run_dir, same_budget

from vision_pipe.checkpoints import read_checkpoint
from vision_pipe.finetune import weights_file
from vision_pipe_plugins.loading.synthetic_shapes import synthetic_shapes
from vision_pipe_plugins.loading.unlabelled_folder import unlabelled_folder


def write_unlabelled(folder: Path, count: int, seed: int) -> None:
    """``count`` images of the shapes YAML's generator (48 px, loader ``seed``) as PNG files, no labels."""
    folder.mkdir(parents=True)
    source = synthetic_shapes(num_images=count, size=48, seed=seed).load("reconstruction").splits["all"]
    for i in range(len(source)):
        cv2.imwrite(str(folder / f"{i:05d}.png"), source[i]["image"][:, :, ::-1])


def png_hashes(folder: Path) -> set[str]:
    """The pixel hashes (:func:`image_hashes`) of the images in ``folder`` as the ``unlabelled_folder`` loader
    reads them, i.e. as the pretraining saw them."""
    return image_hashes(unlabelled_folder(folder).load("reconstruction").splits["all"])


def stage_weights(checkpoint: Path, stages: list[str], out: Path) -> Path:
    """The backbone tensors of ``stages`` in ``checkpoint``, saved as a backbone state dict at ``out``."""
    state = read_checkpoint(checkpoint)["state_dict"]
    kept = {
        name.removeprefix("backbone."): tensor
        for name, tensor in state.items()
        if any(name.startswith(f"backbone.{stage}.") for stage in stages)
    }
    if not kept:
        raise SystemExit(f"--load-stages {','.join(stages)}: no backbone tensor of {checkpoint} is in these stages")
    torch.save(kept, out)
    return out


def pretrain_overrides(args: argparse.Namespace, images: Path, out: Path) -> list[str]:
    return [
        f"data.loader={{name: unlabelled_folder, root: {images}}}",
        "data.split=[0.8,0.1,0.1]",
        *same_budget(args.pretrain_epochs),
        *every_job(args, out),
        *args.pretrain_set,
    ]


def finetune_overrides(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    """One arm's overrides for ``seed``: train / val / test = n, n/3, 2n images of loader seed 0."""
    n = args.train_images
    val, test = n // 3, 2 * n
    total = n + val + test
    return [
        f"seed={seed}",
        "data.loader.seed=0",
        f"data.loader.num_images={total}",
        f"data.split=[{n / total},{val / total},{test / total}]",
        *same_budget(args.epochs),
        *every_job(args, out),
        *args.overrides,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds 0..N-1 (both arms each)")
    parser.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs of both arms")
    parser.add_argument("--train-images", type=int, default=150, help="fine-tuning training images")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-images", type=int, default=3000, help="unlabelled pretraining images")
    parser.add_argument("--workers", type=int, help="DataLoader workers of every job (default: the YAML's, auto)")
    parser.add_argument(
        "--pretrain-set", action="append", default=[], metavar="KEY=VALUE", help="an override of the pretraining only"
    )
    parser.add_argument(
        "--tuned-set", action="append", default=[], metavar="KEY=VALUE", help="an override of the pretrained arm only"
    )
    parser.add_argument("--load-stages", help="comma-separated backbone stages the pretrained arm loads (default: all)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the images and runs in this new folder (default: a temporary one)"
    )
    parser.add_argument(
        "--reuse", type=Path, metavar="WORKDIR", help="fine-tune from an earlier --workdir's pretraining"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further overrides of both fine-tuning arms")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True)  # a new folder: runs of another invocation are never mixed in
    with tempfile.TemporaryDirectory() if args.workdir is None else contextlib.nullcontext(str(args.workdir)) as tmp:
        out = Path(tmp)
        if args.reuse is None:
            write_unlabelled(out / "unlabelled", args.pretrain_images, seed=1)
            pre = job(
                pretrain_overrides(args, out / "unlabelled", out / "pretrain"),
                out / "cache" / "pre",
                "shapes_autoencoder",
            )
            pre_run = run_dir(pre)
            pretrain_images = set().union(*(image_hashes(source) for source in pre.pipe.splits.values()))
            pretrained = (
                f"{len(pre.pipe.splits['train'])} training images, {pre.epochs} epochs: test/psnr "
                f"{pre.test['test/psnr']:.2f} dB, fit + test {pre.seconds:.1f} s (paid once)"
            )
        else:
            # the checkpoint model.backbone.weights would take from that pretraining's runs folder
            pre_run = weights_file(args.reuse / "pretrain" / "shapes_autoencoder", "--reuse").parent.parent
            pretrain_images = png_hashes(args.reuse / "unlabelled")
            metrics = json.loads((pre_run / "metrics.json").read_text())
            pretrained = (
                f"reused {pre_run}: {int(metrics['fit/epochs'])} epochs, test/psnr {metrics['test/psnr']:.2f} dB"
            )
        weights = [f"model.backbone.weights={pre_run}"]
        if args.load_stages:
            checkpoint = weights_file(pre_run, "--load-stages")
            partial = stage_weights(checkpoint, args.load_stages.split(","), out / "stage_weights.pt")
            weights = [f"model.backbone.weights={partial}", "model.backbone.strict=false"]
        rows = []
        for seed in range(args.seeds):
            base = finetune_overrides(args, seed, out / f"seed{seed}")
            name = "shapes_from_autoencoder"
            scratch = job([*base, "model.backbone.weights=null"], out / "cache" / f"scratch{seed}", name)
            tuned = job([*base, *weights, *args.tuned_set], out / "cache" / f"tuned{seed}", name)
            splits = [(run_dir(arm) / "splits.json").read_text() for arm in (scratch, tuned)]
            assert splits[0] == splits[1], f"seed {seed}: the arms' splits differ"
            report = json.loads((run_dir(tuned) / "weights.json").read_text())
            shared = len(image_hashes(tuned.pipe.splits["test"]) & pretrain_images)
            rows.append((seed, scratch, tuned, report, shared))
    sizes = {k: len(v) for k, v in rows[0][1].pipe.splits.items()}
    print()
    print(f"device: {device_name()}")
    print(f"pretraining (autoencoder, unlabelled_folder): {pretrained}")
    if args.load_stages or args.tuned_set:
        print(f"pretrained arm: stages {args.load_stages or 'all'}, overrides {' '.join(args.tuned_set) or 'none'}")
    print(
        f"fine-tuning: classes {', '.join(rows[0][1].pipe.class_names)}, train / val / test {sizes['train']} / "
        f"{sizes['val']} / {sizes['test']} images, {args.epochs} epochs, cosine schedule, same split per seed"
    )
    print_arms(rows, "pretrained")


if __name__ == "__main__":
    main()
