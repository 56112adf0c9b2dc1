"""The kit's reference ("boring") stages, the plugin that registers them, and :func:`load_plugin`.

Owns :class:`BoringBackbone` / :func:`boring_backbone` and :class:`BoringLoader`
/ :func:`boring_loader` — the smallest stages that keep their contracts, as
Lightning's ``BoringModel`` — :class:`BoringPlugin`, and :func:`load_plugin`,
a plugin manager holding one plugin alone for a plugin's own tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import metadata
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from vision_pipe.hookspecs import hookimpl
from vision_pipe.plugins import ENTRY_POINT_GROUP, PluginManager
from vision_pipe.stages import (
    Backbone,
    FeatureInfo,
    Features,
    LoadedData,
    Loader,
    Sample,
    SampleSource,
    stage,
)
from vision_pipe.tasks import TASKS

# ----------------------------------------------------------------------------
# Reference stages ("boring" ones: the smallest that keep the contracts)
# ----------------------------------------------------------------------------


class BoringBackbone(Backbone):
    """``stages`` × (3×3 conv, ReLU, 2×2 max pooling): maps ``s1``, ``s2``, ... at strides 2, 4, ...

    Channels are ``width``, 2·width, ...; the pooling indices are provided for
    unpooling heads. Pooling rounds sizes up (``ceil_mode``), as the contract asks.
    """

    provides = frozenset({"pool_indices"})

    def __init__(self, width: int = 4, stages: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.feature_info = []
        channels = 3
        for i in range(stages):
            out = width * 2**i
            self.convs.append(nn.Conv2d(channels, out, 3, padding=1))
            self.feature_info.append(FeatureInfo(name=f"s{i + 1}", channels=out, stride=2 ** (i + 1)))
            channels = out
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True, return_indices=True)

    def forward(self, images: Tensor) -> Features:
        """(B, 3, H, W) float → maps finest first, with their pooling indices."""
        maps: dict[str, Tensor] = {}
        indices: dict[str, tuple[Tensor, tuple[int, int]]] = {}
        x = images
        for conv, info in zip(self.convs, self.feature_info, strict=True):
            x = torch.relu(conv(x))
            size = (int(x.shape[-2]), int(x.shape[-1]))
            x, idx = self.pool(x)
            maps[info.name] = x
            indices[info.name] = (idx, size)
        return Features(maps=maps, pool_indices=indices)


@stage("backbone", "boring")
def boring_backbone(width: Annotated[int, Field(ge=1)] = 4, stages: Annotated[int, Field(ge=1)] = 4) -> BoringBackbone:
    """The smallest backbone that keeps the contract (vision_pipe.testing's reference)."""
    return BoringBackbone(width, stages)


class BoringSource(SampleSource):
    """``num_images`` images (size × size) with one rectangle each, drawn from (seed, index)."""

    def __init__(self, task: str, num_images: int, size: int, seed: int, num_classes: int) -> None:
        self.task, self.num_images, self.size, self.seed = task, num_images, size, seed
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        image = rng.integers(0, 80, (self.size, self.size, 3), dtype=np.uint8)
        cls = index % self.num_classes
        x1, y1 = (int(v) for v in rng.integers(0, self.size // 2, 2))
        x2, y2 = x1 + self.size // 3, y1 + self.size // 3
        image[y1:y2, x1:x2] = 255 if cls == 0 else 160
        sample: Sample = {"image": image, "id": f"boring:{index}"}
        if self.task == "classification":
            sample["label"] = cls
        elif self.task == "segmentation":
            mask = np.zeros((self.size, self.size), np.int64)
            mask[y1:y2, x1:x2] = cls + 1
            sample["mask"] = mask
        elif self.task == "detection":
            sample["boxes"] = np.array([[x1, y1, x2, y2]], np.float32)
            sample["labels"] = np.array([cls], np.int64)
        return sample  # reconstruction: the image and nothing else

    def fingerprint(self) -> str:
        text = f"boring:{self.task}:{self.num_images}:{self.size}:{self.seed}"
        return hashlib.sha256(text.encode()).hexdigest()


class BoringLoader(Loader):
    """In-memory samples for every task: classes ``a`` and ``b`` (segmentation adds ``background`` first;
    reconstruction has none)."""

    tasks = TASKS

    def __init__(self, num_images: int = 8, size: int = 32, seed: int = 0) -> None:
        self.num_images, self.size, self.seed = num_images, size, seed

    def load(self, task: str) -> LoadedData:
        names = {"segmentation": ["background", "a", "b"], "reconstruction": []}.get(task, ["a", "b"])
        source = BoringSource(task, self.num_images, self.size, self.seed, num_classes=2)
        return LoadedData(class_names=names, splits={"all": source})


@stage("loading", "boring")
def boring_loader(num_images: int = 8, size: int = 32, seed: int = 0) -> BoringLoader:
    """The smallest loader that keeps the contract, for every task (vision_pipe.testing's reference)."""
    return BoringLoader(num_images, size, seed)


class BoringPlugin:
    """A plugin object with the boring stages: ``manager.register(BoringPlugin(), name="boring")``."""

    @hookimpl
    def vision_pipe_stages(self) -> list[Callable[..., Any]]:
        return [boring_loader, boring_backbone]


# ----------------------------------------------------------------------------
# Loading one plugin alone
# ----------------------------------------------------------------------------


def load_plugin(plugin: Any, /) -> PluginManager:
    """A plugin manager holding just ``plugin``: no other entry point is loaded.

    ``plugin`` is a module (or plugin object), a module path (``"my_package.stages"``) or
    the name of an installed entry point of the ``vision_pipe.plugins`` group. Its errors
    raise (:class:`~vision_pipe.errors.PluginError`). Use it in a plugin's own tests::

        manager = load_plugin("my_package.stages")
        check_stage(manager.registry.get("backbone", "tiny"), width=4)
    """
    manager = PluginManager(autoload=False)
    if isinstance(plugin, str):
        if any(ep.name == plugin for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)):
            manager.load_entry_points(names=[plugin], warn=False)
            if plugin in manager.load_errors:
                raise manager.load_errors[plugin]
        else:
            manager.load_module(plugin)
    else:
        manager.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
    return manager
