"""Syncing per-sample metric states across processes with one collective.

torchmetrics gathers a list state (``dist_reduce_fx=None`` or ``"cat"``) one
tensor at a time — one ``all_gather`` per list element. Metrics whose lists hold
one entry per evaluated image (``MeanAveragePrecision``: boxes, scores, labels per
image) then issue as many collectives as a process has images, and under DDP the
processes' counts differ by one whenever a split does not divide by the number of
processes: gloo stops with a collective mismatch, NCCL hangs.

:class:`SyncListsOnce` replaces that by a single ``all_gather_object`` of all the
list states of a process. The gathered entries are put back in the order a single
process would have seen them: the evaluation sampler
(:func:`vision_pipe.distributed.evaluation_sampler`) gives process ``r`` of ``W``
the samples ``r, r + W, r + 2W, …``, so interleaving the processes' lists restores
the split's order, and the computed metric equals a one-process evaluation exactly
(COCO evaluation breaks score ties by image order). Lists that do not have that
shape are concatenated in rank order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def interleave(lists: Sequence[Sequence[Any]]) -> list[Any]:
    """Process ``r``'s ``k``-th entry at position ``k * W + r`` (``W = len(lists)``) when the lengths
    are those of an interleaved split (non-increasing by rank, differing by at most one); otherwise
    the lists one after another."""
    lengths = [len(x) for x in lists]
    shaped = all(a >= b for a, b in zip(lengths, lengths[1:], strict=False)) and (
        not lengths or lengths[0] - lengths[-1] <= 1
    )
    if not shaped:
        return [item for x in lists for item in x]
    world = len(lists)
    return [lists[i % world][i // world] for i in range(sum(lengths))]


def gather_in_order(items: list[Any]) -> list[Any]:
    """Every process's ``items`` (per-sample objects of an evaluation, picklable) in the split's order, with one
    ``all_gather_object`` (see :func:`interleave`); ``items`` itself when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return interleave(gathered)


def _to(value: Any, device: torch.device | str) -> Any:
    """A tensor (or a tuple of them, as segmentation masks are kept) on ``device``."""
    if isinstance(value, Tensor):
        return value.detach().to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


class SyncListsOnce:
    """Mixin (before the torchmetrics ``Metric`` class) for metrics whose states are all lists of
    per-sample tensors: their ``_sync_dist`` is one ``torch.distributed.all_gather_object``."""

    _reductions: dict[str, Any]
    process_group: Any
    device: torch.device

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        import torch.distributed as dist

        group = process_group or self.process_group
        names = list(self._reductions)
        for name in names:
            if not isinstance(getattr(self, name), list):
                raise TypeError(f"{type(self).__name__}.{name} is not a list state; SyncListsOnce syncs lists only")
        mine = {name: [_to(t, "cpu") for t in getattr(self, name)] for name in names}
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, mine, group=group)
        for name in names:
            merged = interleave([g[name] for g in gathered])
            setattr(self, name, [_to(t, self.device) for t in merged])
