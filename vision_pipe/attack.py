"""Robustness under attack: the test split evaluated on adversarial versions of its images, for each ε.

:class:`AttackEvaluation` is a Lightning callback of a test run (``vision-pipe attack``,
:meth:`vision_pipe.Pipeline.attack`, or ``test: {attack: ...}`` in a pipeline YAML). After the
module's own test step on a batch, it perturbs the batch's pixels (:mod:`vision_pipe.adversarial`:
FGSM or PGD on the head's training loss, in pixel space, clipped to [0, 255]) for each ε and feeds
the model's outputs on them to a fresh copy of the head's metrics — the task's own evaluation path,
so ε = 0 gives exactly the clean test metrics. At the end it logs the task's summary per ε as
``test/<method>/eps=<ε>/<key>`` (merged into the run's ``metrics.json`` with the other test metrics)
and writes ``plots/<method>_curve.png`` (the task's primary metric vs ε) and
``plots/<method>_examples.png`` (a few test images: prediction on the original, the perturbation
amplified, prediction on the adversarial image — drawn by the task).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pydantic
import pytorch_lightning as pl
import torch
from torch import Tensor

from vision_pipe.adversarial import fgsm, gradient_sign, head_loss, perturb
from vision_pipe.config import AttackConfig, pydantic_to_config_error
from vision_pipe.config_files import Locations
from vision_pipe.drawing import upscale
from vision_pipe.io import atomic_write_bytes, write_png
from vision_pipe.module import PipelineModule
from vision_pipe.predict import as_float32
from vision_pipe.results import Prediction
from vision_pipe.stages import Batch
from vision_pipe.tasks import get_task, task_of_prediction


def attack_config(**settings: Any) -> AttackConfig:
    """An :class:`~vision_pipe.config.AttackConfig` from keyword arguments (``None`` = the default);
    a bad value is a :class:`~vision_pipe.errors.ConfigError` naming the argument."""
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        return AttackConfig.model_validate(given)
    except pydantic.ValidationError as exc:
        raise pydantic_to_config_error(exc, given, Locations(), model=AttackConfig, what=" (attack)") from None


def metric_key(method: str, eps: float, key: str) -> str:
    """``test/<method>/eps=<ε>/<key>``, ε written shortest (``eps=4``, ``eps=0.5``)."""
    return f"test/{method}/eps={eps:g}/{key}"


@dataclass
class _Example:
    """One test image of the examples figure: (H, W, 3) uint8 original and adversarial, and predictions."""

    original: np.ndarray
    adversarial: np.ndarray
    clean: Prediction
    attacked: Prediction


class AttackEvaluation(pl.Callback):
    """Evaluates every test batch again under ``spec`` for each of its ε (see the module docstring).

    Needs a Trainer whose evaluation allows gradients (``make_trainer(..., gradients=True)``).
    ``results`` maps each ε to the task's summary (keys without prefix), once the test ended.
    """

    def __init__(
        self, spec: AttackConfig, class_names: Sequence[str], class_colors: Sequence[Sequence[int]] | None = None
    ) -> None:
        self.spec = spec
        self.class_colors = class_colors
        self.eps = sorted(set(spec.eps))
        self.class_names = list(class_names)
        self.results: dict[float, dict[str, float]] = {}
        self._metrics: dict[float, Any] = {}
        self._examples: list[_Example] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = _module(pl_module)
        # states an earlier test left under inference_mode are inference tensors, which this test (no_grad)
        # could not update in place: fresh ones
        module.test_metrics_collection.reset()
        head = module.head
        self._metrics = {eps: head.make_metrics().to(pl_module.device) for eps in self.eps}
        self._examples = []
        self.results = {}

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, module = batch["image"], _module(pl_module)
        with trainer.precision_plugin.forward_context():
            loss_of = head_loss(module, batch)
            sign = gradient_sign(loss_of, images) if self.spec.method == "fgsm" else None
            for eps in self.eps:
                # fgsm: one gradient for every ε
                adv = fgsm(loss_of, images, eps, sign) if sign is not None else perturb(loss_of, images, eps, self.spec)
                with torch.no_grad():
                    attacked = module(adv)
                module.head.update_metrics(self._metrics[eps], attacked, batch)
                if eps == self.eps[-1] and len(self._examples) < self.spec.examples and trainer.is_global_zero:
                    with torch.no_grad():
                        clean = module(images)
                    self._collect(module, batch, images, adv, clean, attacked)

    def _collect(
        self, pl_module: PipelineModule, batch: Any, images: Tensor, adv: Tensor, clean: Any, attacked: Any
    ) -> None:
        """Keep the first test images of the examples figure, their predictions decoded at the input size."""
        size = tuple(int(v) for v in images.shape[-2:])
        at_input: Batch = {**batch, "meta": [{**meta, "orig_size": size} for meta in batch["meta"]]}
        decode = pl_module.head.decode
        clean_preds = decode(as_float32(clean), at_input, self.class_names)
        adv_preds = decode(as_float32(attacked), at_input, self.class_names)
        originals = images.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        adversarials = adv.round().permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
        take = min(len(originals), self.spec.examples - len(self._examples))
        for i in range(take):
            self._examples.append(_Example(originals[i], adversarials[i], clean_preds[i], adv_preds[i]))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logged: dict[str, float] = {}
        module = _module(pl_module)
        for eps, metrics in self._metrics.items():
            computed = metrics.compute()
            metrics.reset()
            summary = module.head.summarize(computed, self.class_names, None)
            self.results[eps] = {k: float(v) for k, v in summary.items()}
            logged.update({metric_key(self.spec.method, eps, k): float(v) for k, v in summary.items()})
        pl_module.log_dict(logged, sync_dist=True, reduce_fx="max")
        plots = module.plots_dir
        if plots is None or not trainer.is_global_zero:
            return
        task = get_task(module.head.task)
        metric = (task.main_metrics or tuple(self.results[self.eps[0]]))[0]
        curve = {eps: values.get(metric, float("nan")) for eps, values in self.results.items()}
        plot_attack_curves({self.spec.method: curve}, metric, plots / f"{self.spec.method}_curve.png")
        if self._examples:
            title = f"{self.spec.method} eps={self.eps[-1]:g}/255"
            figure = examples_figure(self._examples, title, self.class_colors)
            write_png(plots / f"{self.spec.method}_examples.png", figure, compression=9)


def _module(pl_module: pl.LightningModule) -> PipelineModule:
    """The callback's module, a :class:`~vision_pipe.module.PipelineModule` (for the type checker)."""
    return cast(PipelineModule, pl_module)


