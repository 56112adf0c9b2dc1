"""Where the SSD head predicts (build time): which backbone maps, which extra layers, which box ratios.

Not a plugin (no hooks): :mod:`vision_pipe_plugins.head.ssd` plans its maps with
these functions when the stage is built, so that a chain the backbone cannot
serve (an unknown map, maps out of stride order, more maps than the input size
allows) is a :class:`~vision_pipe.ChainError` before any training, saying what
would work.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from vision_pipe import ChainError, FeatureInfo, StageContext, StageError

#: Without ``feature_maps``, the head predicts on the backbone maps of at least this stride
#: (SSD300's first map, conv4_3, has stride 8), or on the coarsest map if none has.
DEFAULT_MIN_STRIDE = 8


@dataclass(frozen=True)
class MapSpec:
    """One map the head predicts on: a backbone map, or an extra layer's output (``extra=True``).

    ``size`` is (h, w) in cells for the pipeline's input size; ``channels`` its depth.
    """

    name: str
    channels: int
    size: tuple[int, int]
    extra: bool = False


def extra_layer_geometry(size: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) along one axis of an extra layer's 3×3 conv for an input of ``size`` cells.

    Larger than 3: stride 2, padding 1 → ``ceil(size / 2)``; 2 or 3: a valid conv of kernel
    ``size`` → 1 (SSD300's last layer takes 3×3 to 1×1 this way); 1: a 1×1 conv → 1.
    """
    if size > 3:
        return 3, 2, 1
    return size, 1, 0


def extra_output_size(size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) an extra layer makes of an (h, w) map: 38 → 19 → 10 → 5 → 3 → 1."""
    out = []
    for s in size:
        k, st, p = extra_layer_geometry(s)
        out.append((s + 2 * p - k) // st + 1)
    return out[0], out[1]


def backbone_maps(context: StageContext, feature_maps: Sequence[str] | None) -> list[FeatureInfo]:
    """The backbone maps the head predicts on, finest first: ``feature_maps``, or by default those
    of stride >= :data:`DEFAULT_MIN_STRIDE` (the coarsest map if none is). :class:`ChainError` for
    an unknown map or maps out of stride order."""
    if feature_maps is None:
        return [info for info in context.features if info.stride >= DEFAULT_MIN_STRIDE] or [context.features[-1]]
    chosen = [context.feature(name, param="feature_maps") for name in feature_maps]
    strides = [info.stride for info in chosen]
    if any(a >= b for a, b in itertools.pairwise(strides)):
        order = sorted(set(chosen), key=lambda i: i.stride)
        raise ChainError(
            f"head 'ssd': feature_maps must list distinct maps of backbone '{context.backbone_name}' finest first "
            f"(increasing stride), got strides {strides}; e.g. {[i.name for i in order]}"
        )
    return chosen


def plan_maps(
    context: StageContext,
    feature_maps: Sequence[str] | None,
    num_maps: int | None,
    extra_channels: int | Sequence[int],
) -> list[MapSpec]:
    """The maps the head predicts on at the pipeline's ``input_size`` (h, w) pixels, finest first: the
    :func:`backbone_maps`, then extra layers up to ``num_maps`` maps (``None``: until a map is 1×1),
    each of ``extra_channels`` channels (one number for all, or one per extra layer).

    Raises :class:`ChainError` when the backbone cannot provide them, saying what would work, and
    when ``extra_channels`` lists another number of extra layers than planned (a :class:`StageError`
    when ``feature_maps`` and ``num_maps`` fix that number alone).
    """
    chosen = backbone_maps(context, feature_maps)
    backbone_name, input_size = context.backbone_name, context.input_size
    h, w = input_size
    specs = [MapSpec(i.name, i.channels, (math.ceil(h / i.stride), math.ceil(w / i.stride))) for i in chosen]
    if num_maps is not None and num_maps < len(specs):
        raise ChainError(
            f"head 'ssd': num_maps is {num_maps} but {len(specs)} maps of backbone '{backbone_name}' are used "
            f"({[s.name for s in specs]}{'' if feature_maps else f', its maps of stride >= {DEFAULT_MIN_STRIDE}'}); "
            f"set num_maps >= {len(specs)}, or list at most {num_maps} of them in feature_maps"
        )
    sizes = [s.size for s in specs]  # then the extra layers' (h, w)
    while (num_maps is None and sizes[-1] != (1, 1)) or (num_maps is not None and len(sizes) < num_maps):
        if sizes[-1] == (1, 1) and num_maps is not None:
            raise ChainError(
                f"head 'ssd': num_maps {num_maps} needs {num_maps - len(chosen)} extra layers after map "
                f"'{chosen[-1].name}' of backbone '{backbone_name}', but with input_size {list(input_size)} "
                f"the maps reach 1×1 after {len(sizes) - len(chosen)} ({sizes}); "
                f"use num_maps <= {len(sizes)} (or leave it out: down to 1×1), a larger input_size, "
                f"or finer feature_maps"
            )
        sizes.append(extra_output_size(sizes[-1]))
    channels = _extra_channels(
        extra_channels, sizes[len(chosen) :], chosen[-1].name, fixed=None not in (feature_maps, num_maps)
    )
    extras = [
        MapSpec(f"extra{i}", c, size, True)
        for i, (c, size) in enumerate(zip(channels, sizes[len(chosen) :], strict=True), start=1)
    ]
    return specs + extras


def _extra_channels(
    extra_channels: int | Sequence[int], sizes: Sequence[tuple[int, int]], after: str, *, fixed: bool
) -> list[int]:
    """One channel count per extra layer of output ``sizes``: ``extra_channels`` repeated, or the list
    itself when it has one per layer; else a :class:`StageError` (``fixed``: the number of extra layers
    follows from the parameters alone) or a :class:`ChainError` (it follows from the backbone and input size)."""
    if isinstance(extra_channels, int):
        return [extra_channels] * len(sizes)
    if len(extra_channels) != len(sizes):
        plan = ", ".join(f"{h}×{w}" for h, w in sizes) or "none"
        message = (
            f"head 'ssd': extra_channels lists {len(extra_channels)} channel counts but the head adds "
            f"{len(sizes)} extra layers after map '{after}' ({plan}); list {len(sizes)} numbers, give one number "
            f"for all of them, or change num_maps"
        )
        raise StageError(message) if fixed else ChainError(message)
    return [int(c) for c in extra_channels]


def resolve_aspect_ratios(
    aspect_ratios: list[float] | list[list[float]] | None, specs: Sequence[MapSpec], num_maps: int | None
) -> tuple[tuple[float, ...], ...]:
    """One tuple of ratios (besides 1) per map: ``None`` → ``(2,)`` each, a flat list → the same for each."""
    if aspect_ratios is None:
        return tuple((2.0,) for _ in specs)
    if all(not isinstance(r, (list, tuple)) for r in aspect_ratios):
        ratios = tuple(tuple(float(r) for r in aspect_ratios) for _ in specs)  # type: ignore[arg-type]
    else:
        ratios = tuple(tuple(float(r) for r in per_map) for per_map in aspect_ratios)  # type: ignore[union-attr]
    if len(ratios) != len(specs):
        plan = ", ".join(f"{s.name} {s.size[0]}×{s.size[1]}" for s in specs)
        message = (
            f"head 'ssd': aspect_ratios has {len(ratios)} lists but the head predicts on {len(specs)} maps "
            f"({plan}); give {len(specs)} lists, or one flat list (e.g. [2, 3]) for every map"
        )
        raise StageError(message) if num_maps is not None else ChainError(message)
    return ratios
