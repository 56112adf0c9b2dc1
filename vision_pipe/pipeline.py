"""The programmatic API: build a pipeline from YAML or a dict, fit, test, predict.

The CLI (:mod:`vision_pipe.cli`) is a thin layer over :class:`Pipeline`.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

from vision_pipe.config import (
    Locations,
    PipelineConfig,
    apply_overrides,
    dotted,
    load_yaml_with_bases,
    validate,
    validate_stage_params,
)
from vision_pipe.data import (
    PipelineDataModule,
    SubsetSource,
    cache_dir,
    collate,
    default_num_workers,
    iter_resized_images,
    make_splits,
    normalization_fingerprint,
    transform_sample,
)
from vision_pipe.distributed import (
    is_secondary_process,
    private_run_dir,
    wait_for_rank_zero,
)
from vision_pipe.errors import (
    ChainError,
    ConfigError,
    DataError,
    StageError,
    VisionPipeError,
)
from vision_pipe.io import IMAGE_EXTENSIONS, read_image
from vision_pipe.module import PipelineModule
from vision_pipe.plugins import RESERVED_KEYS, PluginManager
from vision_pipe.preflight import PreflightReport, apply_report, run_preflight
from vision_pipe.preflight import cache_path as preflight_cache_path
from vision_pipe.render import write_predictions
from vision_pipe.results import Prediction
from vision_pipe.stages import (
    Backbone,
    Head,
    Loader,
    Normalizer,
    SampleSource,
    StageContext,
)


class _DropLightningTips(logging.Filter):
    """Lightning advertises optional cloud services at every Trainer start; keep the console for our output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLightningTips())
