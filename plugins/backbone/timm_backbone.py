"""timm backbone stage (``backbone: {name: timm, model: resnet50}``): any model of ``timm.list_models()``.

The model is built with ``features_only=True``; its maps are timm's features (channels
and reduction from timm's ``feature_info``), named by stride as every vision-pipe
backbone (``stage1`` = stride 2, ..., ``stage5`` = stride 32; see
:mod:`vision_pipe_plugins.backbone.library`). Weights: timm's own (downloaded into its
hub cache) or a local file read as weights only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from torch import Tensor, nn

from vision_pipe import InputStats, StageContext, StageError, did_you_mean, hookimpl, load_weights_file, stage

from .library import WEIGHT_FILE_SUFFIXES, LibraryBackbone, PoolIndices, is_weights_file, probe_padding


@cache
def timm_models() -> tuple[str, ...]:
    """Every architecture name ``timm.list_models()`` knows (no network)."""
    import timm

    return tuple(timm.list_models())


class TimmBackbone(LibraryBackbone):
    """A timm ``features_only`` model: (B, C, H, W) → maps ``stage{log2(stride)}``, finest first."""

    provides: frozenset[str] = frozenset()

    def __init__(self, body: nn.Module, label: str) -> None:
        super().__init__()
        self.body = body
        info: Any = body.feature_info  # timm's FeatureInfo
        self.declare(info.channels(), info.reduction(), label)
        #: timm's module name of each map (``layer1``, ``stages.0``, ...), in map order
        self.module_names: list[str] = list(info.module_name())

    def extract(self, images: Tensor) -> tuple[list[Tensor], list[PoolIndices | None]]:
        outputs = list(self.body(images))
        return outputs, [None] * len(outputs)


def _check_model(model: str) -> str:
    """The architecture part of ``model`` (``resnet50.a1_in1k`` → ``resnet50``); StageError when timm lacks it."""
    arch = model.split(".", 1)[0]
    if arch not in timm_models():
        raise StageError(
            f"backbone 'timm': unknown model {model!r} (timm has {len(timm_models())} models; "
            f"`vision-pipe backbones PATTERN` lists them)." + did_you_mean(arch, timm_models())
        )
    return arch


def _pretrained_args(model: str, pretrained: bool | str, *, load: bool = True) -> tuple[str, dict[str, Any]]:
    """The name to build and the ``create_model`` arguments for ``pretrained`` (``load=False``: the same
    model and tag, its weights left random)."""
    if pretrained is False:
        return model, {"pretrained": False}
    if pretrained is True:
        return model, {"pretrained": load}
    if is_weights_file(pretrained):
        if not load:
            return model, {"pretrained": False}
        state = load_weights_file(Path(pretrained), what="timm weights file")
        return model, {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}}
    import timm

    arch = model.split(".", 1)[0]
    tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*")]
    if pretrained not in tags:
        listed = ", ".join(tags) if tags else "none"
        raise StageError(
            f"backbone 'timm': model {arch!r} has no pretrained tag {pretrained!r}; its tags: {listed}. "
            f"A local file must end in {', '.join(WEIGHT_FILE_SUFFIXES)}." + did_you_mean(pretrained, tags)
        )
    return f"{arch}.{pretrained}", {"pretrained": load}


@stage("backbone", "timm")
def timm_backbone(
    context: StageContext,
    model: str = "resnet18",
    pretrained: bool | str = False,
    out_indices: list[int] | None = None,
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> TimmBackbone:
    """Any timm model as a backbone (``features_only``): its maps named ``stage{k}`` for stride 2**k.

    ``resnet18`` gives ``stage1``..``stage5`` (strides 2..32, channels 64, 64, 128, 256,
    512); ConvNeXt gives ``stage2``..``stage5`` (it starts at stride 4). A second map at
    one stride is ``stage{k}_2``. `vision-pipe check` prints a pipeline's maps;
    `vision-pipe backbones PATTERN` lists the models. Sizes round up for any input (see
    the library module). Provides no pooling indices (``fcn`` ``unpool`` needs another backbone).

    Args:
        model: a name of ``timm.list_models()`` (``resnet50``, ``convnext_tiny``, ``efficientnet_b0``,
            ...), optionally with a pretrained tag (``resnet50.a1_in1k``).
        pretrained: ``false`` (random init); ``true`` (timm's default tag, downloaded into timm's
            hub cache); a tag (``a1_in1k``); or a local ``.safetensors``/``.pth`` file with the
            model's state dict (timm's format), read as weights only. The tag's input statistics
            (timm's ``pretrained_cfg`` mean and std; a file: those of the model's default tag)
            are what ``normalization: {name: pretrained}`` applies.
        out_indices: which of timm's feature levels to keep (0-based, e.g. ``[1, 2, 3, 4]``);
            default all.
        drop_path_rate: stochastic depth rate, for models that have it.
        kwargs: more keyword arguments for ``timm.create_model`` (e.g. ``{output_stride: 16}``).
    """
    import timm

    arch = _check_model(model)
    label = f"backbone 'timm' (model {model!r})"
    # restoring: a checkpoint's weights replace them, so neither download nor read them
    name, args = _pretrained_args(model, pretrained, load=not context.restoring)
    extra = dict(kwargs or {})
    clash = sorted(set(extra) & {"pretrained", "features_only", "out_indices", "drop_path_rate", "model_name"})
    if clash:
        raise StageError(f"backbone 'timm': kwargs {clash} are parameters of the stage; set them there")
    if out_indices is not None:
        if not out_indices or len(set(out_indices)) != len(out_indices):
            raise StageError(f"backbone 'timm': out_indices {out_indices} must be distinct and not empty")
        extra["out_indices"] = tuple(out_indices)
    try:
        body = timm.create_model(name, features_only=True, drop_path_rate=drop_path_rate, **args, **extra)
    except IndexError as exc:
        probe: Any = timm.create_model(arch, features_only=True)
        levels = len(probe.feature_info)
        raise StageError(
            f"backbone 'timm': out_indices {out_indices} out of range: {model!r} has {levels} feature levels "
            f"(0..{levels - 1})"
        ) from exc
    except RuntimeError as exc:  # state dict mismatch
        raise StageError(f"{label}: weights {pretrained!r} do not fit the model: {exc}") from exc
    except (OSError, ValueError) as exc:  # download failed, bad kwargs
        hint = " (offline? give a local weights file instead)" if pretrained not in (False, None) else ""
        raise StageError(f"{label}: timm cannot build it{hint}: {type(exc).__name__}: {exc}") from exc
    except TypeError as exc:
        raise StageError(f"{label}: timm does not accept these arguments: {exc}") from exc
    backbone = TimmBackbone(body, label)
    cfg: Any = getattr(body, "pretrained_cfg", None) or {}
    if cfg.get("mean") and cfg.get("std") and len(cfg["mean"]) == 3:
        tag = f"{cfg.get('architecture', arch)}.{cfg['tag']}" if cfg.get("tag") else cfg.get("architecture", arch)
        backbone.input_stats = InputStats.from_unit(cfg["mean"], cfg["std"], f"timm {tag}")
    backbone.pretrained = pretrained is not False
    probe_padding(backbone, label)
    return backbone


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """timm's models matching a shell-style ``pattern`` (case-insensitive); with ``pretrained``,
    the ``model.tag`` names that have weights (``vision-pipe backbones``)."""
    import timm

    found = timm.list_pretrained(pattern.lower()) if pretrained else timm.list_models(pattern.lower())
    return sorted(found)


timm_backbone.list_models = list_models  # type: ignore[attr-defined]


@hookimpl
def vision_pipe_stages() -> list[Callable[..., Any]]:
    return [timm_backbone]
