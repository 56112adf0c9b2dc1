"""A torchmetrics metric that keeps the first few images of an evaluation split, to picture them.

The reconstruction task (:mod:`vision_pipe.tasks.reconstruction`) shows its inputs next to the
head's outputs in ``plots/``; :meth:`vision_pipe.stages.Head.summarize` only sees computed
metrics, so the images travel as a metric state (gathered across processes like any other).
Imports torchmetrics at module level: import this module where the metric is made.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class FirstExamples(Metric):
    """Keeps the first ``count`` examples given to :meth:`update` as rows of images.

    :meth:`update` takes ``rows``: tensors (B, 3, H, W) of the same shape (e.g. input, output);
    :meth:`compute` returns (N, R, 3, H, W) float32 on the CPU, N ≤ ``count`` examples (per process
    gathered, so up to ``count`` × processes in a multi-process run), R rows each.
    """

    full_state_update = False
    higher_is_better = None
    examples: list[Tensor]

    def __init__(self, count: int = 8) -> None:
        super().__init__()
        self.count = count
        self.add_state("examples", default=[], dist_reduce_fx="cat")

    def update(self, *rows: Tensor) -> None:
        kept = sum(int(t.shape[0]) for t in self.examples)
        if kept >= self.count or not rows:
            return
        stacked = torch.stack([r.detach().float() for r in rows], dim=1)  # (B, R, 3, H, W)
        self.examples.append(stacked[: self.count - kept].cpu())

    def compute(self) -> Tensor:
        if not self.examples:
            return torch.zeros(0, 0, 3, 0, 0)
        return dim_zero_cat(self.examples).cpu()
