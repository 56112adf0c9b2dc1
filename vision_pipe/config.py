"""Pipeline configuration: YAML loading (with line numbers), ``base:`` inheritance,
dotted ``key=value`` overrides, and schema validation.

Every error names the YAML file and line (or the override) and the dotted key,
and suggests the closest valid names for a misspelling.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vision_pipe.errors import ConfigError, StageError, did_you_mean
from vision_pipe.tasks import TASKS

Loc = tuple[str | int, ...]


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


class DataConfig(_Strict):
    """The data side: loading → (split) → resize → augmentation → batches → normalization."""

    loader: StageSpec
    input_size: tuple[int, int] = Field(description="(height, width) in pixels every image is resized to")
    split: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train/val/test fractions, used when the loader has no split of its own"
    )
    batch_size: int = Field(64, ge=1)
    num_workers: int | Literal["auto"] = "auto"
    normalization: StageSpec | None = None
    augmentation: list[StageSpec] = Field(default_factory=list)
    on_bad_sample: Literal["error", "skip"] = Field(
        "error",
        description="what the pre-flight check does with a bad sample: stop the run naming it (error) or leave it "
        "out and list it in the run's preflight.json (skip)",
    )
    boxes: BoxRules = Field(default_factory=lambda: BoxRules())

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


class OptimizerConfig(_Strict):
    """Mini-batch gradient descent and its adaptive variants."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "sgd"
    lr: float = Field(0.01, gt=0)
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
# YAML with locations
# ----------------------------------------------------------------------------


class Locations:
    """Where each dotted key of a config came from (``file:line`` or an override)."""

    def __init__(self) -> None:
        self._where: dict[Loc, str] = {}

    def set(self, loc: Loc, where: str) -> None:
        self._where[loc] = where

    def find(self, loc: Iterable[str | int]) -> str | None:
        """The location of ``loc`` or of its nearest ancestor that has one."""
        parts = tuple(loc)
        while True:
            if parts in self._where:
                return self._where[parts]
            if not parts:
                return None
            parts = parts[:-1]

    def update(self, other: Locations) -> None:
        self._where.update(other._where)


def _walk(node: yaml.Node, loc: Loc, file: str, locs: Locations) -> None:
    locs.set(loc, f"{file}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"key '{key}' appears twice (first on line {seen[key]})",
                    location=f"{file}:{key_node.start_mark.line + 1}",
                    key=dotted(loc + (key,)),
                )
            seen[key] = key_node.start_mark.line + 1
            locs.set(loc + (key,), f"{file}:{key_node.start_mark.line + 1}")
            _walk(value_node, loc + (key,), file, locs)
            locs.set(loc + (key,), f"{file}:{key_node.start_mark.line + 1}")
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), file, locs)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Locations]:
    """Read one YAML mapping and the line of every key; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a pipeline YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ConfigError(
            f"YAML syntax error: {problem}" + (f" ({context})" if context else ""), location=where
        ) from exc
    if data is None:
        raise ConfigError("the file is empty; a pipeline needs at least name, data and model", location=str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            f"a pipeline file must be a mapping of keys (name, data, model, ...), not a {type(data).__name__}",
            location=str(path),
        )
    locs = Locations()
    assert node is not None
    _walk(node, (), str(path), locs)
    return data, locs


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively by ``update`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            # A stage entry whose name changes starts from scratch: the old stage's parameters do not apply.
            if "name" in value and value.get("name") != out[key].get("name"):
                out[key] = copy.deepcopy(dict(value))
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_with_bases(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Locations]:
    """Read ``path`` and, recursively, the files named by its ``base:`` (relative to it)."""
    path = Path(path).resolve() if _chain else Path(path)
    data, locs = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data, locs
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    merged_locs = Locations()
    for b in bases:
        if not isinstance(b, str):
            raise ConfigError("base must be a file path or a list of file paths", location=locs.find(("base",)), key="base")
        base_path = (path.parent / b).resolve()
        chain = _chain + (path.resolve(),)
        if base_path in chain:
            cycle = " -> ".join(str(p) for p in chain + (base_path,))
            raise ConfigError(f"base files form a cycle: {cycle}", location=locs.find(("base",)), key="base")
        if not base_path.exists():
            raise ConfigError(f"base file not found: {base_path}", location=locs.find(("base",)), key="base")
        base_data, base_locs = load_yaml_with_bases(base_path, chain)
        merged = deep_merge(merged, base_data)
        merged_locs.update(base_locs)
    merged = deep_merge(merged, data)
    merged_locs.update(locs)
    return merged, merged_locs


def dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], locs: Locations) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML (``3`` → int, ``[1, 2]`` → list)."""
    data = copy.deepcopy(data)
    for item in overrides:
        where = f"override '{item}'"
        if "=" not in item:
            raise ConfigError("an override must look like key.path=value", location=where)
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError("an override must look like key.path=value", location=where)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value as YAML: {exc}", location=where) from exc
        parts: list[str | int] = []
        node: Any = data
        segments = key.split(".")
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if isinstance(node, list):
                if not seg.isdigit() or int(seg) >= len(node):
                    raise ConfigError(
                        f"'{seg}' is not an index of this list (it has {len(node)} items)",
                        location=where,
                        key=dotted(parts),
                    )
                idx: str | int = int(seg)
            elif isinstance(node, dict):
                idx = seg
            else:
                raise ConfigError(f"cannot set '{seg}' inside a {type(node).__name__}", location=where, key=dotted(parts))
            parts.append(idx)
            if last:
                node[idx] = value  # type: ignore[index]
            else:
                if isinstance(node, dict) and (idx not in node or node[idx] is None):
                    node[idx] = {}
                node = node[idx]  # type: ignore[index]
        locs.set(tuple(parts), where)
    return data


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


def validate_trainer(trainer: dict[str, Any], locs: Locations) -> dict[str, Any]:
    """Check trainer keys against ``lightning.Trainer``'s signature; apply defaults."""
    from pytorch_lightning import Trainer

    valid = [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
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
    """Validate one stage entry against its factory's parameters.

    Returns ``(entry, python_params, resolved_spec)``: the registry entry, the
    validated parameters for the factory, and the spec with every default
    filled in (JSON-safe, for the saved config).
    """
    name = spec["name"]
    try:
        entry = registry.get(kind, name)
    except StageError as exc:
        raise ConfigError(str(exc), location=locs.find(loc + ("name",)), key=dotted(loc + ("name",))) from None
    extras = {k: v for k, v in spec.items() if k in reserved}
    params = {k: v for k, v in spec.items() if k not in reserved}
    try:
        validated = entry.params_model.model_validate(params)
    except pydantic.ValidationError as exc:
        err = pydantic_to_config_error(exc, params, locs, prefix=loc, what=f" for {kind} stage '{name}'")
        # Unknown parameters: suggest the factory's own parameter names.
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            key = str(first["loc"][-1])
            valid = [p.name for p in entry.parameters] + [r for r in reserved if r != "name"]
            raise ConfigError(
                f"unknown parameter '{key}' for {kind} stage '{name}'.{did_you_mean(key, valid)} "
                f"Its parameters: {', '.join(valid) or '(none)'}",
                location=locs.find(loc + (key,)),
                key=dotted(loc + (key,)),
            ) from None
        raise err from None
    python_params = {p.name: getattr(validated, p.name) for p in entry.parameters}
    resolved = {"name": name, **extras, **validated.model_dump(mode="json")}
    return entry, python_params, resolved
