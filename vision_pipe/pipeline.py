"""The programmatic API: build a pipeline from YAML, a dict or a checkpoint; fit, validate, test, predict.

:class:`Pipeline` is a façade over the modules that own each concern:
:mod:`~vision_pipe.config_files` and :mod:`~vision_pipe.config` (reading and
validating the config), :mod:`~vision_pipe.build` (stages, chain and contract
checks), :mod:`~vision_pipe.cache` (the cached normalizer fit),
:mod:`~vision_pipe.preflight` (the data check), :mod:`~vision_pipe.runs` (the
run directory and what a run writes), :mod:`~vision_pipe.trainer` (the
Trainer) and :mod:`~vision_pipe.finetune` (checkpoints and weights). Each
public action (fit, validate, test, predict) is one error boundary:
``vision_pipe_on_error`` fires once for whatever fails inside it. The CLI
(:mod:`vision_pipe.cli`) is a thin layer over this class.

(Over 400 lines on purpose: the façade's public methods and their docstrings, each
delegating to the module that owns the work.)
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl

from vision_pipe.build import CheckpointClasses, build_pipeline, dataset_image_ids
from vision_pipe.cache import cache_dir, fit_normalizer
from vision_pipe.checkpoints import allowed_globals, read_checkpoint
from vision_pipe.config import AttackConfig, PipelineConfig, validate
from vision_pipe.config_files import Locations, apply_overrides, load_yaml_with_bases
from vision_pipe.data import PipelineDataModule, cached_num_workers
from vision_pipe.distributed import is_secondary_process, share_cache, wait_for_rank_zero
from vision_pipe.errors import VisionPipeError
from vision_pipe.image_cache import cache_splits
from vision_pipe.plugins import PluginManager
from vision_pipe.predict import LazyImages, predict_batches, predict_device
from vision_pipe.preflight import PreflightReport, apply_report, empty_class_warning, run_preflight
from vision_pipe.preflight import cache_path as preflight_cache_path
from vision_pipe.render import prepare_out_dir, write_predictions
from vision_pipe.report import write_report
from vision_pipe.results import Prediction
from vision_pipe.resume import check_resume_checkpoint
from vision_pipe.runs import RunArtifacts, discard_run_dir, open_run_dir, record_preflight, run_dir_of, scalars
from vision_pipe.stages import SampleSource
from vision_pipe.tasks.coco_results import CocoIds
from vision_pipe.trainer import check_trainer, make_trainer, running, torch_flags_kept

_F = TypeVar("_F", bound=Callable[..., Any])
log = logging.getLogger("vision_pipe")


def _action(name: str) -> Callable[[_F], _F]:
    """A public action: ``vision_pipe_on_error`` fires once for any failure inside it (not again in nested actions)."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def run(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
            if self._running_action is not None:
                return method(self, *args, **kwargs)
            self._running_action = name
            try:
                return method(self, *args, **kwargs)
            except BaseException as exc:
                self.manager.hook.vision_pipe_on_error(pipeline=self, action=name, error=exc)
                raise
            finally:
                self._running_action = None

        return run  # type: ignore[return-value]

    return wrap