log = logging.getLogger("vision_pipe")
# Evaluation trainers restore a checkpoint without the training callbacks on purpose.
warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class Pipeline:
    """A validated, built pipeline: its stages, data, model and runs.

    Build one with :meth:`from_yaml`, :meth:`from_dict` or :meth:`load`.

    Attributes:
        config: the validated :class:`~vision_pipe.config.PipelineConfig`.
        resolved: the fully resolved config as a plain dict (what ``config.yaml`` of a run holds).
        stages: the built stages by kind (``loading``, ``normalization``,
            ``augmentation`` (a list), ``backbone``, ``head``).
        class_names: the class names (index = label).
        module: the :class:`~vision_pipe.module.PipelineModule` (a LightningModule).
        datamodule: the LightningDataModule (``None`` for a pipeline loaded from a checkpoint).
        trainer: the last ``pytorch_lightning.Trainer`` used (``None`` before any run).
        run_dir: the directory of the current run (``None`` before any run).
        manager: the :class:`~vision_pipe.plugins.PluginManager`.
    """

    def __init__(
        self,
        data: dict[str, Any],
        locs: Locations,
        *,
        manager: PluginManager | None = None,
        class_names: Sequence[str] | None = None,
        class_colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.manager = manager or PluginManager()
        for module in data.get("plugins") or []:
            if isinstance(module, str):
                self.manager.load_module(module)
        self.manager.hook.vision_pipe_config_resolved(config=data)
        self.config: PipelineConfig = validate(data, locs)
        self._locs = locs
        self.resolved: dict[str, Any] = self.config.model_dump(mode="json")
        self.trainer: pl.Trainer | None = None
        self.run_dir: Path | None = None
        self.best_checkpoint: str | None = None
        self.splits: dict[str, SampleSource] = {}
        self.datamodule: PipelineDataModule | None = None
        self.preflight_report: PreflightReport | None = None
        self.class_colors: list[tuple[int, int, int]] | None = (
            [tuple(int(v) for v in c) for c in class_colors] if class_colors else None  # type: ignore[misc]
        )
        self._normalizer_fitted = False
        # Weight initialization is seeded too (without disturbing the caller's RNG state).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self._build(class_names)
        self.manager.hook.vision_pipe_pipeline_built(pipeline=self)

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: Iterable[str] = (),
        *,
        manager: PluginManager | None = None,
        disable_plugins: Iterable[str] = (),
    ) -> Pipeline:
        """Read a pipeline YAML (with its ``base:`` files), apply ``key=value`` overrides, validate and build."""
        data, locs = load_yaml_with_bases(path)
        data = apply_overrides(data, overrides, locs)
        return cls(data, locs, manager=manager or PluginManager(disabled=disable_plugins))

    @classmethod
    def from_dict(
        cls, config: dict[str, Any], overrides: Iterable[str] = (), *, manager: PluginManager | None = None
    ) -> Pipeline:
        """Build from a config dict shaped like the YAML (validated the same way)."""
        locs = Locations()
        data = apply_overrides(copy.deepcopy(config), overrides, locs)
        return cls(data, locs, manager=manager)

    @classmethod
    def load(cls, checkpoint: str | Path, *, manager: PluginManager | None = None) -> Pipeline:
        """A pipeline for inference from a checkpoint alone (no training data needed)."""
        ckpt = _read_checkpoint(checkpoint)
        info = ckpt["vision_pipe"]
        pipe = cls(
            copy.deepcopy(info["config"]),
            Locations(),
            manager=manager,
            class_names=info["class_names"],
            class_colors=info.get("class_colors"),
        )
        pipe._load_weights(ckpt, checkpoint)
        return pipe

    def _stage_slots(self) -> list[tuple[str, tuple[str | int, ...]]]:
        slots: list[tuple[str, tuple[str | int, ...]]] = [("loading", ("data", "loader"))]
        if self.config.data.normalization is not None:
            slots.append(("normalization", ("data", "normalization")))
        slots += [("augmentation", ("data", "augmentation", i)) for i in range(len(self.config.data.augmentation))]
        slots += [("backbone", ("model", "backbone")), ("head", ("model", "head"))]
        return slots

    def _spec(self, loc: tuple[str | int, ...]) -> dict[str, Any]:
        node: Any = self.config
        for part in loc:
            node = node[part] if isinstance(part, int) or isinstance(node, dict) else getattr(node, part)
        return node

    def _build(self, class_names: Sequence[str] | None) -> None:
        cfg = self.config
        task = cfg.task
        params: dict[tuple[str | int, ...], dict[str, Any]] = {}
        entries = {}
        for kind, loc in self._stage_slots():
            entry, python_params, resolved = validate_stage_params(
                kind, self._spec(loc), loc, self.manager.registry, self._locs, RESERVED_KEYS[kind]
            )
            entries[loc] = entry
            params[loc] = python_params
            _set(self.resolved, loc, resolved)

        def where(loc: tuple[str | int, ...]) -> str:
            place = self._locs.find(loc)
            return (f"{place}: " if place else "") + dotted(loc)

        def build(loc: tuple[str | int, ...], ctx: StageContext) -> Any:
            entry = entries[loc]
            try:
                return entry.build(params[loc], ctx)
            except VisionPipeError as exc:
                raise type(exc)(f"{where(loc)} ({entry.kind} stage '{entry.name}'): {exc}") from exc

        def check_type(obj: Any, expected: type | tuple[type, ...], loc: tuple[str | int, ...], what: str) -> None:
            if not isinstance(obj, expected):
                entry = entries[loc]
                raise StageError(
                    f"{where(loc)}: {entry.kind} stage '{entry.name}' (plugin '{entry.plugin}') returned "
                    f"{type(obj).__name__}; a {entry.kind} stage must return {what}"
                )

        ctx = StageContext(task=task, seed=cfg.seed, input_size=cfg.data.input_size)
        self.stages: dict[str, Any] = {}
        loader_loc = ("data", "loader")
        head_name = cfg.model.head["name"]
        if class_names is None:
            loader = build(loader_loc, ctx)
            check_type(loader, Loader, loader_loc, "a vision_pipe.Loader")
            if task not in loader.tasks:
                raise ChainError(
                    f"{where(loader_loc)}: loading stage '{cfg.data.loader['name']}' provides "
                    f"{', '.join(loader.tasks) or 'no task'} data, but the pipeline's task is '{task}' "
                    f"(head '{head_name}'). Choose a loader that provides {task} targets."
                )
            try:
                loaded = loader.load(task)
            except DataError as exc:
                raise DataError(f"{where(loader_loc)} (loading stage '{cfg.data.loader['name']}'): {exc}") from exc
            self.stages["loading"] = loader
            self.splits = make_splits(loaded, cfg.data.split, cfg.seed)
            class_names = loaded.class_names
            if loaded.class_colors:
                self.class_colors = [tuple(int(v) for v in c) for c in loaded.class_colors]  # type: ignore[misc]
        self.class_names = list(class_names)
        ctx = StageContext(
            task=task, seed=cfg.seed, input_size=cfg.data.input_size, class_names=tuple(self.class_names)
        )

        normalizer = None
        if cfg.data.normalization is not None:
            loc = ("data", "normalization")
            normalizer = build(loc, ctx)
            check_type(normalizer, Normalizer, loc, "a vision_pipe.Normalizer")
        self.stages["normalization"] = normalizer

        augmentations = []
        for i in range(len(cfg.data.augmentation)):
            loc = ("data", "augmentation", i)
            aug = build(loc, ctx)
            check_type(aug, A.BasicTransform, loc, "an albumentations transform")
            augmentations.append(aug)
        self.stages["augmentation"] = augmentations

        bb_loc = ("model", "backbone")
        backbone = build(bb_loc, ctx)
        check_type(backbone, Backbone, bb_loc, "a vision_pipe.Backbone")
        if not getattr(backbone, "feature_info", None):
            raise StageError(f"{where(bb_loc)}: backbone '{cfg.model.backbone['name']}' declares no feature_info")
        _apply_weights_and_freeze(backbone, cfg.model.backbone, where(bb_loc))
        self.stages["backbone"] = backbone

        head_loc = ("model", "head")
        ctx = StageContext(
            task=task,
            seed=cfg.seed,
            input_size=cfg.data.input_size,
            class_names=tuple(self.class_names),
            feature_info=tuple(backbone.feature_info),
            backbone_provides=frozenset(backbone.provides),
            backbone_name=cfg.model.backbone["name"],
        )
        head = build(head_loc, ctx)
        check_type(head, Head, head_loc, "a vision_pipe.Head")
        if head.task != task:
            raise ChainError(
                f"{where(head_loc)}: head '{head_name}' solves {head.task}, but the pipeline's task is '{task}' "
                f"(loader '{cfg.data.loader['name']}')"
            )
        self.stages["head"] = head

        self.module = PipelineModule(
            normalizer,
            backbone,
            head,
            cfg.optimizer,
            cfg.scheduler,
            self.class_names,
            checkpoint_extra={"config": self.resolved, "class_colors": self.class_colors},
            channels_last=cfg.model.channels_last,
            compile=cfg.model.compile,
        )
        if self.splits:
            workers = cfg.data.num_workers
            self.datamodule = PipelineDataModule(
                self.splits,
                task,
                cfg.data.input_size,
                augmentations,
                cfg.data.batch_size,
                default_num_workers() if workers == "auto" else workers,
                boxes=cfg.data.boxes,
            )

    # ------------------------------------------------------------------
    # Runs
    # ------------------------------------------------------------------

    def _new_run_dir(self) -> Path:
        root = Path(self.config.output_dir) / self.config.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = root / stamp
        i = 1
        while run_dir.exists():
            run_dir = root / f"{stamp}-{i}"
            i += 1
        (run_dir / "plots").mkdir(parents=True)
        _write_text(run_dir / "config.yaml", yaml.safe_dump(self.resolved, sort_keys=False))
        if self.splits:
            record = {
                "seed": self.config.seed,
                "fractions": list(self.config.data.split),
                "sizes": {k: len(v) for k, v in self.splits.items()},
                # indices into the loader's samples, for splits the pipeline made
                "indices": {k: v.indices.tolist() for k, v in self.splits.items() if isinstance(v, SubsetSource)},
            }
            _write_text(run_dir / "splits.json", json.dumps(record, indent=2))
        return run_dir

    def _ensure_run_dir(self, checkpoint: str | Path | None = None) -> Path:
        if self.run_dir is not None:
            return self.run_dir
        if is_secondary_process():  # multi-process runs: only rank 0 writes the run directory
            self.run_dir = private_run_dir()
            return self.run_dir
        if checkpoint is not None:
            candidate = Path(checkpoint).resolve().parent.parent
            if (candidate / "config.yaml").exists() and Path(checkpoint).resolve().parent.name == "checkpoints":
                self.run_dir = candidate
                (candidate / "plots").mkdir(exist_ok=True)
                return candidate
        self.run_dir = self._new_run_dir()
        return self.run_dir

    def _require_data(self, action: str) -> PipelineDataModule:
        if self.datamodule is None:
            raise VisionPipeError(
                f"cannot {action}: this pipeline was loaded from a checkpoint without its training data; "
                "build it with Pipeline.from_yaml to train or evaluate"
            )
        return self.datamodule

    def preflight(self) -> PreflightReport:
        """Read and check every sample once (see :mod:`vision_pipe.preflight`); apply ``data.on_bad_sample``.

        Runs before the first fit/validate/test (its outcome is cached on disk for
        unchanged data). Raises :class:`DataError` listing the bad samples, or,
        with ``on_bad_sample: skip``, leaves them out of the splits.
        """
        if self.preflight_report is not None:
            return self.preflight_report
        dm = self._require_data("check the data")
        cached = preflight_cache_path(self.splits, self.config.task, len(self.class_names))
        wait_for_rank_zero(cached, "pre-flight report")  # multi-process runs: rank 0 does the pass
        report = run_preflight(self.splits, self.config.task, len(self.class_names), dm.num_workers)
        self.splits = apply_report(self.splits, report, self.config.data.on_bad_sample)
        dm.splits = self.splits
        self.preflight_report = report
        skipped = f", {len(report.bad)} bad sample(s) skipped" if report.bad else ""
        source = "cached" if report.cached else f"{report.seconds:.1f} s"
        log.info("pre-flight: %d samples checked (%s)%s", sum(report.checked.values()), source, skipped)
        return report

    def _record_preflight(self, run_dir: Path) -> None:
        report = self.preflight_report
        if report is None:
            return
        record = {"on_bad_sample": self.config.data.on_bad_sample, **report.to_dict()}
        _write_text(run_dir / "preflight.json", json.dumps(record, indent=2))
        _update_metrics_file(
            run_dir / "metrics.json",
            {"data/checked": float(sum(report.checked.values())), "data/skipped": float(len(report.bad))},
        )

    def fit_normalizer(self) -> None:
        """Fit the normalization stage on the training split (cached on disk by fingerprint)."""
        normalizer = self.stages.get("normalization")
        if normalizer is None or self._normalizer_fitted or not normalizer.needs_fit:
            return
        train = self.splits["train"]
        stage_spec = self.resolved["data"]["normalization"]
        key = normalization_fingerprint(train, self.config.data.input_size, stage_spec)
        path = cache_dir() / "normalization" / f"{stage_spec['name']}-{key}.pt"
        wait_for_rank_zero(path, "fitted normalization")  # multi-process runs: rank 0 fits, the others read
        if path.exists():
            try:
                normalizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self._normalizer_fitted = True
                return
            except Exception:
                pass  # a stale or broken cache file is refitted and replaced below
        dm = self._require_data("fit the normalization")
        normalizer.fit(iter_resized_images(train, self.config.data.input_size, dm.num_workers))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(normalizer.state_dict(), tmp)
        os.replace(tmp, path)
        self._normalizer_fitted = True

    def _trainer(self, run_dir: Path, *, action: str) -> tuple[pl.Trainer, Any]:
        from pytorch_lightning.callbacks import (
            EarlyStopping,
            LearningRateMonitor,
            ModelCheckpoint,
        )
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

        cfg = self.config
        callbacks: list[Any] = []
        checkpoint_cb = None
        training = action == "fit"
        if training:
            checkpoint_cb = ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=cfg.checkpoint.monitor,
                mode=cfg.checkpoint.mode,
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
            )
            callbacks += [checkpoint_cb, LearningRateMonitor(logging_interval="epoch")]
            if cfg.early_stopping.enabled:
                es = cfg.early_stopping
                callbacks.append(
                    EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
                )
        # Each trainer logs into directories of its own (logs/csv, logs/csv-2 after a resume,
        # logs/test-csv ...): Lightning's CSV logger would delete an existing metrics file.
        logs = run_dir / "logs"
        prefix = "" if training else f"{action}-"
        loggers = [
            CSVLogger(save_dir=run_dir, name="logs", version=_fresh_name(logs, f"{prefix}csv")),
            TensorBoardLogger(
                save_dir=run_dir,
                name="logs",
                version=_fresh_name(logs, f"{prefix}tensorboard"),
                default_hp_metric=False,
            ),
        ]
        trainer = pl.Trainer(
            **cfg.trainer,
            callbacks=callbacks,
            logger=loggers,
            default_root_dir=run_dir,
            enable_checkpointing=training,
        )
        return trainer, checkpoint_cb

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            self.manager.hook.vision_pipe_on_error(pipeline=self, action=action, error=exc)
            raise

    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        """Train; ``resume`` continues from a checkpoint (e.g. ``.../checkpoints/last.ckpt``).

        Writes ``runs/<name>/<timestamp>/`` (config, checkpoints, logs, plots,
        metrics.json) and returns the last logged metrics (``train/loss``, ``val/acc`` ...).
        """
        dm = self._require_data("fit")
        if resume is not None and not Path(resume).is_file():
            raise VisionPipeError(f"checkpoint to resume from not found: {resume}")
        self._call("fit", self.preflight)
        run_dir = self._ensure_run_dir(resume)
        self._record_preflight(run_dir)
        self._call("fit", dm.preflight)
        self._call("fit", self.fit_normalizer)
        # seeded after the (possibly cached) normalizer fit, so a cache hit does not change the run
        pl.seed_everything(self.config.seed, workers=True, verbose=False)
        self.module.plots_dir = run_dir / "plots"
        trainer, checkpoint_cb = self._trainer(run_dir, action="fit")
        self.trainer = trainer
        self.manager.hook.vision_pipe_before_fit(pipeline=self, run_dir=run_dir)
        with _cpu_threads(trainer, dm.num_workers):
            self._call("fit", trainer.fit, self.module, datamodule=dm, ckpt_path=str(resume) if resume else None)
        self.best_checkpoint = checkpoint_cb.best_model_path or None
        metrics = _scalars(trainer.callback_metrics)
        metrics["fit/epochs"] = float(trainer.current_epoch)
        normalizer = self.stages.get("normalization")
        if normalizer is not None:
            normalizer.save_artifacts(run_dir / "plots")
        fit_logs = sorted((run_dir / "logs").glob("csv*/metrics.csv"), key=lambda p: (len(p.parent.name), p.parent.name))
        _plot_curves(fit_logs, run_dir / "plots" / "curves.png")
        _update_metrics_file(run_dir / "metrics.json", {k: v for k, v in metrics.items() if not k.startswith("test/")})
        self.manager.hook.vision_pipe_after_fit(pipeline=self, run_dir=run_dir, metrics=metrics)
        return metrics

    def _eval(self, action: str, ckpt: str | Path | None) -> tuple[pl.Trainer, str | None, Path]:
        self._require_data(action)
        pl.seed_everything(self.config.seed, workers=True, verbose=False)
        if ckpt is None:
            ckpt = self.best_checkpoint
        if ckpt is None and not self._trained:
            raise VisionPipeError(f"nothing to {action}: call fit() first or pass a checkpoint (--ckpt)")
        if ckpt is not None and not Path(ckpt).is_file():
            raise VisionPipeError(f"checkpoint not found: {ckpt}")
        first = self.preflight_report is None
        self._call(action, self.preflight)
        run_dir = self._ensure_run_dir(ckpt)
        if first:
            self._record_preflight(run_dir)
        self.module.plots_dir = run_dir / "plots"
        trainer, _ = self._trainer(run_dir, action=action)
        self.trainer = trainer
        return trainer, str(ckpt) if ckpt else None, run_dir

    @property
    def _trained(self) -> bool:
        return self.trainer is not None and self.trainer.global_step > 0

    def validate(self, ckpt: str | Path | None = None) -> dict[str, float]:
        """Evaluate on the validation split; returns ``val/...`` metrics."""
        trainer, ckpt_path, _ = self._eval("validate", ckpt)
        with _cpu_threads(trainer, self._require_data("validate").num_workers):
            self._call("validate", trainer.validate, self.module, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        return {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}

    def test(self, ckpt: str | Path | None = None) -> dict[str, float]:
        """Evaluate on the test split (best checkpoint of the last fit by default).

        Returns flat metrics (``test/acc``, ``test/acc_top5``, ...), also merged
        into the run's ``metrics.json``; plots go to ``plots/test/``.
        """
        trainer, ckpt_path, run_dir = self._eval("test", ckpt)
        self.manager.hook.vision_pipe_before_test(pipeline=self, run_dir=run_dir)
        with _cpu_threads(trainer, self._require_data("test").num_workers):
            self._call("test", trainer.test, self.module, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = dict(self.module.test_metrics)
        metrics.update({k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("test/")})
        _update_metrics_file(run_dir / "metrics.json", metrics)
        self.manager.hook.vision_pipe_after_test(pipeline=self, run_dir=run_dir, metrics=metrics)
        return metrics

    def predict(
        self,
        inputs: Sequence[str | Path | np.ndarray],
        *,
        ckpt: str | Path | None = None,
        batch_size: int | None = None,
        out: str | Path | None = None,
    ) -> list[Prediction]:
        """Predict on image files and/or (H, W, 3) uint8 RGB arrays; results are in original-image coordinates.

        With ``out``, also write the results there (see
        :func:`vision_pipe.render.write_predictions`): ``<name>_pred.png`` per
        input (drawn prediction / colour overlay), ``<name>_mask.png`` (class ids,
        segmentation), ``predictions.json`` and ``detections_coco.json`` (detection).
        """
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        items = list(inputs)
        self.manager.hook.vision_pipe_before_predict(pipeline=self, inputs=items)
        results = self._call("predict", self._predict, items, batch_size or self.config.data.batch_size)
        if out is not None:
            names = [f"array_{i}" if isinstance(x, np.ndarray) else Path(x).stem for i, x in enumerate(items)]
            images = _LazyImages(items)  # decoded again one at a time: the inputs are never all in memory
            write_predictions(images, results, out, names, self.class_colors)
        self.manager.hook.vision_pipe_after_predict(pipeline=self, predictions=results)
        return results

    def _predict(self, items: list[Any], batch_size: int) -> list[Prediction]:
        from vision_pipe.data import build_transform

        # no targets at prediction: a detection Compose would demand bboxes and labels
        transform = build_transform("prediction", self.config.data.input_size, [])
        module = self.module
        device = next(module.parameters()).device
        was_training = module.training
        module.eval()
        results: list[Prediction] = []
        try:
            with torch.inference_mode():
                for start in range(0, len(items), batch_size):
                    chunk = [_predict_sample(i, items[i]) for i in range(start, min(start + batch_size, len(items)))]
                    size = self.config.data.input_size
                    batch = collate([transform_sample(s, "prediction", transform, size) for s in chunk])
                    outputs = module(batch["image"].to(device))
                    results.extend(module.head.decode(outputs, batch, self.class_names))
        finally:
            module.train(was_training)
        return results

    def load_checkpoint(self, path: str | Path) -> None:
        """Load the model's weights (and fitted normalization) from a vision-pipe checkpoint."""
        self._load_weights(_read_checkpoint(path), path)

    def _load_weights(self, ckpt: dict[str, Any], path: str | Path) -> None:
        try:
            self.module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise VisionPipeError(f"{path}: the checkpoint does not fit this pipeline's model: {exc}") from exc
        self._normalizer_fitted = True


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _predict_sample(i: int, item: Any) -> dict[str, Any]:
    """A predict input (a path or an array) as a sample: ``{"image": (H, W, 3) uint8 RGB, "id": ...}``."""
    if not isinstance(item, np.ndarray):
        return {"image": read_image(item), "id": str(item)}
    image = item if item.ndim != 2 else np.repeat(item[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"predict input {i}: an array of shape {item.shape} and dtype {item.dtype}; "
            "expected an (H, W, 3) uint8 RGB image (or an (H, W) grey one)"
        )
    return {"image": image, "id": f"array:{i}"}


class _LazyImages(Sequence[np.ndarray]):
    """The predict inputs as images, decoded when indexed."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return _predict_sample(i, self.items[i])["image"]


@contextmanager
def _cpu_threads(trainer: pl.Trainer, num_workers: int) -> Iterator[None]:
    """On a CPU, give the model's threads only the cores the DataLoader workers leave.

    PyTorch starts one thread per core; next to ``num_workers`` worker processes
    that oversubscribes the CPU, and OpenMP threads spin waiting for each other:
    on 2 cores with 1 worker, training measured 20-30 % slower with 2 threads
    than with 1 on an idle machine, and up to 10x slower on a loaded one. An
    explicit ``OMP_NUM_THREADS`` is left alone.
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    if not isinstance(trainer.accelerator, CPUAccelerator) or num_workers == 0 or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, _cpu_count() - num_workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _set(tree: dict[str, Any], loc: tuple[str | int, ...], value: Any) -> None:
    node: Any = tree
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VisionPipeError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise VisionPipeError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "vision_pipe" not in ckpt or "state_dict" not in ckpt:
        raise VisionPipeError(f"{path}: not a vision-pipe checkpoint (no 'vision_pipe' section)")
    return ckpt


def _apply_weights_and_freeze(backbone: nn.Module, spec: dict[str, Any], where: str) -> None:
    """Load ``weights`` (a state dict or a vision-pipe/Lightning checkpoint) and freeze ``freeze`` prefixes."""
    weights = spec.get("weights")
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"backbone weights file not found: {path}", location=where.split(": ")[0], key="model.backbone.weights")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise StageError(f"{where}: cannot read backbone weights {path}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, dict) and any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise StageError(f"{where}: weights {path} do not fit the backbone: {exc}") from exc
    freeze = spec.get("freeze") or []
    if isinstance(freeze, str):
        freeze = [freeze]
    names = [n for n, _ in backbone.named_parameters()]
    for prefix in freeze:
        matched = [n for n, p in backbone.named_parameters() if n == prefix or n.startswith(prefix + ".") or (prefix.endswith(".") and n.startswith(prefix))]
        if not matched:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"freeze prefix '{prefix}' matches no backbone parameter; top-level modules: {', '.join(tops)}",
                location=where.split(": ")[0],
                key="model.backbone.freeze",
            )
        for n, p in backbone.named_parameters():
            if n in matched:
                p.requires_grad_(False)
    _freeze_batch_norm_statistics(backbone)


class _FrozenStatistics:
    """Mixin for a batch-norm layer whose parameters are frozen: it stays in eval mode, so it
    normalizes with (and keeps) its running statistics instead of updating them from batches."""

    def train(self, mode: bool = True) -> nn.Module:
        return super().train(False)  # type: ignore[misc]


class FrozenBatchNorm1d(_FrozenStatistics, nn.BatchNorm1d):
    """A frozen :class:`torch.nn.BatchNorm1d` (see :func:`_freeze_batch_norm_statistics`)."""


class FrozenBatchNorm2d(_FrozenStatistics, nn.BatchNorm2d):
    """A frozen :class:`torch.nn.BatchNorm2d` (see :func:`_freeze_batch_norm_statistics`)."""


_FROZEN_BN = {nn.BatchNorm1d: FrozenBatchNorm1d, nn.BatchNorm2d: FrozenBatchNorm2d}


def _freeze_batch_norm_statistics(backbone: nn.Module) -> None:
    """Batch-norm layers whose parameters are all frozen stop updating their running statistics.

    Fine-tuning with frozen layers means the layers do not change; a batch-norm
    layer in train mode would still move its running mean/var to the new data
    (and normalize with batch statistics). Its class is switched to a subclass
    that stays in eval mode; its state_dict is unchanged.
    """
    for module in backbone.modules():
        frozen_class = _FROZEN_BN.get(type(module))
        params = list(module.parameters(recurse=False))
        if frozen_class is not None and params and not any(p.requires_grad for p in params):
            module.__class__ = frozen_class
            module.eval()


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _write_text(path: Path, text: str) -> None:
    """Write atomically: readers never see a half-written file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _update_metrics_file(path: Path, metrics: dict[str, float]) -> None:
    current: dict[str, float] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            current = {}
    current.update(metrics)
    # NaN (e.g. the accuracy of a class absent from a split) is written as null: strict JSON.
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in sorted(current.items())}
    _write_text(path, json.dumps(clean, indent=2))


def _fresh_name(folder: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3`` ... whichever does not exist in ``folder`` yet."""
    name, i = base, 2
    while (folder / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def _plot_curves(csv_paths: Sequence[Path], out: Path) -> None:
    """Training curves (loss and validation metrics per epoch) from the CSV logs of a run, in order."""
    if not csv_paths:
        return
    from matplotlib.figure import Figure

    rows: list[dict[str, str]] = []
    for csv_path in csv_paths:
        with csv_path.open(newline="") as f:
            rows += list(csv.DictReader(f))
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not epoch:
            continue
        for key, value in row.items():
            if key in ("epoch", "step") or not value or "/" not in key or key.count("/") > 1:
                continue
            series.setdefault(key, {})[int(float(epoch))] = float(value)
    losses = {k: v for k, v in series.items() if k.endswith("/loss")}
    others = {k: v for k, v in series.items() if k.startswith("val/") and not k.endswith("loss")}
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for key, values in sorted(losses.items()):
        ax1.plot(list(values), list(values.values()), marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    for key, values in sorted(others.items()):
        ax2.plot(list(values), list(values.values()), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation metric")
    if others:
        ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def find_images(folder: Path) -> list[Path]:
    """Image files (jpg, jpeg, png, bmp) directly inside ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


__all__ = ["Pipeline", "find_images"]
