"""Framework overhead: a vision-pipe pipeline against a plain PyTorch loop on the same job.

Target (issue #6): seconds per epoch of the pipeline / the plain loop <= 1.05 on
the CPU (epochs after the first), with the losses equal to 4 decimals. With
``--backbone timm-resnet18`` (issue #12): <= 1.1 for a timm ResNet-18 classifier.

    .venv/bin/python bench/overhead.py [--task classification|detection|both] [--epochs 4]
                                       [--images N] [--workers W] [--progress-bar]
                                       [--backbone yaml|timm-resnet18] [--cache none|ram|disk] [key=value ...]

For each task the ready pipeline (``pipelines/shapes_<task>.yaml``) is built
twice from the same YAML and seed, so both sides start from identical weights:

(a) ``Pipeline.fit()`` — Lightning, checkpoints, CSV/TensorBoard logging, metrics;
(b) a loop written here with torch only: the same stages (normalizer → backbone →
    head), the same DataLoaders (dataset, augmentation, collate, workers), the same
    optimizer, seed and batch size, and the same validation metrics every epoch.

Both run ``--epochs`` epochs of training + validation. The learning-rate scheduler
and early stopping are turned off (``scheduler.name=none``) and Lightning's sanity
check too, so that both sides do the same work and draw the same random numbers:
with ``--workers >= 1`` (augmentation draws in the workers) the per-epoch losses
agree to float rounding. Epoch time: (a) from one epoch's start to the next
(the last one to the end of training: checkpointing and logging included),
(b) the train + validation loop; both as wall clock and as CPU time of the main
process (the DataLoader workers' time is not in it). Each side runs ``--rounds``
times in alternating order (a machine whose load changes favours neither); the
ratios are those of the medians of all epochs but each run's first (which
starts the workers). The losses compared are the first round's.

``--cache ram|disk`` (default ``none``) sets ``data.cache`` on both sides (the loop
reads the same cached splits, prepared by ``Pipeline.cache_images``): the overhead
when decoding no longer hides it (issue #18).

``--backbone timm-resnet18`` (classification only) replaces the YAML's VGG by
``{name: timm, model: resnet18, pretrained: FILE}``, FILE a state dict of a
randomly initialized timm ``resnet18`` (seed 0) saved by the script, so the local
weights-file path is exercised without a download; ``normalization: {name: pretrained}``
(the statistics timm publishes for it), 96 px images resized to 64 px (the YAML's
sizes and augmentation scaled by 2) and 1000 images by default.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vision_pipe import Pipeline, hookimpl
from vision_pipe.data import cpu_count as _cpu_count
from vision_pipe.module import make_optimizer
from vision_pipe.plugins import PluginManager

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = {"classification": 2000, "detection": 1000}
TIMM_IMAGES = 1000  #: default images with ``--backbone timm-resnet18``
TARGETS = {"yaml": 1.05, "timm-resnet18": 1.1}  #: ratio targets: issue #6, issue #12


class EpochTimer(pl.Callback):
    """Records when each training epoch starts, when training ends, and the epoch losses."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []
        self.end = (0.0, 0.0)
        self.losses: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.starts:
            self._record_losses(trainer)
        self.starts.append(clocks())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = clocks()
        self._record_losses(trainer)

    def _record_losses(self, trainer: pl.Trainer) -> None:
        # read at the next epoch's start: the module logs train/loss after the callbacks' epoch end
        m = trainer.callback_metrics
        self.losses.append((float(m["train/loss"]), float(m["val/loss"])))

    def epoch_seconds(self) -> list[tuple[float, float]]:
        marks = [*self.starts, self.end]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]


def clocks() -> tuple[float, float]:
    """(wall clock, CPU time of this process: all its threads, not the DataLoader workers)."""
    return time.perf_counter(), time.process_time()


class _TimerPlugin:
    """A vision-pipe plugin that adds :class:`EpochTimer` to the fit trainer."""

    def __init__(self, timer: EpochTimer) -> None:
        self.timer = timer

    @hookimpl
    def vision_pipe_before_fit(self, pipeline: Pipeline, run_dir: Path) -> None:
        pipeline.trainer.callbacks.append(self.timer)