class Pipeline:
    """A validated, built pipeline: its stages, data, model and runs.

    Build one with :meth:`from_yaml`, :meth:`from_dict` or :meth:`load`.

    Attributes:
        config: the validated :class:`~vision_pipe.config.PipelineConfig`.
        resolved: the fully resolved config as a plain dict (what ``config.yaml`` of a run holds).
        stages: the built stages by kind (``loading``, ``normalization``,
            ``augmentation`` (a list), ``backbone``, ``head``).
        class_names: the class names (index = label); ``class_colors`` their colours, if the data has them.
        module: the :class:`~vision_pipe.module.PipelineModule` (a LightningModule).
        datamodule: the LightningDataModule (``None`` for a pipeline loaded from a checkpoint).
        splits: the ``train``/``val``/``test`` sample sources (empty for a pipeline loaded from a checkpoint).
        trainer: the last ``pytorch_lightning.Trainer`` used (``None`` before any run).
        run_dir: the directory of the current run (``None`` before any run).
        best_checkpoint: the best checkpoint of the last fit.
        preflight_report: the outcome of the pre-flight data check, once run.
        manager: the :class:`~vision_pipe.plugins.PluginManager`.

    ``trust`` (``--trust-checkpoint``) reads ``model.backbone.weights`` in full rather
    than as weights only; ``plugin_modules`` replaces the config's ``plugins:`` as the
    modules to import (a checkpoint's recorded ``plugins:`` are not imported by themselves).
    """

    def __init__(
        self,
        data: dict[str, Any],
        locs: Locations,
        *,
        manager: PluginManager | None = None,
        from_checkpoint: CheckpointClasses | None = None,
        trust: bool = False,
        plugin_modules: Iterable[str] | None = None,
    ) -> None:
        self.manager = manager or PluginManager()
        requested = (data.get("plugins") or []) if plugin_modules is None else plugin_modules
        modules = [m for m in requested if isinstance(m, str)]
        self.manager.check_disabled(modules)
        for module in modules:
            self.manager.load_module(module)
        self.manager.hook.vision_pipe_config_resolved(config=data)
        self.config: PipelineConfig = validate(data, locs)
        self.locations = locs  # where each key was set (for errors found later, e.g. by check_trainer)
        built = build_pipeline(self.config, locs, self.manager.registry, from_checkpoint=from_checkpoint, trust=trust)
        self.resolved: dict[str, Any] = built.resolved
        self.stages: dict[str, Any] = built.stages
        self.class_names: list[str] = built.class_names
        self.class_colors = built.class_colors
        #: the dataset's category ids (label → id) and image ids (path → id) written in COCO results
        self.coco_ids = built.ids
        self._dataset_image_ids: dict[str, Any] | None = None  # read by _coco_ids when needed
        self.splits: dict[str, SampleSource] = built.splits
        self.module = built.module
        self.datamodule: PipelineDataModule | None = built.datamodule
        self.trainer: pl.Trainer | None = None
        self.run_dir: Path | None = None
        self.best_checkpoint: str | None = None
        self.preflight_report: PreflightReport | None = None
        self._normalizer_fitted = False
        self._images_cached: bool | None = None  # None: data.cache not applied yet; False: applied, not cached
        self._running_action: str | None = None
        self.manager.hook.vision_pipe_pipeline_built(pipeline=self)

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: Iterable[str] = (),
        *,
        manager: PluginManager | None = None,
        disable_plugins: Iterable[str] = (),
        trust: bool = False,
    ) -> Pipeline:
        """Read a pipeline YAML (with its ``base:`` files), apply ``key=value`` overrides, validate and build.

        ``trust=True`` reads ``model.backbone.weights`` in full, not as weights only (files you trust only).
        """
        data, locs = load_yaml_with_bases(path)
        data = apply_overrides(data, overrides, locs)
        return cls(data, locs, manager=manager or PluginManager(disabled=disable_plugins), trust=trust)

    @classmethod
    def from_dict(
        cls,
        config: dict[str, Any],
        overrides: Iterable[str] = (),
        *,
        manager: PluginManager | None = None,
        trust: bool = False,
    ) -> Pipeline:
        """Build from a config dict shaped like the YAML (validated the same way; ``trust`` as in :meth:`from_yaml`)."""
        locs = Locations()
        data = apply_overrides(copy.deepcopy(config), overrides, locs)
        return cls(data, locs, manager=manager, trust=trust)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        *,
        manager: PluginManager | None = None,
        trust: bool = False,
        plugins: Iterable[str] = (),
        data: bool = False,
        overrides: Iterable[str] = (),
    ) -> Pipeline:
        """A pipeline for inference from a checkpoint alone (no training data needed).

        The checkpoint is read as weights only; ``trust=True`` reads it in full (files
        you trust only). The plugin modules its config names (``plugins:``) are not
        imported: name the ones you trust in ``plugins`` (or pass ``trust=True``).
        ``data=True`` also builds the data side the checkpoint's config describes (to evaluate
        it: :meth:`test`, :meth:`attack`), with ``overrides`` (``key=value``) applied to that config.
        """
        ckpt = read_checkpoint(checkpoint, trust=trust)
        info = ckpt["vision_pipe"]
        classes = (
            CheckpointClasses(info["class_names"], info.get("class_colors"), info.get("category_ids"))
            if not data
            else None
        )
        config = copy.deepcopy(info["config"])
        locs = Locations()
        if data:  # the checkpoint's weights replace the backbone's initial ones
            (config.get("model", {}).get("backbone") or {}).pop("weights", None)
            config = apply_overrides(config, overrides, locs)
        named = list(plugins)
        recorded = [m for m in config.get("plugins") or [] if isinstance(m, str)]
        modules = named + [m for m in recorded if m not in named] if trust else named
        skipped = [m for m in recorded if m not in modules]
        try:
            pipe = cls(config, locs, manager=manager, from_checkpoint=classes, plugin_modules=modules)
        except VisionPipeError as exc:
            if not skipped:
                raise
            raise VisionPipeError(
                f"{checkpoint}: {exc}\n  the checkpoint was made with plugin module(s) {', '.join(skipped)} "
                "(its config's plugins:), which loading a checkpoint does not import by itself; if you trust "
                "them, name them (vision-pipe predict --plugin MODULE, Pipeline.load(..., plugins=[...])) "
                "or pass --trust-checkpoint (trust=True)"
            ) from exc
        if skipped:
            log.info("%s: plugin module(s) %s named in its config not imported", checkpoint, ", ".join(skipped))
        pipe._load_weights(ckpt, checkpoint)
        return pipe

    # ------------------------------------------------------------------
    # Data preparation
    # ------------------------------------------------------------------

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
        num_classes = len(self.class_names)
        share_cache(cache_dir())  # a secondary process that cannot see rank 0's cache folder stops here
        wait_for_rank_zero(preflight_cache_path(self.splits, self.config.task, num_classes), "pre-flight report")
        report = run_preflight(self.splits, self.config.task, num_classes, dm.num_workers)
        self.splits = apply_report(self.splits, report, self.config.data.on_bad_sample)
        dm.splits = self.splits
        self.preflight_report = report
        skipped = f", {len(report.bad)} bad sample(s) skipped" if report.bad else ""
        source = "cached" if report.cached else f"{report.seconds:.1f} s"
        log.info("pre-flight: %d samples checked (%s)%s", sum(report.checked.values()), source, skipped)
        for split, names in report.empty_classes(self.class_names).items():
            log.warning("pre-flight: %s", empty_class_warning(split, names))
        return report

    def fit_normalizer(self) -> None:
        """Fit the normalization stage on the training split (cached on disk by fingerprint)."""
        normalizer = self.stages.get("normalization")
        if normalizer is None or self._normalizer_fitted or not normalizer.needs_fit:
            return
        dm = self._require_data("fit the normalization")
        spec = self.resolved["data"]["normalization"]
        fit_normalizer(normalizer, dm.splits["train"], self.config.data.input_size, spec, dm.num_workers)
        self._normalizer_fitted = True

    def _ensure_run_dir(self, checkpoint: str | Path | None = None) -> Path:
        if self.run_dir is None:
            self.run_dir = open_run_dir(self.config, self.resolved, self.splits, checkpoint)
        return self.run_dir

    @contextmanager
    def _new_run(self, checkpoint: str | Path | None) -> Iterator[None]:
        """Within the block: a run directory made here is removed if the block fails before a training step.

        A stopped run writes nothing (see :func:`vision_pipe.runs.discard_run_dir`);
        a run that trained keeps its checkpoints, metrics and curves. Torch's global flags that the
        block's Trainer sets (``trainer.deterministic``, ``trainer.benchmark``) are restored after it.
        """
        fresh = self.run_dir is None and run_dir_of(checkpoint) is None
        try:
            with torch_flags_kept():  # the Trainer made in the block sets torch's global flags for its run only
                yield
        except BaseException:
            trained = self.trainer is not None and self.trainer.global_step > 0
            if fresh and self.run_dir is not None and not trained:
                discard_run_dir(self.run_dir)
                self.run_dir, self.trainer = None, None
            raise

    def cache_images(self, *, fitting: bool = True) -> None:
        """Apply ``data.cache`` to the checked splits, once (``auto`` caches for a fit only, ``fitting``
        saying whether one follows; see :mod:`vision_pipe.image_cache`). Runs the pre-flight first;
        ``fit``/``validate``/``test`` call it themselves."""
        self.preflight()
        if self._images_cached or (self._images_cached is False and not fitting):
            return
        dm, data = self._require_data("cache the images"), self.config.data
        dm.splits = cache_splits(
            self.splits, data.input_size, self.config.task, data.cache, dm.num_workers, fitting=fitting
        )
        self._images_cached = any(split is not self.splits[name] for name, split in dm.splits.items())
        if self._images_cached and data.num_workers == "auto":
            dm.num_workers = cached_num_workers(dm.num_workers, self.config.trainer)

    def _prepare(self, checkpoint: str | Path | None, *, record: bool, fitting: bool = False) -> Path:
        """Pre-flight, the image cache, then the run directory; its preflight.json when ``record`` or when the
        pass ran here."""
        record = record or self.preflight_report is None
        report = self.preflight()
        self.cache_images(fitting=fitting)
        run_dir = self._ensure_run_dir(checkpoint)
        if record:
            record_preflight(run_dir, report, self.config.data.on_bad_sample, self.class_names)
        self.module.plots_dir = run_dir / "plots"
        return run_dir

    # ------------------------------------------------------------------
    # Actions
    # ------------------------------------------------------------------

    @_action("fit")
    def fit(self, resume: str | Path | None = None, *, trust: bool = False) -> dict[str, float]:
        """Train; ``resume`` continues from a checkpoint (e.g. ``.../checkpoints/last.ckpt``),
        read as weights only unless ``trust`` (files you trust only).

        Writes ``runs/<name>/<timestamp>/`` (config, checkpoints, logs, plots,
        metrics.json) and returns the last logged metrics (``train/loss``, ``val/acc`` ...).
        """
        dm = self._require_data("fit")
        if resume is not None:  # our messages (missing, untrusted, truncated, another pipeline's) first
            check_resume_checkpoint(resume, self.resolved, self.class_names, self.module, trust=trust)
        check_trainer(self.config, self.locations)  # a bad Trainer argument stops the fit before its run directory
        with self._new_run(resume):
            run_dir = self._prepare(resume, record=True, fitting=True)
            dm.preflight()
            self.fit_normalizer()
            # seeded after the (possibly cached) normalizer fit, so a cache hit does not change the run
            pl.seed_everything(self.config.seed, workers=True, verbose=False)
            artifacts = RunArtifacts(run_dir, self.stages.get("normalization"))
            trainer, checkpoint_cb = make_trainer(
                self.config, run_dir, action="fit", callbacks=[artifacts], resolved=self.resolved
            )
            self.trainer = trainer
            self.manager.hook.vision_pipe_before_fit(pipeline=self, run_dir=run_dir)
            with running(trainer, dm.num_workers), allowed_globals():
                trainer.fit(self.module, datamodule=dm, **_ckpt_args(trainer.fit, resume, trust))
        self.best_checkpoint = checkpoint_cb.best_model_path or None
        metrics = artifacts.metrics
        self.manager.hook.vision_pipe_after_fit(pipeline=self, run_dir=run_dir, metrics=metrics)
        return metrics

    def _evaluate(
        self,
        action: str,
        ckpt: str | Path | None,
        trust: bool,
        *,
        save_json: bool = False,
        attack: AttackConfig | None = None,
    ) -> tuple[pl.Trainer, RunArtifacts]:
        """Validate or test; a test also runs ``attack`` (default: the config's ``test.attack``) and, with
        ``save_json``, writes the test split's COCO results."""
        dm = self._require_data(action)
        attack = (attack or self.config.test.attack) if action == "test" else None
        if save_json:
            check_save_json(self.config)
        pl.seed_everything(self.config.seed, workers=True, verbose=False)
        ckpt = ckpt if ckpt is not None else self.best_checkpoint
        if ckpt is None and not (self.trainer is not None and self.trainer.global_step > 0):
            raise VisionPipeError(f"nothing to {action}: call fit() first or pass a checkpoint (--ckpt)")
        if ckpt is not None and not Path(ckpt).is_file():
            raise VisionPipeError(f"checkpoint not found: {ckpt}")
        if ckpt is not None:
            read_checkpoint(ckpt, trust=trust)  # our message, before Lightning unpickles it
        with self._new_run(ckpt):
            run_dir = self._prepare(ckpt, record=False)
            artifacts = RunArtifacts(run_dir, test_results=self.coco_ids if save_json else None)
            callbacks: list[pl.Callback] = [artifacts]
            if attack is not None:
                from vision_pipe.attack import AttackEvaluation

                callbacks.insert(0, AttackEvaluation(attack, self.class_names, self.class_colors))
            trainer, _ = make_trainer(
                self.config,
                run_dir,
                action=action,
                callbacks=callbacks,
                resolved=self.resolved,
                gradients=attack is not None,
            )
            self.module.record_test_predictions = save_json
            self.trainer = trainer
            if action == "test":
                self.manager.hook.vision_pipe_before_test(pipeline=self, run_dir=run_dir)
            run = trainer.test if action == "test" else trainer.validate
            with running(trainer, dm.num_workers), allowed_globals():
                run(self.module, datamodule=dm, verbose=False, **_ckpt_args(run, ckpt, trust))
        return trainer, artifacts

    @_action("validate")
    def validate(self, ckpt: str | Path | None = None, *, trust: bool = False) -> dict[str, float]:
        """Evaluate on the validation split; returns ``val/...`` metrics (``trust`` as in :meth:`test`)."""
        trainer, _ = self._evaluate("validate", ckpt, trust)
        return {k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("val/")}

    @_action("test")
    def test(self, ckpt: str | Path | None = None, *, trust: bool = False, save_json: bool = False) -> dict[str, float]:
        """Evaluate on the test split (best checkpoint of the last fit by default); ``ckpt`` is read
        as weights only unless ``trust`` (files you trust only).

        Returns flat metrics (``test/acc``, ``test/acc_top5``, ...), also merged
        into the run's ``metrics.json``; plots go to ``plots/test/``. ``save_json`` (detection):
        also write every detection of the test split to the run's ``detections_test_coco.json``
        (COCO results format with the dataset's image and category ids; see
        :mod:`vision_pipe.tasks.coco_results`), for pycocotools' ``COCO.loadRes``. Then the run's ``report.html`` is written
        (:func:`vision_pipe.report.write_report`).
        """
        _, artifacts = self._evaluate("test", ckpt, trust, save_json=save_json)
        metrics = artifacts.metrics
        if not is_secondary_process():
            write_report(self)
        self.manager.hook.vision_pipe_after_test(pipeline=self, run_dir=self.run_dir, metrics=metrics)
        return metrics

    @_action("attack")
    def attack(
        self,
        ckpt: str | Path | None = None,
        *,
        method: str | None = None,
        eps: Sequence[float] | None = None,
        alpha: float | None = None,
        steps: int | None = None,
        random_start: bool | None = None,
        examples: int | None = None,
        trust: bool = False,
    ) -> dict[str, float]:
        """Test under an adversarial attack (:mod:`vision_pipe.attack`): ``method`` ``fgsm`` (default) or ``pgd``,
        for each ``eps`` (pixel units, /255; default 0, 1, 2, 4, 8); ``alpha``, ``steps``, ``random_start``: PGD's
        (see :class:`~vision_pipe.config.AttackConfig`; ``None`` = its default); ``ckpt`` as in :meth:`test`.

        Returns the test metrics with the task's summary per ε (``test/fgsm/eps=4/acc`` ...), also merged into
        the run's ``metrics.json``; writes ``plots/<method>_curve.png`` and ``plots/<method>_examples.png``
        (``examples`` test images). A bad setting is a :class:`~vision_pipe.errors.ConfigError` naming it.
        """
        from vision_pipe.attack import attack_config

        settings = {"method": method, "eps": None if eps is None else list(eps), "alpha": alpha, "steps": steps}
        spec = attack_config(**settings, random_start=random_start, examples=examples)
        _, artifacts = self._evaluate("test", ckpt, trust, attack=spec)
        return artifacts.metrics

    @_action("predict")
    def predict(
        self,
        inputs: Sequence[str | Path | np.ndarray],
        *,
        ckpt: str | Path | None = None,
        batch_size: int | None = None,
        out: str | Path | None = None,
        trust: bool = False,
        device: str | None = None,
    ) -> list[Prediction]:
        """Predict on image files and/or (H, W, 3) uint8 RGB arrays; results are in original-image coordinates.

        ``device``: ``"auto"`` (default: the first GPU when there is one, unless ``trainer.accelerator`` is
        ``cpu``), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; on an accelerator the forward runs under
        the pipeline's ``trainer.precision`` (bf16/16 mixed). The model stays on that device.

        With ``out``, also write the results there (see
        :func:`vision_pipe.render.write_predictions`): ``<name>_pred.png`` per
        input (drawn prediction / colour overlay), ``<name>_mask.png`` (class ids,
        segmentation), ``predictions.json`` and ``detections_coco.json`` (detection).
        """
        if out is not None:
            prepare_out_dir(out)  # before predicting: an unwritable --out fails at once
        if ckpt is not None:
            self.load_checkpoint(ckpt, trust=trust)
        items = list(inputs)
        self.manager.hook.vision_pipe_before_predict(pipeline=self, inputs=items)
        size, batch = self.config.data.input_size, batch_size or self.config.data.batch_size
        trainer = self.config.trainer
        where = predict_device(device, trainer.get("accelerator", "auto"))
        results = predict_batches(
            self.module, items, size, batch, self.class_names, device=where, precision=trainer.get("precision", "32")
        )
        if out is not None:
            names = [f"array_{i}" if isinstance(x, np.ndarray) else Path(x).stem for i, x in enumerate(items)]
            images = LazyImages(items)  # decoded again one at a time: the inputs are never all in memory
            write_predictions(images, results, out, names, self.class_colors, self._coco_ids())
        self.manager.hook.vision_pipe_after_predict(pipeline=self, predictions=results)
        return results

    @_action("export")
    def export(
        self,
        out_dir: str | Path,
        *,
        format: str = "onnx",
        opset: int | None = None,
        dynamic_batch: bool = False,
        input_size: Sequence[int] | None = None,
        probabilities: bool = False,
    ) -> Path:
        """Write ``out_dir/model.onnx`` (``format="torchscript"``: ``model.pt``; uint8 (N, H, W, 3) RGB images at
        ``input_size`` (default ``data.input_size``) in; normalization, model and the head's decoding inside) and
        ``out_dir/model.json``; return the model's path. ``probabilities``: segmentation's per-pixel probabilities
        too. See :mod:`vision_pipe.export` (ONNX needs the ``export`` extra: ``pip install "vision-pipe[export]"``)."""
        from vision_pipe.export import DEFAULT_OPSET, export_pipeline

        opset = DEFAULT_OPSET if opset is None else opset
        return export_pipeline(
            self,
            out_dir,
            format=format,
            opset=opset,
            dynamic_batch=dynamic_batch,
            input_size=input_size,
            probabilities=probabilities,
        )

    def _coco_ids(self) -> CocoIds:
        """:attr:`coco_ids`; built from a checkpoint with the dataset's category ids (a COCO dataset), the image ids
        are read from the loader's files, if they are still there (once)."""
        ids = self.coco_ids
        if self.config.task == "detection" and ids.category_ids is not None and not ids.image_ids and not self.splits:
            if self._dataset_image_ids is None:
                self._dataset_image_ids = dataset_image_ids(self.config, self.locations, self.manager.registry)
            return CocoIds(ids.category_ids, self._dataset_image_ids)
        return ids

    def load_checkpoint(self, path: str | Path, *, trust: bool = False) -> None:
        """Load the model's weights (and fitted normalization) from a vision-pipe checkpoint,
        read as weights only unless ``trust`` (files you trust only)."""
        self._load_weights(read_checkpoint(path, trust=trust), path)

    def _load_weights(self, ckpt: dict[str, Any], path: str | Path) -> None:
        try:
            self.module.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise VisionPipeError(f"{path}: the checkpoint does not fit this pipeline's model: {exc}") from exc
        self._normalizer_fitted = True


def _ckpt_args(run: Callable[..., Any], ckpt: str | Path | None, trust: bool) -> dict[str, Any]:
    """``ckpt_path`` for a Lightning ``fit``/``validate``/``test``, read as weights only unless ``trust``
    (where this Lightning accepts ``weights_only``; :func:`read_checkpoint` checked the file first anyway)."""
    if ckpt is None:
        return {"ckpt_path": None}
    args: dict[str, Any] = {"ckpt_path": str(ckpt)}
    if "weights_only" in inspect.signature(run).parameters:
        args["weights_only"] = not trust
    return args


def check_save_json(config: PipelineConfig) -> None:
    """:class:`VisionPipeError` unless ``config``'s task writes COCO results (``save_json``: detection only);
    ``vision-pipe fit --save-json`` asks before training, not after."""
    if config.task != "detection":
        raise VisionPipeError(
            f"save_json (--save-json) writes detections in the COCO results format; pipeline "
            f"'{config.name}' solves {config.task}"
        )


__all__ = ["Pipeline"]
