"""The model side of a pipeline as a LightningModule: normalization → backbone → head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from vision_pipe.config import OptimizerConfig, SchedulerConfig
from vision_pipe.stages import Backbone, Batch, Head, Normalizer


class PipelineModule(pl.LightningModule):
    """Runs a batch through the normalizer (on the accelerator), the backbone and the head.

    Logs ``train/loss``, ``val/loss`` and the head's metrics as ``val/<key>`` /
    ``test/<key>`` once per epoch. ``test_metrics`` holds the last test results.
    """

    def __init__(
        self,
        normalizer: Normalizer | None,
        backbone: Backbone,
        head: Head,
        optimizer: OptimizerConfig,
        scheduler: SchedulerConfig,
        class_names: Sequence[str],
        checkpoint_extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.backbone = backbone
        self.head = head
        self.optimizer_config = optimizer
        self.scheduler_config = scheduler
        self.class_names = list(class_names)
        self.checkpoint_extra = checkpoint_extra or {}
        self.val_metrics = head.make_metrics()
        self.test_metrics_collection = head.make_metrics()
        self.plots_dir: Path | None = None
        self.test_metrics: dict[str, float] = {}

    # -- forward ------------------------------------------------------------

    def forward(self, images: Tensor) -> Any:
        """(B, 3, H, W) uint8 or float in [0, 255] → the head's raw outputs."""
        x = images.float()
        if self.normalizer is not None:
            x = self.normalizer(x)
        return self.head(self.backbone(x))

    # -- steps --------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        outputs = self(batch["image"])
        losses = self.head.loss(outputs, batch)
        bs = batch["image"].shape[0]
        for key, value in losses.items():
            self.log(f"train/{key}", value, on_step=False, on_epoch=True, prog_bar=key == "loss", batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch: Batch, split: str, metrics: Any) -> None:
        outputs = self(batch["image"])
        losses = self.head.loss(outputs, batch)
        bs = batch["image"].shape[0]
        for key, value in losses.items():
            self.log(f"{split}/{key}", value, on_epoch=True, prog_bar=key == "loss", batch_size=bs, sync_dist=True)
        self.head.update_metrics(metrics, outputs, batch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics_collection)

    def _log_metrics(self, split: str, metrics: Any, plots_dir: Path | None) -> dict[str, float]:
        computed = metrics.compute()
        metrics.reset()
        scalars = self.head.summarize(computed, self.class_names, plots_dir)
        prefixed = {f"{split}/{k}": float(v) for k, v in scalars.items()}
        self.log_dict(prefixed, prog_bar=False)
        return prefixed

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_metrics("val", self.val_metrics, None)
        else:
            self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        plots = self.plots_dir / "test" if self.plots_dir is not None else None
        self.test_metrics = self._log_metrics("test", self.test_metrics_collection, plots)

    def predict_step(self, batch: Batch, batch_idx: int) -> Any:
        return self.head.decode(self(batch["image"]), batch, self.class_names)

    # -- optimization -------------------------------------------------------

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, self.optimizer_config)
        scheduler = make_scheduler(optimizer, self.scheduler_config, self.trainer.max_epochs)
        if scheduler is None:
            return optimizer
        sched: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if self.scheduler_config.name == "plateau":
            sched["monitor"] = self.scheduler_config.monitor
        return {"optimizer": optimizer, "lr_scheduler": sched}

    # -- checkpoints --------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vision_pipe"] = {**self.checkpoint_extra, "class_names": self.class_names}


def make_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW, RMSProp or AdaGrad from the config."""
    wd = cfg.weight_decay
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, weight_decay=wd)
    return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=wd)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, max_epochs: int | None) -> Any:
    """Reduce-on-plateau, step or cosine (with optional linear warm-up); ``None`` for ``none``."""
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

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        progress = (epoch - warm) / max(1, total - warm)
        base = optimizer.defaults["lr"]
        floor = cfg.min_lr / base if base > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