def timm_resnet18_overrides(out: str) -> list[str]:
    """The overrides of ``--backbone timm-resnet18``: a timm ResNet-18 read from a random-weight file
    saved in ``out``, its input statistics, 64 px inputs (``shapes_classification.yaml``'s
    augmentation, whose pad / crop sizes are items 2 and 3, scaled by 2)."""
    import timm

    weights = Path(out) / "resnet18-random.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(timm.create_model("resnet18").state_dict(), weights)
    return [
        f"model.backbone={{name: timm, model: resnet18, pretrained: {weights}}}",
        "data.normalization={name: pretrained}",
        "data.loader.size=96",
        "data.input_size=[64,64]",
        "data.augmentation.2.min_height=72",
        "data.augmentation.2.min_width=72",
        "data.augmentation.3.height=64",
        "data.augmentation.3.width=64",
    ]


def overrides_for(args: argparse.Namespace, task: str, out: str) -> list[str]:
    """The overrides both sides use: sizes, workers, no scheduler / early stopping / sanity check."""
    timm_backbone = args.backbone == "timm-resnet18"
    images = args.images or (TIMM_IMAGES if timm_backbone else DEFAULT_IMAGES[task])
    return [
        *(timm_resnet18_overrides(out) if timm_backbone else []),
        f"data.loader.num_images={images}",
        f"data.num_workers={args.workers}",
        f"data.cache={args.cache}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        "trainer.num_sanity_val_steps=0",
        f"trainer.enable_progress_bar={str(args.progress_bar).lower()}",
        "trainer.enable_model_summary=false",
        "scheduler.name=none",
        "early_stopping.enabled=false",
        f"output_dir={out}",
        *args.overrides,
    ]


Seconds = list[tuple[float, float]]  # per epoch: (wall, CPU)
Losses = list[tuple[float, float]]  # per epoch: (train loss, val loss)


def run_pipeline(yaml_path: Path, overrides: list[str]) -> tuple[Seconds, Losses]:
    """(a): ``Pipeline.fit()``; returns seconds per epoch and (train loss, val loss) per epoch."""
    timer = EpochTimer()
    manager = PluginManager()
    manager.register(_TimerPlugin(timer), name="bench-epoch-timer")
    pipe = Pipeline.from_yaml(yaml_path, overrides, manager=manager)
    pipe.fit()
    return timer.epoch_seconds(), timer.losses


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors (and lists of tensors) of ``batch`` on ``device``; ``meta`` stays."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out


