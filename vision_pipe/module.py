"""The model side of a pipeline as a LightningModule: normalization → backbone → head.

Per step the module does only what the step needs: the loss terms are summed
on the device and logged once per epoch (no per-step ``self.log``, no host
sync), as means over the epoch's samples of all processes; the datamodule moves
only the batch's tensors to the accelerator. The one host read per step is the
non-finite loss check of :mod:`vision_pipe.guards` (its cost is described there);
with ``guard.on_nonfinite: skip_batch`` it happens here, in ``training_step``. The head's torchmetrics reduce
themselves across processes.

Performance switches (``model.channels_last``, ``model.compile``; see
:class:`~vision_pipe.config.ModelConfig`) are applied here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from vision_pipe.adversarial import mix_adversarial
from vision_pipe.config import AdversarialTrainingConfig, OptimizerConfig, SchedulerConfig
from vision_pipe.errors import StageError
from vision_pipe.finetune import UnfreezeBackbone, WeightsReport
from vision_pipe.guards import any_nonfinite
from vision_pipe.stages import Backbone, Batch, Head, Normalizer
from vision_pipe.tasks.metric_sync import gather_in_order

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


class PipelineModule(pl.LightningModule):
    """Runs a batch through the normalizer (on the accelerator), the backbone and the head.

    Logs ``train/loss``, ``val/loss`` and the head's metrics as ``val/<key>`` /
    ``test/<key>`` once per epoch. ``test_metrics`` holds the last test results.

    ``channels_last``: the model's 4-d weights and the normalized input batch use
    the NHWC memory format (faster convolutions on GPUs with tensor cores).
    ``unfreeze``: ``(epoch, names)`` of ``unfreeze_at_epoch``: the named (frozen) backbone parameters
    are in the optimizer's ``backbone`` group from the start and train from that epoch on
    (:class:`~vision_pipe.finetune.UnfreezeBackbone`).
    ``metric_options``: passed to ``head.make_metrics`` (the ``metrics:`` section's options for the task).
    ``adversarial``: ``training.adversarial`` (:func:`~vision_pipe.adversarial.mix_adversarial`); logs
    ``train/adversarial_fraction``.
    ``compile``: ``False``, or a ``torch.compile`` mode (``True`` = ``"default"``)
    with which the backbone is compiled in place when a Trainer sets the module up
    (parameter names, hence checkpoints, are unchanged).
    """

    #: ``torch.compile`` backend of the ``compile`` switch (tests use ``"eager"``).
    compile_backend: str = "inductor"

    def __init__(
        self,
        normalizer: Normalizer | None,
        backbone: Backbone,
        head: Head,
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        class_names: Sequence[str],
        checkpoint_extra: dict[str, Any] | None = None,
        *,
        channels_last: bool = False,
        compile: bool | str = False,
        unfreeze: tuple[int, Sequence[str]] | None = None,
        metric_options: dict[str, Any] | None = None,
        adversarial: AdversarialTrainingConfig | None = None,
    ) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.backbone = backbone
        self.head = head
        self.optimizer_config = optimizer
        self.scheduler_config = scheduler
        self.class_names = list(class_names)
        self.checkpoint_extra = checkpoint_extra or {}
        self.val_metrics = _make_metrics(head, metric_options or {})
        self.test_metrics_collection = _make_metrics(head, metric_options or {})
        self.plots_dir: Path | None = None
        self.test_metrics: dict[str, float] = {}
        #: set by ``Pipeline.test(save_json=True)``: keep the decoded predictions of the test split
        self.record_test_predictions = False
        #: the test split's predictions (all processes', in the split's order) when recorded
        self.test_predictions: list[Any] = []
        self.channels_last = channels_last
        self.compile_mode: str | None = ("default" if compile is True else compile) or None
        self._loss_sums: dict[str, dict[str, Tensor]] = {}
        self._loss_counts: dict[str, int] = {}
        #: set by :class:`vision_pipe.guards.NonFiniteGuard`: skip batches whose loss is NaN/inf (and count them)
        self.skip_nonfinite = False
        self.skipped_batches = 0
        #: the last epoch whose validation ran (reduce-on-plateau steps only then)
        self._validated_epoch = -1
        #: ``(epoch, names)``: the frozen backbone parameters trained from that epoch on (``unfreeze_at_epoch``)
        self.unfreeze_plan = (unfreeze[0], list(unfreeze[1])) if unfreeze is not None else None
        #: what loading ``model.backbone.weights`` did (the run's ``weights.json``); set by the build
        self.weights_report: WeightsReport | None = None
        #: parameters no output depends on, frozen at build (:func:`~vision_pipe.finetune.freeze_unused`)
        self.unused_parameters: list[str] = []
        #: ``training.adversarial``: part of each training batch replaced by its adversarial version
        self.adversarial = adversarial
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # -- setup --------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Compile the backbone (``compile`` switch) before a Trainer runs the module."""
        if self.compile_mode is not None and getattr(self.backbone, "_compiled_call_impl", None) is None:
            self.backbone.compile(mode=self.compile_mode, backend=self.compile_backend)

    # -- forward ------------------------------------------------------------

    def forward(self, images: Tensor) -> Any:
        """(B, 3, H, W) uint8 or float in [0, 255] → the head's raw outputs."""
        return run_stages(images, self.normalizer, self.backbone, self.head, self.channels_last)

    def inference_model(self) -> InferenceModel:
        """:meth:`forward` as a plain ``nn.Module`` sharing this module's stages (no Lightning, no metrics):
        what an export traces."""
        return InferenceModel(self.normalizer, self.backbone, self.head, channels_last=self.channels_last)

    # -- steps --------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        images, replaced = batch["image"], 0
        if self.adversarial is not None:
            images, replaced = mix_adversarial(self, batch, self.adversarial)
        outputs = self(self.head.training_inputs(images))  # e.g. a denoising head's noise
        losses = self.head.loss(outputs, batch)
        if self.adversarial is not None:  # logged as train/adversarial_fraction: the share of attacked images
            losses = {**losses, "adversarial_fraction": torch.tensor(replaced / images.shape[0], device=images.device)}
        if self.skip_nonfinite and any_nonfinite(self.trainer, losses["loss"]):
            self.skipped_batches += 1
            return None  # Lightning skips this batch's backward pass and optimizer step
        self._accumulate("train", losses, batch["image"].shape[0])
        return losses["loss"]

    def _eval_step(self, batch: Batch, split: str, metrics: Any) -> Any:
        outputs = self(batch["image"])
        self._accumulate(split, self.head.loss(outputs, batch), batch["image"].shape[0])
        self.head.update_metrics(metrics, outputs, batch)
        return outputs

    def _accumulate(self, split: str, losses: dict[str, Tensor], batch_size: int) -> None:
        """Add one batch's loss terms, weighted by its size, to the epoch's sums (on the device: no host sync)."""
        sums = self._loss_sums.setdefault(split, {})
        with torch.no_grad():
            for key, value in losses.items():
                term = value.detach().float() * batch_size
                sums[key] = sums[key] + term if key in sums else term
        self._loss_counts[split] = self._loss_counts.get(split, 0) + batch_size

    def _log_losses(self, split: str) -> None:
        """Log ``<split>/<key>``: each loss term's mean over the epoch's samples of every process.

        One all-reduce of [count, sums...] per epoch; exact with processes of unequal shares
        (evaluation splits are not padded), which Lightning's per-step ``self.log`` is not.
        """
        sums, count = self._loss_sums.pop(split, {}), self._loss_counts.pop(split, 0)
        keys = self.trainer.strategy.broadcast(sorted(sums))  # rank 0 has the largest share
        if not keys:
            return
        zero = torch.zeros((), device=self.device)
        stacked = torch.stack([torch.tensor(float(count), device=self.device), *(sums.get(k, zero) for k in keys)])
        stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
        for key, total in zip(keys, stacked[1:], strict=True):
            mean = total / stacked[0].clamp(min=1)
            # equal in every process already: "max" keeps it exact (and tells Lightning it is reduced)
            self.log(f"{split}/{key}", mean, prog_bar=key == "loss", sync_dist=True, reduce_fx="max")

    def on_train_epoch_start(self) -> None:
        self._loss_sums.pop("train", None)
        self._loss_counts.pop("train", None)

    def on_train_epoch_end(self) -> None:
        self._log_losses("train")
        if self.skip_nonfinite:
            self.log("train/skipped_batches", float(self.skipped_batches), sync_dist=True, reduce_fx="sum")
        self._step_plateau_schedules()

    def _step_plateau_schedules(self) -> None:
        """Step a reduce-on-plateau schedule at the end of a validated epoch, before the checkpoint callbacks.

        Lightning would step it after them, so ``last.ckpt`` would miss the
        epoch's step and a resumed run would continue with another rate.
        """
        if self._validated_epoch != self.current_epoch:  # not validated this epoch: its value would be stale
            return
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, _Plateau) and config.interval == "epoch" and config.monitor:
                value = self.trainer.callback_metrics.get(config.monitor)
                if value is not None:
                    config.scheduler.step(value)

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Lightning's stepping of the schedules; reduce-on-plateau is stepped in ``on_train_epoch_end``."""
        if not isinstance(scheduler, _Plateau):
            super().lr_scheduler_step(scheduler, metric)

    def on_validation_epoch_start(self) -> None:
        self._loss_sums.pop("val", None)
        self._loss_counts.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._loss_sums.pop("test", None)
        self._loss_counts.pop("test", None)
        self.test_predictions = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        outputs = self._eval_step(batch, "test", self.test_metrics_collection)
        if self.record_test_predictions:
            self.test_predictions.extend(self.head.decode(outputs, batch, self.class_names))

    def _log_metrics(self, split: str, metrics: Any, plots_dir: Path | None) -> dict[str, float]:
        computed = metrics.compute()
        metrics.reset()
        # torchmetrics reduced its states across processes: every rank holds the same values,
        # so only rank 0 writes pictures, and "max" keeps the logged values exact.
        plots_dir = plots_dir if self.trainer.is_global_zero else None
        scalars = self.head.summarize(computed, self.class_names, plots_dir)
        prefixed = {f"{split}/{k}": float(v) for k, v in scalars.items()}
        self.log_dict(prefixed, prog_bar=False, sync_dist=True, reduce_fx="max")
        return prefixed

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._validated_epoch = self.current_epoch
            self._log_losses("val")
            self._log_metrics("val", self.val_metrics, None)
        else:
            self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self._log_losses("test")
        plots = self.plots_dir / "test" if self.plots_dir is not None else None
        self.test_metrics = self._log_metrics("test", self.test_metrics_collection, plots)
        if self.record_test_predictions:  # one collective per evaluation, as the metrics
            self.test_predictions = gather_in_order(self.test_predictions)

    def predict_step(self, batch: Batch, batch_idx: int) -> Any:
        return self.head.decode(self(batch["image"]), batch, self.class_names)

    # -- optimization -------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups.

        One group of every trainable parameter at ``optimizer.lr``, unless ``optimizer.backbone_lr`` or
        ``unfreeze_at_epoch`` is set: then a ``backbone`` group (at ``backbone_lr``, default ``lr``; with
        the frozen parameters to be unfrozen, which get no gradient, hence no update, until then) and a
        ``head`` group (everything else: the head and a learned normalization). Empty groups are left out.
        """
        cfg = self.optimizer_config
        if cfg.backbone_lr is None and self.unfreeze_plan is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        later = set(self.unfreeze_plan[1]) if self.unfreeze_plan is not None else set()
        backbone = [p for n, p in self.backbone.named_parameters() if p.requires_grad or n in later]
        in_backbone = {id(p) for p in self.backbone.parameters()}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in in_backbone]
        groups = [
            {"name": "backbone", "params": backbone, "lr": cfg.backbone_lr or cfg.lr},
            {"name": "head", "params": head, "lr": cfg.lr},
        ]
        return [g for g in groups if g["params"]]

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`~vision_pipe.finetune.UnfreezeBackbone` for ``unfreeze_at_epoch``."""
        if self.unfreeze_plan is None:
            return []
        return [UnfreezeBackbone(*self.unfreeze_plan)]

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.param_groups(), self.optimizer_config)
        scheduler = make_scheduler(optimizer, self.scheduler_config, self.trainer.max_epochs)
        if scheduler is None:
            return optimizer
        sched: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if self.scheduler_config.name == "plateau":
            # stepped by _step_plateau_schedules after each validation; not strict, so that Lightning does not
            # stop a run whose epochs are not all validated (trainer.check_val_every_n_epoch > 1)
            sched.update(monitor=self.scheduler_config.monitor, strict=False)
        return {"optimizer": optimizer, "lr_scheduler": sched}

    # -- checkpoints --------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vision_pipe"] = {**self.checkpoint_extra, "class_names": self.class_names}


