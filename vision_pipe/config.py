"""Pipeline configuration: the pydantic schema of a pipeline and its validation
(top-level keys, Trainer arguments, and each stage's parameters against its factory).

Every error names the YAML file and line (or the override) and the dotted key,
and suggests the closest valid names for a misspelling. Reading YAML files,
``base:`` inheritance and ``key=value`` overrides are in :mod:`vision_pipe.config_files`.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vision_pipe.config_files import Loc, Locations, dotted
from vision_pipe.errors import ConfigError, StageError, did_you_mean
from vision_pipe.io import DEFAULT_MAX_IMAGE_PIXELS
from vision_pipe.param_types import type_str
from vision_pipe.tasks import TASKS

# ----------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


StageSpec = dict[str, Any]
"""A stage entry: ``{name: <stage name>, <param>: <value>, ...}``."""


def _check_stage_spec(value: Any) -> Any:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ValueError("a stage entry must be a mapping with a 'name' key (or just the stage name)")
    if not isinstance(value["name"], str):
        raise ValueError("a stage's 'name' must be a string")
    return value


class BoxRules(_Strict):
    """Detection: what happens to boxes that augmentation pushes (partly) out of the image.

    Boxes are clipped to the image; a clipped box is dropped when it keeps less
    than ``min_visibility`` of its area, or less than ``min_area`` pixels
    (input-size pixels), or is narrower/shorter than ``min_width``/``min_height``.
    The rules apply to training augmentation only: evaluation keeps every box.
    """

    min_visibility: float = Field(0.3, ge=0.0, le=1.0)
    min_area: float = Field(0.0, ge=0.0)
    min_width: float = Field(0.0, ge=0.0)
    min_height: float = Field(0.0, ge=0.0)


#: The largest ``data.batch_size`` accepted: larger is a typo (an extra digit) rather than a plan.
MAX_BATCH_SIZE = 65536


class DataConfig(_Strict):
    """The data side: loading → (split) → resize → augmentation → batches → normalization."""

    loader: StageSpec
    input_size: tuple[int, int] = Field(description="(height, width) in pixels every image is resized to")
    split: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train/val/test fractions, used when the loader has no split of its own"
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    num_workers: Annotated[int, Field(ge=0, le=1024)] | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes; auto: the cores less one (per training process), and none for a "
        "CPU fit whose images are cached (data.cache), where the model's threads make better use of the cores",
    )
    normalization: StageSpec | None = None
    augmentation: list[StageSpec] = Field(default_factory=list)
    on_bad_sample: Literal["error", "skip"] = Field(
        "error",
        description="what the pre-flight check does with a bad sample: stop the run naming it (error) or leave it "
        "out and list it in the run's preflight.json (skip)",
    )
    boxes: BoxRules = Field(default_factory=lambda: BoxRules())
    cache: Literal["auto", "none", "ram", "disk"] = Field(
        "auto",
        description="decode and resize each image once and train on the cached uint8 arrays (and resized boxes): "
        "none; ram (shared memory every DataLoader worker reads); disk (memory-mapped files under "
        "$VISION_PIPE_CACHE, keyed by the data fingerprint and the input size, reused by later runs); auto "
        "(default): ram for a fit when it takes at most a quarter of the available memory, else none. "
        "Augmentation still runs every epoch",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="the most pixels (width × height) an image or mask may have; checked from the file's header "
        "before decoding, a larger one is a bad sample naming the file (skipped under on_bad_sample: skip)",
    )

    @field_validator("input_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError("input_size must be positive")
        return v

    @field_validator("split")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError(f"split fractions must be >= 0, with train > 0, and sum to 1 (got {list(v)})")
        return v

    @field_validator("loader", "normalization", mode="before")
    @classmethod
    def _stage(cls, v: Any) -> Any:
        return None if v is None else _check_stage_spec(v)

    @field_validator("augmentation", mode="before")
    @classmethod
    def _stages(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("augmentation must be a list of stage entries")
        return [_check_stage_spec(x) for x in v]


class ModelConfig(_Strict):
    """The model side: backbone → head, and how the model runs on the accelerator.

    ``channels_last``: keep the model's convolution weights and the input batch in
    the NHWC memory format — faster convolutions on GPUs with tensor cores (with
    ``trainer.precision: bf16-mixed`` or ``16-mixed``); usually no gain on a CPU.
    ``compile``: ``false``, ``true`` or a ``torch.compile`` mode (``default``,
    ``reduce-overhead``, ``max-autotune``, ``max-autotune-no-cudagraphs``): compile
    the backbone when training/evaluation starts. The first steps pay the
    compilation; it needs a compiler toolchain (Triton on a GPU, a C++ compiler on
    a CPU). Both are off by default; the ready GPU pipelines turn them on.
    """

    backbone: StageSpec
    head: StageSpec
    channels_last: bool = False
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False

    @field_validator("backbone", "head", mode="before")
    @classmethod
    def _stage(cls, v: Any) -> Any:
        return _check_stage_spec(v)


class BackboneEntryKeys(_Strict):
    """The keys of ``model.backbone`` that are not the stage's parameters (see :mod:`vision_pipe.finetune`)."""

    weights: str | None = Field(
        None,
        description="a weights file (a vision-pipe checkpoint of any task, e.g. an autoencoder's, or a state dict of "
        "the backbone), or a run folder / runs/<pipeline> folder (its newest run's best.ckpt, else last.ckpt)",
    )
    strict: bool = Field(True, description="weights must fit the backbone exactly (false: load what matches)")
    freeze: str | list[str] | None = Field(None, description="parameter name prefixes not trained")
    unfreeze_at_epoch: int | None = Field(
        None, ge=1, description="train the frozen parameters from this epoch on (0-based), at optimizer.backbone_lr"
    )