def plot_attack_curves(curves: Mapping[str, Mapping[float, float]], metric: str, out: Path) -> None:
    """One line per entry of ``curves`` (label → {ε: metric}), ``metric`` against ε (/255), as a PNG at ``out``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for label, values in curves.items():
        eps = sorted(values)
        ax.plot(eps, [values[e] for e in eps], marker="o", label=label)
    ax.set_xlabel("ε (pixel units, /255)")
    ax.set_ylabel(metric)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(out, png.getvalue())


def examples_figure(
    examples: Sequence[_Example], title: str, class_colors: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """One row per example: the original with its prediction, the perturbation (amplified to the full
    grey range), the adversarial image with its prediction (each drawn by the task). BGR uint8."""
    rows = []
    for ex in examples:
        task = task_of_prediction(ex.clean)
        left = task.draw(ex.original, ex.clean, class_colors)
        right = task.draw(ex.adversarial, ex.attacked, class_colors)
        delta = ex.adversarial.astype(np.float32) - ex.original.astype(np.float32)
        peak = float(np.abs(delta).max())
        gain = 127.0 / peak if peak > 0 else 1.0
        middle = np.ascontiguousarray(upscale(np.clip(128 + gain * delta, 0, 255).astype(np.uint8))[0])
        middle = cv2.resize(middle, (left.shape[1], left.shape[0]), interpolation=cv2.INTER_NEAREST)
        cv2.rectangle(middle, (0, 0), (middle.shape[1], 24), (0, 0, 0), -1)
        text = f"perturbation x{gain:.0f}"
        cv2.putText(middle, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([left, gap, middle, gap, right], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    header = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(header, f"original | {title} | adversarial", (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    return cv2.cvtColor(np.concatenate([header, *rows], axis=0), cv2.COLOR_RGB2BGR)


__all__ = ["AttackEvaluation", "attack_config", "examples_figure", "metric_key", "plot_attack_curves"]