class PlainModel(torch.nn.Module):
    """normalizer → backbone → head, as a plain ``nn.Module``."""

    def __init__(self, normalizer: torch.nn.Module | None, backbone: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.normalizer, self.backbone, self.head = normalizer, backbone, head

    def forward(self, images: torch.Tensor) -> Any:
        x = images.float()
        if self.normalizer is not None:
            x = self.normalizer(x)
        return self.head(self.backbone(x))


def run_plain(yaml_path: Path, overrides: list[str], device: torch.device) -> tuple[Seconds, Losses]:
    """(b): the same stages, loaders, optimizer, seed and thread count in a loop of torch calls only."""
    threads = torch.get_num_threads()
    pipe = Pipeline.from_yaml(yaml_path, overrides)
    pipe.cache_images()  # the pre-flight, then data.cache as a fit applies it
    pipe.fit_normalizer()
    dm = pipe.datamodule
    cfg = pipe.config
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as Pipeline.fit seeds (torch, numpy, workers)
    if device.type == "cpu" and dm.num_workers and "OMP_NUM_THREADS" not in os.environ:
        # the threads Pipeline.fit gives the model on a CPU (cores the workers leave): the same
        # arithmetic in the same order, so that the losses can agree to the last digits
        torch.set_num_threads(max(1, _cpu_count() - dm.num_workers))
    model = PlainModel(pipe.stages["normalization"], pipe.stages["backbone"], pipe.stages["head"]).to(device)
    head = model.head
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    metrics = head.make_metrics().to(device)
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    seconds, losses = [], []
    for _ in range(int(cfg.trainer["max_epochs"])):
        start = clocks()
        model.train()
        total, count = torch.zeros((), device=device), 0
        for batch in train_loader:
            batch = to_device(batch, device)
            loss = head.loss(model(batch["image"]), batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bs = batch["image"].shape[0]
            total, count = total + loss.detach() * bs, count + bs
        model.eval()
        val_total, val_count = torch.zeros((), device=device), 0
        with torch.inference_mode():
            for batch in val_loader:
                batch = to_device(batch, device)
                outputs = model(batch["image"])
                bs = batch["image"].shape[0]
                val_total, val_count = val_total + head.loss(outputs, batch)["loss"] * bs, val_count + bs
                head.update_metrics(metrics, outputs, batch)
            head.summarize(metrics.compute(), pipe.class_names, None)
            metrics.reset()
        losses.append((float(total / count), float(val_total / val_count)))
        end = clocks()
        seconds.append((end[0] - start[0], end[1] - start[1]))
    torch.set_num_threads(threads)
    return seconds, losses


def report(task: str, piped: Seconds, plain: Seconds, lp: Losses, lq: Losses, epochs: int, target: float) -> None:
    """Print the first round's epochs, the ratios of the medians (all rounds, epochs after each run's first)
    and whether the losses agree."""
    print(f"\n== {task} ==")
    print(f"{'epoch':>5} {'pipeline s (cpu)':>17} {'plain s (cpu)':>15} {'pipe train/val loss':>21} {'plain train/val loss':>21}")
    for i, ((a, ac), (b, bc), (ta, va), (tb, vb)) in enumerate(zip(piped[:epochs], plain[:epochs], lp, lq, strict=True), start=1):
        print(f"{i:>5} {a:>9.2f} ({ac:>5.2f}) {b:>7.2f} ({bc:>5.2f}) {ta:>10.4f}/{va:<10.4f} {tb:>10.4f}/{vb:<10.4f}")
    later = [i for i in range(len(piped)) if i != 0 or len(piped) == 1]  # the first epoch starts the workers
    for name, k in (("wall clock", 0), ("CPU time of the main process", 1)):
        a = statistics.median(piped[i][k] for i in later)
        b = statistics.median(plain[i][k] for i in later)
        print(f"median {name} s/epoch (epochs 2..): pipeline {a:.2f}, plain {b:.2f}, ratio {a / b:.3f}   (target <= {target})")
    equal = all(round(x, 4) == round(y, 4) for p, q in zip(lp, lq, strict=True) for x, y in zip(p, q, strict=True))
    biggest = max(abs(x - y) for p, q in zip(lp, lq, strict=True) for x, y in zip(p, q, strict=True))
    print(f"losses equal to 4 decimals: {'yes' if equal else 'NO'} (largest difference {biggest:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["classification", "detection", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=0, help="synthetic images (default: 2000 / 1000)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of both sides (>= 1 for equal losses)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", choices=["none", "ram", "disk"], default="none", help="data.cache of both sides")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, in alternating order")
    parser.add_argument("--progress-bar", action="store_true", help="keep Lightning's progress bar on side (a)")
    parser.add_argument(
        "--backbone",
        choices=["yaml", "timm-resnet18"],
        default="yaml",
        help="the YAML's backbone, or timm's resnet18 at 64 px (classification)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="further overrides of both sides")
    args = parser.parse_args()
    if args.backbone != "yaml" and args.task == "detection":
        parser.error(f"--backbone {args.backbone} measures classification (--task classification)")
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else f'CPU ({_cpu_count()} cores)'}")
    tasks = ["classification", "detection"] if args.task == "both" else [args.task]
    if args.backbone != "yaml":
        tasks = ["classification"]
    for task in tasks:
        yaml_path = ROOT / "pipelines" / f"shapes_{task}.yaml"
        piped: Seconds = []
        plain: Seconds = []
        first_losses: dict[str, Losses] = {}
        for round_ in range(args.rounds):  # alternating order: a machine's changing load favours neither side
            with tempfile.TemporaryDirectory() as out:
                overrides = overrides_for(args, task, out)
                for side in ("pipeline", "plain") if round_ % 2 == 0 else ("plain", "pipeline"):
                    seconds, losses = run_pipeline(yaml_path, overrides) if side == "pipeline" else run_plain(
                        yaml_path, overrides, device
                    )
                    (piped if side == "pipeline" else plain).extend(seconds if round_ == 0 else seconds[1:])
                    if round_ == 0:
                        first_losses[side] = losses
        label = task if args.backbone == "yaml" else f"{task}, backbone {args.backbone}"
        report(label, piped, plain, first_losses["pipeline"], first_losses["plain"], args.epochs, TARGETS[args.backbone])

if __name__ == "__main__":
    main()
