"""Building a pipeline's stages from its validated config, and checking their chain.

Owns :func:`build_pipeline`: each stage entry validated against its factory
(:func:`vision_pipe.config.validate_stage_params`), the stages built in
pipeline order with the :class:`~vision_pipe.stages.StageContext` each may
see, every built object checked against its kind's contract, the chain checked
(the loader's and the head's task), the backbone's weights and freezing applied
(:mod:`vision_pipe.finetune`), the backbone's ``forward`` checked against its
``feature_info`` on one dummy input (:func:`check_backbone_contract`), and the
LightningModule / LightningDataModule assembled. Every error names the YAML
location (or override) and the stage.

A pipeline built for inference from a checkpoint (``from_checkpoint``) takes
its class names from the checkpoint and builds no loader and no data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import albumentations as A
import torch

from vision_pipe.config import PipelineConfig, validate_stage_params
from vision_pipe.config_files import Loc, Locations, dotted
from vision_pipe.data import PipelineDataModule, default_num_workers, local_processes, make_splits
from vision_pipe.errors import ChainError, ContractError, DataError, StageError, VisionPipeError
from vision_pipe.finetune import apply_weights_and_freeze, freeze_unused
from vision_pipe.io import set_max_image_pixels
from vision_pipe.module import PipelineModule
from vision_pipe.plugins import RESERVED_KEYS
from vision_pipe.stages import Backbone, Features, Head, Loader, Normalizer, SampleSource, StageContext
from vision_pipe.tasks.coco_results import CocoIds

Color = tuple[int, int, int]

log = logging.getLogger("vision_pipe")


@dataclass(frozen=True)
class CheckpointClasses:
    """What a checkpoint tells a pipeline built from it instead of a loader."""

    names: Sequence[str]
    colors: Sequence[Sequence[int]] | None = None
    category_ids: Sequence[int] | None = None  #: the dataset's id of each class (COCO results)


@dataclass
class BuiltPipeline:
    """The result of :func:`build_pipeline`."""

    stages: dict[str, Any]  #: by kind; ``augmentation`` is a list, ``loading`` absent from a checkpoint
    class_names: list[str]
    class_colors: list[Color] | None
    ids: CocoIds  #: the dataset's category ids (loader or checkpoint) and image ids (loader only)
    splits: dict[str, SampleSource]  #: empty for a pipeline built from a checkpoint
    resolved: dict[str, Any]  #: the config with every stage's defaults filled in (a run's config.yaml)
    module: PipelineModule
    datamodule: PipelineDataModule | None


def _colors(colors: Sequence[Sequence[int]] | None) -> list[Color] | None:
    return [(int(c[0]), int(c[1]), int(c[2])) for c in colors] if colors else None


def _ints(values: Sequence[int] | None) -> list[int] | None:
    return [int(v) for v in values] if values is not None else None


def stage_slots(config: PipelineConfig) -> list[tuple[str, Loc]]:
    """``(kind, location)`` of every stage entry of ``config``, in pipeline order."""
    slots: list[tuple[str, Loc]] = [("loading", ("data", "loader"))]
    if config.data.normalization is not None:
        slots.append(("normalization", ("data", "normalization")))
    slots += [("augmentation", ("data", "augmentation", i)) for i in range(len(config.data.augmentation))]
    slots += [("backbone", ("model", "backbone")), ("head", ("model", "head"))]
    return slots


def _spec(config: PipelineConfig, loc: Loc) -> dict[str, Any]:
    node: Any = config
    for part in loc:
        node = node[part] if isinstance(part, int) or isinstance(node, dict) else getattr(node, part)
    return node


def _set(tree: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = tree
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


class _Builder:
    """Builds the stages of one config; knows where each entry is and what its factory takes."""

    def __init__(self, config: PipelineConfig, locs: Locations, registry: Any) -> None:
        self.config = config
        self.locs = locs
        self.resolved: dict[str, Any] = config.model_dump(mode="json")
        self.entries: dict[Loc, Any] = {}
        self.params: dict[Loc, dict[str, Any]] = {}
        for kind, loc in stage_slots(config):
            entry, python_params, resolved = validate_stage_params(
                kind, _spec(config, loc), loc, registry, locs, RESERVED_KEYS[kind]
            )
            self.entries[loc] = entry
            self.params[loc] = python_params
            _set(self.resolved, loc, resolved)

    def where(self, loc: Loc) -> str:
        place = self.locs.find(loc)
        return (f"{place}: " if place else "") + dotted(loc)

    def label(self, loc: Loc) -> str:
        """Where a stage is and what it is; with the overrides that changed it, which may be the culprits."""
        entry = self.entries[loc]
        overrides = [o for o in self.locs.overrides_within(loc) if o != self.locs.find(loc)]
        changed = f", changed by {', '.join(overrides)}" if overrides else ""
        return f"{self.where(loc)} ({entry.kind} stage '{entry.name}'{changed})"

    def build(self, loc: Loc, ctx: StageContext, expected: type | tuple[type, ...], what: str) -> Any:
        entry = self.entries[loc]
        try:
            built = entry.build(self.params[loc], ctx)
        except VisionPipeError as exc:
            raise type(exc)(f"{self.label(loc)}: {exc}") from exc
        if not isinstance(built, expected):
            raise StageError(
                f"{self.where(loc)}: {entry.kind} stage '{entry.name}' (plugin '{entry.plugin}') returned "
                f"{type(built).__name__}; a {entry.kind} stage must return {what}"
            )
        return built


def build_pipeline(
    config: PipelineConfig,
    locs: Locations,
    registry: Any,
    *,
    from_checkpoint: CheckpointClasses | None = None,
    trust: bool = False,
) -> BuiltPipeline:
    """Build every stage of ``config``, check the chain and the backbone's contract, assemble the model and data.

    ``from_checkpoint``: build for inference from a checkpoint — its class names
    (and colours) replace the loader, which is neither built nor run, and there
    are no splits and no datamodule, and ``model.backbone.weights`` is not read (the
    checkpoint's own weights replace it). ``trust``: read the backbone weights in full,
    not as weights only (see :func:`vision_pipe.checkpoints.load_torch_file`). Weight initialization is seeded with
    ``config.seed`` without disturbing the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _build(_Builder(config, locs, registry), from_checkpoint, trust)


def _build(b: _Builder, from_checkpoint: CheckpointClasses | None, trust: bool) -> BuiltPipeline:
    cfg = b.config
    task = cfg.task
    stages: dict[str, Any] = {}
    splits: dict[str, SampleSource] = {}
    ctx = StageContext(task=task, seed=cfg.seed, input_size=cfg.data.input_size)
    set_max_image_pixels(cfg.data.max_image_pixels)  # every image and mask read from now on (workers too)
    if from_checkpoint is None:
        loader_loc: Loc = ("data", "loader")
        loader = b.build(loader_loc, ctx, Loader, "a vision_pipe.Loader")
        if task not in loader.tasks:
            raise ChainError(
                f"{b.where(loader_loc)}: loading stage '{cfg.data.loader['name']}' provides "
                f"{', '.join(loader.tasks) or 'no task'} data, but the pipeline's task is '{task}' "
                f"(head '{cfg.model.head['name']}'). Choose a loader that provides {task} targets."
            )
        try:
            loaded = loader.load(task)
        except DataError as exc:
            raise DataError(f"{b.label(loader_loc)}: {exc}") from exc
        stages["loading"] = loader
        splits = make_splits(loaded, cfg.data.split, cfg.seed)
        class_names = list(loaded.class_names)
        class_colors = _colors(loaded.class_colors)
        ids = CocoIds(_ints(loaded.category_ids), dict(loaded.image_ids or {}))
    else:
        class_names = list(from_checkpoint.names)
        class_colors = _colors(from_checkpoint.colors)
        ids = CocoIds(_ints(from_checkpoint.category_ids))
    ctx = StageContext(task=task, seed=cfg.seed, input_size=cfg.data.input_size, class_names=tuple(class_names))

    ctx = replace(ctx, restoring=from_checkpoint is not None)

    # the backbone first: the normalization may follow its weights' statistics
    bb_loc: Loc = ("model", "backbone")
    backbone = b.build(bb_loc, ctx, Backbone, "a vision_pipe.Backbone")
    if not getattr(backbone, "feature_info", None):
        raise StageError(f"{b.where(bb_loc)}: backbone '{cfg.model.backbone['name']}' declares no feature_info")
    weights_report, frozen = apply_weights_and_freeze(
        backbone, cfg.model.backbone, b.where(bb_loc), trust=trust, weights=from_checkpoint is None
    )
    unfreeze_at = cfg.model.backbone.get("unfreeze_at_epoch")
    check_backbone_contract(backbone, b.label(bb_loc))
    ctx = replace(
        ctx,
        feature_info=tuple(backbone.feature_info),
        backbone_provides=frozenset(backbone.provides),
        backbone_name=cfg.model.backbone["name"],
        backbone_input_stats=backbone.input_stats,
    )

    normalizer = None
    if cfg.data.normalization is not None:
        normalizer = b.build(("data", "normalization"), ctx, Normalizer, "a vision_pipe.Normalizer")
    if backbone.pretrained and from_checkpoint is None:
        name = cfg.data.normalization["name"] if cfg.data.normalization is not None else None
        warning = normalization_warning(backbone, normalizer, b.label(bb_loc), name)
        if warning:
            log.warning("%s", warning)

    augmentations = [
        b.build(("data", "augmentation", i), ctx, A.BasicTransform, "an albumentations transform")
        for i in range(len(cfg.data.augmentation))
    ]
    stages["normalization"] = normalizer
    stages["augmentation"] = augmentations
    stages["backbone"] = backbone

    head_loc: Loc = ("model", "head")
    head = b.build(head_loc, ctx, Head, "a vision_pipe.Head")
    if head.task != task:
        raise ChainError(
            f"{b.where(head_loc)}: head '{cfg.model.head['name']}' solves {head.task}, but the pipeline's task is "
            f"'{task}' (loader '{cfg.data.loader['name']}')"
        )
    stages["head"] = head

    module = PipelineModule(
        normalizer,
        backbone,
        head,
        cfg.optimizer,
        cfg.scheduler,
        class_names,
        checkpoint_extra={"config": b.resolved, "class_colors": class_colors, "category_ids": ids.category_ids},
        channels_last=cfg.model.channels_last,
        compile=cfg.model.compile,
        unfreeze=(unfreeze_at, frozen) if unfreeze_at is not None else None,
        metric_options=metric_options(cfg),
        adversarial=cfg.training.adversarial,
    )
    module.weights_report = weights_report
    if from_checkpoint is None:  # to be trained: what no output depends on gets no gradient to wait for under DDP
        try:
            module.unused_parameters = freeze_unused(module, cfg.data.input_size, task)
        except VisionPipeError:
            raise
        except Exception as exc:
            raise ContractError(
                f"{b.label(head_loc)}: a forward pass of the model (backbone '{cfg.model.backbone['name']}' → head "
                f"'{cfg.model.head['name']}') on one {tuple(cfg.data.input_size)} image failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if module.unfreeze_plan is not None:
            epoch, names = module.unfreeze_plan
            unused = {n.removeprefix("backbone.") for n in module.unused_parameters}
            module.unfreeze_plan = (epoch, [n for n in names if n not in unused])
    datamodule = None
    if splits:
        workers = cfg.data.num_workers
        datamodule = PipelineDataModule(
            splits,
            task,
            cfg.data.input_size,
            augmentations,
            cfg.data.batch_size,
            default_num_workers(local_processes(cfg.trainer)) if workers == "auto" else workers,
            boxes=cfg.data.boxes,
        )
    return BuiltPipeline(stages, class_names, class_colors, ids, splits, b.resolved, module, datamodule)


def dataset_image_ids(config: PipelineConfig, locs: Locations, registry: Any) -> dict[str, Any]:
    """The dataset's image ids by :func:`~vision_pipe.io.path_key` of the image, from ``config``'s loader built
    and loaded again (for a pipeline built from a checkpoint, whose data files may still be there); ``{}``
    when the loader gives none or its files cannot be read."""
    b = _Builder(config, locs, registry)
    ctx = StageContext(task=config.task, seed=config.seed, input_size=config.data.input_size)
    try:
        loaded = b.build(("data", "loader"), ctx, Loader, "a vision_pipe.Loader").load(config.task)
    except VisionPipeError as exc:
        log.info("the dataset's image ids are not available (%s): COCO results use the inputs' positions", exc)
        return {}
    return dict(loaded.image_ids or {})


def metric_options(config: PipelineConfig) -> dict[str, Any]:
    """The options of ``config.metrics`` for its task's ``make_metrics``, empty when all are the defaults."""
    if config.task == "detection" and config.metrics.detection != "torchmetrics":
        return {"backend": config.metrics.detection}
    return {}


def normalization_warning(
    backbone: Backbone, normalizer: Normalizer | None, label: str, normalization: str | None = None
) -> str | None:
    """What is off when a pretrained ``backbone`` (``label`` names it) is paired with ``normalizer``
    (the stage called ``normalization``), or None when they agree or it cannot tell.

    Pretrained weights expect inputs normalized with :attr:`Backbone.input_stats`; a
    normalization fitted on the user's images (mean image, fitted channel statistics),
    none at all, or other given statistics feed them inputs on another scale. Still
    allowed (fine-tuning adapts), so a warning that says what is expected.
    """
    stats = backbone.input_stats
    expected = (
        f"its weights expect {stats.describe()} (pixel units) from {stats.source}: "
        "`normalization: {name: pretrained}` applies them"
        if stats is not None
        else "give channel_stats the mean and std its weights were trained with"
    )
    if normalizer is None:
        problem = "there is no normalization (it sees raw pixel values 0..255)"
    elif normalizer.needs_fit:
        problem = f"the normalization '{normalization}' is fitted on your training images"
    elif stats is not None and normalizer.input_stats is not None and not stats.matches(normalizer.input_stats):
        problem = f"the normalization '{normalization}' applies {normalizer.input_stats.describe()}"
    else:
        return None
    return f"{label} holds pretrained weights, but {problem}; {expected}"


# ----------------------------------------------------------------------------
# The backbone's contract, checked on one dummy input
# ----------------------------------------------------------------------------


def check_backbone_contract(backbone: Backbone, label: str) -> None:
    """One forward of ``backbone`` on a tiny input: it must return :class:`Features` with
    exactly the maps its ``feature_info`` declares, each (1, channels, ⌈H/stride⌉, ⌈W/stride⌉).

    The input is (1, 3, S, S) zeros with S = 2 × the largest declared stride (at
    least 32). Runs in eval mode without gradients, then restores every
    submodule's mode: batch-norm statistics, parameters and the random state are
    left as they were. A mismatch is a :class:`ContractError` starting with ``label``.
    """
    infos = list(backbone.feature_info)
    size = max(32, 2 * max(int(f.stride) for f in infos))
    images = torch.zeros(1, 3, size, size)
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            features = backbone(images)
    except Exception as exc:
        raise ContractError(
            f"{label}: forward() failed on a (1, 3, {size}, {size}) input: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(features, Features):
        raise ContractError(
            f"{label}: forward() returned {type(features).__name__}; a backbone must return "
            "vision_pipe.Features(maps={name: tensor, ...}) with the maps its feature_info declares"
        )
    declared = [f.name for f in infos]
    if list(features.maps) != declared:
        raise ContractError(
            f"{label}: forward() returned maps {list(features.maps)}, but feature_info declares {declared} (same order)"
        )
    for info in infos:
        fmap = features.maps[info.name]
        expected = (math.ceil(size / info.stride),) * 2
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4:
            got = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
            raise ContractError(f"{label}: map '{info.name}' is {got}; expected a (B, C, H, W) tensor")
        problems = []
        if fmap.shape[1] != info.channels:
            problems.append(f"{fmap.shape[1]} channels, but feature_info declares {info.channels}")
        if tuple(fmap.shape[2:]) != expected:
            h, w = fmap.shape[2:]
            actual = f"stride {size // h}" if h and size % h == 0 and h == w else "a different stride"
            problems.append(
                f"{h}×{w} for a {size}×{size} input ({actual}), but feature_info declares stride {info.stride} "
                f"({expected[0]}×{expected[1]}; sizes round up)"
            )
        if problems:
            raise ContractError(f"{label}: map '{info.name}': " + "; ".join(problems))


__all__ = ["BuiltPipeline", "CheckpointClasses", "build_pipeline", "check_backbone_contract", "stage_slots"]
