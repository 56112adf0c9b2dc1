"""A testing kit for plugin authors: contract checks and minimal reference stages.

Each ``check_*`` function builds a stage, runs it on tiny synthetic inputs and
raises :class:`~vision_pipe.errors.ContractError` — naming the stage and the
rule it broke — when the stage does not keep its kind's contract
(:mod:`vision_pipe.stages`). They need no pytest and return the built stage, so
a plugin's own tests are one line each::

    from vision_pipe.testing import check_backbone, check_loader

    def test_tiny_backbone():
        check_backbone(my_package.stages.tiny, width=8)

    def test_my_loader(tmp_path):
        check_loader(my_package.stages.my_loader, "classification", root=tmp_path / "data")

``stage`` may be a factory marked with :func:`vision_pipe.stage`, a registry
entry (``manager.registry.get(kind, name)``) or an already built stage;
keyword arguments other than the check's own options are the stage's
parameters. :func:`check_stage` checks a registry entry of any kind.

What is checked:

- loading: every task it declares loads; class names, splits, fingerprints;
  samples have (H, W, 3) uint8 images and targets of the declared schema.
- normalization: fits on a one-pass stream of images; forward keeps the shape,
  gives finite float32; fitted statistics travel in ``state_dict``.
- augmentation: on a 32 px image with an object, its mask and its box, the
  image stays uint8 RGB, the mask keeps class ids and follows the image, the
  box follows the mask.
- backbone: ``feature_info`` is well formed; maps have the declared names,
  channels and strides (also for odd input sizes); gradients flow.
- head: the loss is a finite scalar whose gradients reach the backbone;
  metrics, summaries and decoded predictions have the documented form.

The reference stages :func:`boring_loader` (:class:`BoringLoader`) and
:func:`boring_backbone` (:class:`BoringBackbone`) — as Lightning's
``BoringModel`` — are the smallest stages that pass; start from them, or use
them to test a head or a normalization alone. Register them with
``manager.register(BoringPlugin(), name="boring")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vision_pipe.errors import ContractError
from vision_pipe.registry import StageEntry
from vision_pipe.testing._boring import (
    BoringBackbone,
    BoringLoader,
    BoringPlugin,
    boring_backbone,
    boring_loader,
    load_plugin,
)

# The constants are importable from here, as before the split, but stay out of __all__.
from vision_pipe.testing._build import KIT_CLASSES  # noqa: F401
from vision_pipe.testing._data import MIN_ALIGNMENT, MIN_BOX_IOU, check_augmentation, check_loader, check_normalization  # noqa: F401
from vision_pipe.testing._export import check_export
from vision_pipe.testing._model import check_backbone, check_head, make_batch

__all__ = [
    "BoringBackbone",
    "BoringLoader",
    "BoringPlugin",
    "boring_backbone",
    "boring_loader",
    "check_augmentation",
    "check_backbone",
    "check_export",
    "check_head",
    "check_loader",
    "check_normalization",
    "check_stage",
    "load_plugin",
    "make_batch",
]

# ----------------------------------------------------------------------------
# any kind
# ----------------------------------------------------------------------------

_CHECKS: dict[str, Callable[..., Any]] = {
    "loading": check_loader,
    "normalization": check_normalization,
    "augmentation": check_augmentation,
    "backbone": check_backbone,
    "head": check_head,
}


def check_stage(entry: Any, /, **params: Any) -> Any:
    """Check a registry entry (or a marked factory) with the check of its kind; returns the built stage.

    ``params`` are the stage's parameters (and the kind's check options).
    Example: ``check_stage(manager.registry.get("backbone", "tiny"), width=4)``.
    """
    kind = (
        entry.kind
        if isinstance(entry, StageEntry)
        else getattr(getattr(entry, "__vision_pipe_stage__", None), "kind", None)
    )
    if kind not in _CHECKS:
        raise ContractError(f"{entry!r} is neither a registry entry nor a factory marked with @vision_pipe.stage")
    return _CHECKS[kind](entry, **params)