def _make_metrics(head: Head, options: dict[str, Any]) -> Any:
    """``head.make_metrics(**options)``; a :class:`StageError` when a head's own ``make_metrics`` takes no options."""
    if not options:
        return head.make_metrics()
    try:
        return head.make_metrics(**options)
    except TypeError as exc:
        raise StageError(
            f"head {type(head).__name__} makes its own metrics and does not take the metric options {options} "
            f"of the YAML's metrics: section ({exc}); remove them or let the head use its task's metrics"
        ) from exc


def make_optimizer(params: list[nn.Parameter] | list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW, RMSProp or AdaGrad from the config, over parameters or
    parameter groups (a group's own ``lr`` wins over ``cfg.lr``)."""
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, weight_decay=wd
        )
    return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=wd)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, max_epochs: int | None) -> Any:
    """Reduce-on-plateau, step or cosine (with optional linear warm-up); ``None`` for ``none``.

    Each scales every parameter group's rate by the same factor; the cosine's floor ``min_lr`` is
    the same rate for every group (a group whose rate is below it stays at its rate)."""
    if cfg.name == "none":
        return None
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
        )
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    total = max(1, max_epochs or 1)
    warm = cfg.warmup_epochs

    def factor(base: float, epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        progress = (epoch - warm) / max(1, total - warm)
        floor = min(1.0, cfg.min_lr / base) if base > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    bases = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [functools.partial(factor, base) for base in bases])


def run_stages(
    images: Tensor, normalizer: Normalizer | None, backbone: Backbone, head: Head, channels_last: bool = False
) -> Any:
    """(B, 3, H, W) uint8 or float in [0, 255] → normalization → backbone → the head's raw outputs."""
    return head(backbone(normalize_images(images, normalizer, channels_last)))


def normalize_images(images: Tensor, normalizer: Normalizer | None, channels_last: bool = False) -> Tensor:
    """(B, 3, H, W) uint8 or float in [0, 255] → the backbone's float input: normalized (when there is a
    normalizer), in the NHWC memory format when ``channels_last``."""
    x = images.float()
    if normalizer is not None:
        x = normalizer(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class InferenceModel(nn.Module):
    """normalization → backbone → head (:func:`run_stages`) without Lightning: :meth:`PipelineModule.inference_model`."""

    def __init__(
        self, normalizer: Normalizer | None, backbone: Backbone, head: Head, *, channels_last: bool = False
    ) -> None:
        super().__init__()
        self.normalizer, self.backbone, self.head, self.channels_last = normalizer, backbone, head, channels_last

    def forward(self, images: Tensor) -> Any:
        return run_stages(images, self.normalizer, self.backbone, self.head, self.channels_last)