#: The schema of each stage kind's reserved keys (:data:`vision_pipe.registry.RESERVED_KEYS`), where they have one.
RESERVED_SCHEMAS: dict[str, type[BaseModel]] = {"backbone": BackboneEntryKeys}


class OptimizerConfig(_Strict):
    """Mini-batch gradient descent and its adaptive variants."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "sgd"
    lr: float = Field(0.01, gt=0)
    backbone_lr: float | None = Field(
        None, gt=0, description="the backbone's learning rate (default: lr); the schedule scales both"
    )
    momentum: float = Field(0.9, ge=0, description="sgd, rmsprop")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    alpha: float = Field(0.99, description="rmsprop smoothing constant")


class SchedulerConfig(_Strict):
    """Learning-rate schedule; ``plateau`` halves the rate when ``monitor`` stops improving."""

    name: Literal["none", "plateau", "step", "cosine"] = "plateau"
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: multiply the rate by this")
    patience: int = Field(2, ge=0)
    min_lr: float = 0.0
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, description="step: decay factor")
    warmup_epochs: int = Field(0, ge=0, description="cosine: linear warm-up epochs")


class EarlyStoppingConfig(_Strict):
    enabled: bool = True
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1)
    min_delta: float = 0.0


class CheckpointConfig(_Strict):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"


class GuardConfig(_Strict):
    """What a fit does when the training loss becomes non-finite (NaN or inf); see :mod:`vision_pipe.guards`.

    ``stop`` (default): stop the run with an error naming the epoch and step.
    ``skip_batch``: skip that batch's optimizer step and count it (``train/skipped_batches`` in metrics.json).
    """

    on_nonfinite: Literal["stop", "skip_batch"] = "stop"


class MetricsConfig(_Strict):
    """How evaluation metrics are computed.

    ``detection``: ``torchmetrics`` (default: torchmetrics' ``MeanAveragePrecision``)
    or ``pycocotools`` (the reference ``COCOeval`` run by vision-pipe on the
    split's ground truth and detections converted to COCO format in memory; see
    :mod:`vision_pipe.tasks.coco_eval`). Both give the same keys (``map``, ``map_50`` ...).
    """

    detection: Literal["torchmetrics", "pycocotools"] = "torchmetrics"


#: The experiment trackers ``loggers:`` may name (see :mod:`vision_pipe.loggers`).
LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")


def _check_logger_entry(value: Any) -> Any:
    """``name`` or ``{name: ..., <option>: ...}`` → ``{name: ..., ...}``; unknown names get a did-you-mean."""
    entry = {"name": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError("a logger entry is a name (csv, tensorboard, mlflow, wandb) or a mapping with a 'name' key")
    if entry["name"] not in LOGGER_NAMES:
        raise ValueError(
            f"unknown logger {entry['name']!r}.{did_you_mean(entry['name'], LOGGER_NAMES)} "
            f"Available: {', '.join(LOGGER_NAMES)}"
        )
    return entry


LoggerSpec = Annotated[dict[str, Any], pydantic.BeforeValidator(_check_logger_entry)]
"""A logger entry: ``{name: csv|tensorboard|mlflow|wandb, <option>: <value>, ...}`` (or just the name)."""


_PixelEps = Annotated[float, Field(ge=0, le=255)]


class AttackConfig(_Strict):
    """An adversarial evaluation of the test split (``test.attack``; :mod:`vision_pipe.attack`).

    ``eps`` in /255 pixel units (``4`` moves a pixel by at most 4 of 255), each evaluated;
    ``fgsm``: x + ε·sign(∇ₓJ) clipped to [0, 255]; ``pgd``: ``steps`` steps of size ``alpha``
    (default 2.5·ε/steps) from a random start in the ε-ball (``random_start``), projected onto
    the ball and the valid pixels after each. ``examples``: test images in the examples figure.
    """

    method: Literal["fgsm", "pgd"] = "fgsm"
    eps: list[_PixelEps] = Field(
        default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0], min_length=1, description="perturbation sizes, in /255"
    )
    alpha: float | None = Field(None, gt=0, description="pgd: step size in /255 (default 2.5·eps/steps)")
    steps: int = Field(10, ge=1, description="pgd: iterations")
    random_start: bool = Field(True, description="pgd: start from a uniform random point of the eps-ball")
    examples: int = Field(4, ge=0, le=64, description="test images drawn in plots/<method>_examples.png")


class EvaluationConfig(_Strict):
    """What evaluating the test split does besides the task's metrics."""

    attack: AttackConfig | None = Field(None, description="also evaluate under an adversarial attack")


class AdversarialTrainingConfig(_Strict):
    """Adversarial training (``training.adversarial``): ``fraction`` of each training batch replaced by its
    adversarial version (``method`` as in :class:`AttackConfig`, one ``eps`` in /255), computed on the
    current weights in the training step (:func:`vision_pipe.adversarial.mix_adversarial`)."""

    method: Literal["fgsm", "pgd"] = "fgsm"
    eps: _PixelEps
    fraction: float = Field(0.5, gt=0, le=1, description="share of each batch replaced by adversarial images")
    alpha: float | None = Field(None, gt=0, description="pgd: step size in /255 (default 2.5·eps/steps)")
    steps: int = Field(3, ge=1, description="pgd: iterations")
    random_start: bool = Field(True, description="pgd: start from a uniform random point of the eps-ball")


class TrainingConfig(_Strict):
    """How the training step treats its batches."""

    adversarial: AdversarialTrainingConfig | None = None


class PipelineConfig(_Strict):
    """One pipeline: its stages, optimization, and Lightning trainer settings."""

    name: str
    task: Literal[TASKS]  # type: ignore[valid-type]  # the registered tasks (vision_pipe.tasks)
    seed: int = 0
    plugins: list[str] = Field(default_factory=list, description="extra plugin modules to load")
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    loggers: list[LoggerSpec] = Field(
        default_factory=lambda: [{"name": "csv"}, {"name": "tensorboard"}],
        description="experiment trackers (csv is always on: the run's curves are read from it)",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    test: EvaluationConfig = Field(default_factory=EvaluationConfig)
    trainer: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of lightning Trainer")
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\") or v.startswith("."):
            raise ValueError("name must be a non-empty file-name-safe string (no '/')")
        return v


TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 10, "accelerator": "auto", "devices": "auto"}
#: Trainer arguments vision-pipe sets itself.
TRAINER_RESERVED = ("logger", "callbacks", "default_root_dir", "enable_checkpointing")


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for did-you-mean)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _existing(data: Any, loc: Loc) -> Loc:
    """The longest prefix of ``loc`` that exists in ``data`` (drops pydantic's union tags)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            break
        out.append(part)
    return tuple(out)


def pydantic_to_config_error(
    exc: pydantic.ValidationError,
    data: Any,
    locs: Locations,
    *,
    model: type[BaseModel] | None = None,
    prefix: Loc = (),
    what: str = "",
) -> ConfigError:
    """Translate the first error of ``exc`` into a :class:`ConfigError` with location and hints.

    ``data`` is what was validated (to tell real keys from pydantic's union
    tags); ``prefix`` is where ``data`` sits in the whole config.
    """
    errors = exc.errors()
    err = errors[0]
    raw = tuple(err["loc"])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if err["type"] in ("extra_forbidden", "missing"):
        loc = _existing(data, raw[:-1]) + (raw[-1],)
        key = str(raw[-1])
        if err["type"] == "missing":
            msg = f"required key '{key}' is missing{what}"
        else:
            holder = _model_at(model, loc[:-1]) if model is not None else None
            valid = list(holder.model_fields) if holder is not None else []
            msg = f"unknown key '{key}'{what}." + did_you_mean(key, valid)
            if valid:
                msg += f" Valid keys: {', '.join(valid)}"
    else:
        loc = _existing(data, raw)
        msg = f"{err['msg']} (got {err.get('input')!r}){what}"
    full = prefix + loc
    return ConfigError(msg + more, location=locs.find(full), key=dotted(full))


#: Lower bounds of Trainer arguments that Lightning does not check itself when the Trainer is made.
TRAINER_MINIMUM: dict[str, int] = {
    "check_val_every_n_epoch": 1,
    "log_every_n_steps": 0,
    "accumulate_grad_batches": 1,
    "num_sanity_val_steps": -1,
    "max_steps": -1,
    "min_epochs": 0,
    "min_steps": 0,
    "num_nodes": 1,
    "reload_dataloaders_every_n_epochs": 0,
    "gradient_clip_val": 0,
}


def _trainer_value_problem(key: str, value: Any, hints: dict[str, Any]) -> str | None:
    """Why ``value`` is not a valid ``Trainer(key=...)`` by the type Lightning declares (and our lower bounds)."""
    hint = hints.get(key)
    if hint is not None:
        adapter = pydantic.TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True, strict=True))
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError:
            return f"{value!r} is not a valid value of Trainer({key}=...), which takes {type_str(hint)}"
        except Exception:  # a type pydantic cannot check: Lightning checks it when the Trainer is made
            return None
    minimum = TRAINER_MINIMUM.get(key)
    if minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < minimum:
        return f"must be >= {minimum} (got {value!r})"
    return None


def validate_trainer(trainer: dict[str, Any], locs: Locations) -> dict[str, Any]:
    """Check trainer keys against ``lightning.Trainer``'s signature and their values against its declared
    types (and the lower bounds Lightning leaves unchecked); apply defaults.

    What depends on the machine (an accelerator that is not there, more devices than it has) and
    the ranges Lightning checks itself are checked by making a Trainer
    (:func:`vision_pipe.trainer.check_trainer`, run by ``vision-pipe check`` and before a fit).
    """
    from pytorch_lightning import Trainer

    valid = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
    try:
        hints = typing.get_type_hints(Trainer.__init__)
    except Exception:  # pragma: no cover - an annotation this Python cannot evaluate
        hints = {}
    for key in trainer:
        if key in TRAINER_RESERVED:
            raise ConfigError(
                f"'{key}' is set by vision-pipe itself (run directory, checkpoints and loggers); remove it",
                location=locs.find(("trainer", key)),
                key=f"trainer.{key}",
            )
        if key not in valid:
            raise ConfigError(
                f"unknown Trainer argument '{key}'." + did_you_mean(key, valid),
                location=locs.find(("trainer", key)),
                key=f"trainer.{key}",
            )
        problem = _trainer_value_problem(key, trainer[key], hints)
        if problem is not None:
            raise ConfigError(problem, location=locs.find(("trainer", key)), key=f"trainer.{key}")
    return {**TRAINER_DEFAULTS, **trainer}


def validate(data: dict[str, Any], locs: Locations) -> PipelineConfig:
    """Validate a merged config dict against the schema (stage parameters come later)."""
    if "base" in data:
        raise ConfigError("'base' only works in YAML files (from_dict got one)", key="base")
    try:
        config = PipelineConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise pydantic_to_config_error(exc, data, locs, model=PipelineConfig) from None
    config.trainer = validate_trainer(config.trainer, locs)
    return config


def validate_stage_params(
    kind: str, spec: StageSpec, loc: Loc, registry: Any, locs: Locations, reserved: tuple[str, ...]
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Validate one stage entry against its factory's parameters (:meth:`StageEntry.validate
    <vision_pipe.registry.StageEntry.validate>`, the check every build path uses).

    Returns ``(entry, python_params, resolved_spec)``: the registry entry, the
    validated parameters for the factory, and the spec with every default
    filled in (JSON-safe, for the saved config). A bad parameter is a
    :class:`ConfigError` at its YAML file:line.
    """
    from vision_pipe.registry import ParameterError

    name = spec["name"]
    try:
        entry = registry.get(kind, name)
    except StageError as exc:
        raise ConfigError(str(exc), location=locs.find(loc + ("name",)), key=dotted(loc + ("name",))) from None
    extras = {k: v for k, v in spec.items() if k in reserved and k != "name"}
    params = {k: v for k, v in spec.items() if k not in reserved}
    schema = RESERVED_SCHEMAS.get(kind)
    if schema is not None:
        try:
            schema.model_validate(extras)
        except pydantic.ValidationError as exc:
            raise pydantic_to_config_error(exc, extras, locs, model=schema, prefix=loc) from None
        if extras.get("unfreeze_at_epoch") is not None and not extras.get("freeze"):
            raise ConfigError(
                "unfreeze_at_epoch unfreezes the parameters that 'freeze' names, and this entry freezes none; "
                "add freeze: [<prefixes>] or remove unfreeze_at_epoch",
                location=locs.find(loc + ("unfreeze_at_epoch",)),
                key=dotted(loc + ("unfreeze_at_epoch",)),
            )
    try:
        validated = entry.validate(params)
    except ParameterError as exc:
        where = loc if exc.missing else loc + exc.loc
        raise ConfigError(str(exc), location=locs.find(where), key=dotted(loc + exc.loc)) from None
    python_params = {p.name: getattr(validated, p.name) for p in entry.parameters}
    resolved = {"name": name, **extras, **validated.model_dump(mode="json")}
    return entry, python_params, resolved
