"""Stage contracts: what each kind of stage consumes and produces.

A stage is a typed factory function marked with :func:`stage`. Its parameters
(type hints and defaults) are what the pipeline YAML is validated against; a
parameter named ``context`` (annotated :class:`StageContext`) is not read from
the YAML but filled in by the pipeline with what earlier stages established.

The factory returns an object of the kind's contract:

============== ======================================================================
kind           returns
============== ======================================================================
loading        :class:`Loader`
normalization  :class:`Normalizer` (an ``nn.Module``)
augmentation   an ``albumentations`` transform (``albumentations.BasicTransform``)
backbone       :class:`Backbone` (an ``nn.Module`` with ``feature_info``)
head           :class:`Head` (an ``nn.Module`` owning loss and decoding; metrics from its task)
============== ======================================================================

Samples are plain dicts (see :class:`Sample`); batches are dicts of tensors
(see :class:`Batch`).

(One module, over 400 lines on purpose: it is mostly the contracts' docstrings,
the reference a plugin author reads in one place; the code is a few small classes.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, TypeVar

import numpy as np
from torch import Tensor, nn

from vision_pipe.errors import ChainError, StageError, did_you_mean
from vision_pipe.samples import IGNORE_INDEX

if TYPE_CHECKING:
    import torchmetrics

    from vision_pipe.results import Prediction

#: The kinds of stage, in pipeline order.
KINDS: tuple[str, ...] = ("loading", "normalization", "augmentation", "backbone", "head")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class StageInfo:
    """What :func:`stage` attaches to a factory (as ``factory.__vision_pipe_stage__``)."""

    kind: str
    name: str
    override: bool = False


def stage(kind: str, name: str | None = None, *, override: bool = False) -> Callable[[F], F]:
    """Mark a factory function (or class) as a stage of ``kind`` called ``name``.

    ``name`` defaults to the function's name. ``override=True`` lets this stage
    replace a stage of the same (kind, name) from another plugin instead of
    being an error. The factory is returned unchanged.

    Example::

        @stage("backbone", "tiny")
        def tiny(width: int = 8) -> Backbone: ...
    """

    def mark(factory: F) -> F:
        factory.__vision_pipe_stage__ = StageInfo(kind, name or factory.__name__, override)  # type: ignore[attr-defined]
        return factory

    return mark


# ----------------------------------------------------------------------------
# Context handed to factories
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone produces, as its ``feature_info`` declares it.

    ``name`` is the key in :attr:`Features.maps`; ``channels`` the map's C;
    ``stride`` the input size divided by the map's size (a power of two: 1, 2,
    4, ...): an (H, W) input gives an (ceil(H / stride), ceil(W / stride)) map,
    so a 33 × 33 input gives 17 × 17 at stride 2 and 9 × 9 at stride 4. Heads
    read these at build time (``context.feature_info``) to size their layers;
    the contract check (``vision_pipe.testing.check_backbone``, and the
    pipeline before a run) compares them with what ``forward`` returns.
    """

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class InputStats:
    """The per-channel statistics a backbone's pretrained weights expect their inputs normalized with.

    ``mean`` and ``std``: 3 floats each, R, G, B, in pixel units (images in [0, 255]):
    the weights saw ``(x - mean[c]) / std[c]``. ImageNet's usual ones are mean
    ``(123.675, 116.28, 103.53)``, std ``(58.395, 57.12, 57.375)``; Caffe-style VGG
    weights subtract a mean and keep the 0..255 range (std 1). ``source`` names the
    weights they belong to (for messages), e.g. ``"timm resnet18.a1_in1k"``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def from_unit(cls, mean: Sequence[float], std: Sequence[float], source: str) -> InputStats:
        """From statistics of images in [0, 1] (how timm and torchvision publish them)."""
        m = tuple(float(v) * 255.0 for v in mean)
        d = tuple(float(v) * 255.0 for v in std)
        return cls((m[0], m[1], m[2]), (d[0], d[1], d[2]), source)

    def matches(self, other: InputStats) -> bool:
        """Whether ``other`` has the same mean and std, within 2 % or half a pixel value."""
        pairs = zip((*self.mean, *self.std), (*other.mean, *other.std), strict=True)
        return all(abs(a - b) <= max(0.02 * abs(a), 0.5) for a, b in pairs)

    def describe(self) -> str:
        """``mean [123.7, 116.3, 103.5] std [58.4, 57.1, 57.4]`` (pixel units)."""
        return f"mean [{', '.join(f'{v:.1f}' for v in self.mean)}] std [{', '.join(f'{v:.1f}' for v in self.std)}]"


@dataclass(frozen=True)
class StageContext:
    """What a factory that takes a ``context`` parameter is told about the pipeline.

    Fields are ``None`` until the stage that establishes them is built:
    ``class_names`` after loading; ``feature_info``, ``backbone_input_stats`` after
    the backbone (which is built before the normalization and the head).
    ``restoring`` is True when the pipeline is built to receive a checkpoint's
    state (test, predict, export from a checkpoint): a stage must then not
    download or read weights of its own, as they would be replaced anyway.
    """

    task: str
    seed: int
    input_size: tuple[int, int]  #: (height, width) in pixels of every image fed to the model
    class_names: tuple[str, ...] | None = None
    feature_info: tuple[FeatureInfo, ...] | None = None
    backbone_provides: frozenset[str] = frozenset()  #: capabilities, e.g. {"pool_indices"}
    backbone_name: str | None = None
    #: what the backbone's weights expect (:attr:`Backbone.input_stats`), for a normalization that follows them
    backbone_input_stats: InputStats | None = None
    restoring: bool = False

    @property
    def num_classes(self) -> int:
        """The number of classes; :class:`StageError` before the loader has run."""
        return len(self.classes)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names; :class:`StageError` before the loader has run (a stage that needs
        them is built after it, so this is a bug in how the stage was built, e.g. by hand)."""
        if self.class_names is None:
            raise StageError("the class names are not known yet: the stage must be built after the loader has run")
        return self.class_names

    @property
    def features(self) -> tuple[FeatureInfo, ...]:
        """The backbone's maps, finest first: :class:`StageError` before the backbone is built,
        :class:`ChainError` naming the backbone when it declares none."""
        if self.feature_info is None:
            raise StageError("the backbone's feature maps are not known yet: build the head after the backbone")
        if not self.feature_info:
            raise ChainError(f"backbone '{self.backbone_name}' declares no feature maps")
        return self.feature_info

    def feature(self, name: str, *, param: str = "feature") -> FeatureInfo:
        """The backbone map called ``name``; :class:`ChainError` naming the parameter ``param``
        that asked for it, the backbone's maps with their strides, and the closest names."""
        for info in self.features:
            if info.name == name:
                return info
        names = [info.name for info in self.features]
        listed = ", ".join(f"{info.name} (stride {info.stride})" for info in self.features)
        raise ChainError(
            f"{param}: backbone '{self.backbone_name}' has no map {name!r}; its maps are {listed}."
            + did_you_mean(name, names)
        )


# ----------------------------------------------------------------------------
# Samples and batches
# ----------------------------------------------------------------------------


class Sample(TypedDict, total=False):
    """One sample as a loader produces it (numpy, before any resizing).

    - ``image``: (H, W, 3) uint8, RGB.
    - ``id``: a stable identifier, the file path for files.
    - classification: ``label`` int in [0, num_classes).
    - segmentation: ``mask`` (H, W) int64, class ids; the ignore value is 255.
    - detection: ``boxes`` (N, 4) float32 xyxy pixels (edges: a box covering
      pixel columns 2..5 has x1=2, x2=6); ``labels`` (N,) int64 in
      [0, num_classes); optional ``difficult`` (N,) bool (Pascal VOC's flag:
      such objects are kept for training and ignored by the mAP metric).
    """

    image: np.ndarray
    id: str
    label: int
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


class Batch(TypedDict, total=False):
    """A collated batch as the model sees it.

    - ``image``: (B, 3, H, W) uint8 before normalization; float32 after.
    - ``label``: (B,) int64.  ``mask``: (B, H, W) int64 on the model's device (collated as uint8 when
      the ids fit, converted on the device).
    - ``boxes``: list of B tensors (N_i, 4) float32 xyxy pixels of the model input.
    - ``labels``: list of B tensors (N_i,) int64.
    - ``difficult``: list of B tensors (N_i,) bool (all False when the loader gives none).
    - ``box_targets`` (B, G, 4) float32, ``label_targets`` (B, G) int64 (-1: padding),
      ``difficult_targets`` (B, G) bool: the same targets packed (:func:`vision_pipe.pack_targets`),
      ``G`` the batch's largest count. In training, validation and test these three are on the
      model's device, while the per-image lists stay on the host (as ``meta`` does): a head that
      needs its targets on the device reads the packed ones (no per-image copies or synchronizations).
    - ``meta``: list of B dicts with ``id`` and ``orig_size`` (h, w) of the original image.
    """

    image: Tensor
    label: Tensor
    mask: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    difficult: list[Tensor]
    box_targets: Tensor
    label_targets: Tensor
    difficult_targets: Tensor
    meta: list[dict[str, Any]]


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


class SampleSource(ABC):
    """An indexable, lazily decoded collection of samples (never held whole in memory).

    ``__getitem__`` raises :class:`~vision_pipe.errors.DataError` for a problem
    with *one* sample (its image file is missing or unreadable, an image has no
    mask, an RGB mask where an index mask is expected, an annotation names an
    undeclared category, ...), with a message that names the file (and the
    annotation or line) and says how to fix it. Before training, the pipeline
    reads every sample once (the *pre-flight* pass) and, besides these errors,
    checks what every source must satisfy: image (H, W, 3) uint8; mask (H, W)
    of the image's size with values in [0, num_classes) or 255; boxes finite,
    x1 < x2, y1 < y2, inside [0, W] x [0, H], labels in [0, num_classes). With
    ``data.on_bad_sample: error`` (the default) bad samples stop the run with
    all their messages; with ``skip`` they are left out and listed in the
    run's ``preflight.json`` (their count in ``metrics.json``).
    """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the samples could change (paths, sizes, mtimes, parameters)."""


@dataclass
class LoadedData:
    """What :meth:`Loader.load` returns.

    ``splits`` maps split names to sources. A loader with its own split gives
    ``train``, ``val`` and ``test``; a loader without one gives a single
    ``all`` source, and the pipeline makes a seeded split (``data.split``).
    ``class_colors``: optional (R, G, B) per class (e.g. from a palette PNG or
    a classes file), used when drawing predictions.
    ``category_ids``: the dataset's own id of each class (COCO ``category_id`` of
    label ``i``), written in COCO results; ``image_ids``: the dataset's own image
    id by image path (resolved, as :func:`vision_pipe.tasks.coco_results.path_key`
    makes it), written in COCO results for the dataset's images.
    """

    class_names: list[str]
    splits: Mapping[str, SampleSource]
    class_colors: list[tuple[int, int, int]] | None = None
    category_ids: list[int] | None = None
    image_ids: dict[str, Any] | None = None


class Loader(ABC):
    """A loading stage: reads a source and produces samples for some tasks."""

    #: The tasks whose targets this loader can produce.
    tasks: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def load(self, task: str) -> LoadedData:
        """Index the source (cheaply: no decoding of every image) for ``task``.

        Raise :class:`~vision_pipe.errors.DataError` naming the file for a
        problem with the whole source (a missing folder, an unreadable
        annotation file, a folder without images): these always stop the run.
        Problems with single samples are raised by the source's ``__getitem__``
        (see :class:`SampleSource`) so that ``on_bad_sample: skip`` can skip them.
        """


# ----------------------------------------------------------------------------
# normalization
# ----------------------------------------------------------------------------


class Normalizer(nn.Module, ABC):
    """A normalization stage, applied per batch on the accelerator.

    Its fitted statistics are buffers, so they travel in checkpoints and in
    the on-disk cache (its ``state_dict``).
    """

    #: Whether :meth:`fit` must run on the training split before training.
    #:
    #: True: ``Pipeline.fit`` calls :meth:`fit` once, after the pre-flight pass and
    #: before the first epoch, on the training split resized to ``data.input_size``
    #: (without augmentation); the fitted ``state_dict`` is cached on disk by a
    #: fingerprint of the training samples, the input size and the stage's
    #: parameters, so a later run on the same data loads it instead of fitting
    #: again. ``test``/``predict`` after loading a checkpoint take the statistics
    #: from the checkpoint and never fit. False: :meth:`fit` is never called and
    #: :meth:`forward` must work with the statistics set in ``__init__`` (e.g.
    #: given in the YAML). May be set per instance (``self.needs_fit = ...``) when
    #: it depends on the parameters.
    needs_fit: ClassVar[bool] = True

    def fit(self, images: Iterable[np.ndarray]) -> None:
        """Fit statistics in one streaming pass over (H, W, 3) uint8 RGB images of the input size.

        ``images`` is a one-pass iterator (do not hold it whole in memory); it may be
        empty, which should be a :class:`~vision_pipe.errors.StageError` saying so.
        """

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) float32 in [0, 255], RGB → normalized (B, 3, H, W) float32, finite.

        Keeps the shape (any H, W the model is given, also sizes other than the
        input size at prediction time), device and dtype float32; runs per batch
        on the accelerator, so no Python loop over images.
        """

    @property
    def input_stats(self) -> InputStats | None:
        """The per-channel statistics this normalizer applies, when it is ``(x - mean[c]) / std[c]``
        with statistics known before any fit (default None: unknown). The pipeline compares them with a
        pretrained backbone's :attr:`Backbone.input_stats` and warns when they differ."""
        return None

    def save_artifacts(self, plots_dir: Path) -> list[Path]:
        """Write pictures of the fitted statistics (e.g. the mean image); return the paths."""
        return []


# ----------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------


@dataclass
class Features:
    """What a backbone returns.

    ``maps``: feature maps by name, in the order of ``feature_info`` (finest to
    coarsest), each a (B, C, ceil(H/stride), ceil(W/stride)) float tensor with the
    name, C and stride that ``feature_info`` declares (sizes round up for odd
    inputs: 33 px at stride 4 gives 9). ``pool_indices``: for backbones that provide
    ``"pool_indices"``, the max-pooling indices keyed by the name of the map the
    pooling *produced*, as ``(indices, input_size)`` where ``input_size`` is the
    (H, W) of the pooling's input — what ``max_unpool2d`` needs as ``output_size``.
    """

    maps: dict[str, Tensor]
    pool_indices: dict[str, tuple[Tensor, tuple[int, int]]] = field(default_factory=dict)


class Backbone(nn.Module, ABC):
    """A backbone stage: (B, 3, H, W) float images → :class:`Features`."""

    #: The maps :meth:`forward` returns, finest first (set in ``__init__``).
    feature_info: list[FeatureInfo]
    #: Capabilities beyond feature maps. Known: ``"pool_indices"`` — :meth:`forward`
    #: fills :attr:`Features.pool_indices` (needed by the ``fcn`` head's
    #: ``upsample: unpool``). Heads read it at build time as
    #: ``context.backbone_provides`` and raise a ChainError when a capability they
    #: need is missing; the contract check verifies that a backbone providing
    #: ``pool_indices`` returns them. Other names are free for plugins to agree on.
    provides: frozenset[str] = frozenset()
    #: The input statistics of the weights this architecture is published with (timm's
    #: ``pretrained_cfg``, torchvision's weights transforms), or None. A normalization
    #: ``{name: pretrained}`` applies them.
    input_stats: InputStats | None = None
    #: Whether the backbone holds pretrained weights (set by the stage when it loaded them):
    #: the pipeline then warns when the normalization does not apply :attr:`input_stats`.
    pretrained: bool = False

    @abstractmethod
    def forward(self, images: Tensor) -> Features:
        """(B, 3, H, W) float32 images, as the normalization stage left them (without
        one: pixel values in [0, 255]) → :class:`Features`.

        Any H, W ≥ 1 (not only the pipeline's input size): every map of
        ``feature_info`` is present, under its name, in that order, with its
        channels and size (ceil(H / stride), ceil(W / stride)); same device as the
        input, float (float32, or the autocast dtype under mixed precision);
        differentiable with respect to the parameters. Return a :class:`Features`,
        not a bare Tensor.
        """


# ----------------------------------------------------------------------------
# head
# ----------------------------------------------------------------------------


class Head(nn.Module, ABC):
    """A head stage: features → task outputs; owns forward, loss and decoding.

    Evaluation belongs to the head's task (:mod:`vision_pipe.tasks`): the default
    :meth:`make_metrics`, :meth:`update_metrics` and :meth:`summarize` use the
    task's metrics, summaries and plots, fed with :meth:`evaluation_outputs`. So a
    new head of an existing task implements ``forward``, ``loss`` and ``decode``
    (and ``evaluation_outputs`` when its raw outputs are not the task's evaluation
    form), sets :attr:`num_classes`, and inherits the rest. A head may still
    override the three metric methods with its own.
    """

    #: The task this head solves (one of :data:`vision_pipe.tasks.TASKS`).
    task: ClassVar[str]
    #: The number of classes; the task's metrics need it (set it in ``__init__``).
    num_classes: int
    #: The target value the task's metrics ignore (a segmentation mask's unlabelled pixels).
    ignore_index: int = IGNORE_INDEX

    @abstractmethod
    def forward(self, features: Features) -> Any:
        """Raw outputs (e.g. logits (B, num_classes))."""

    @abstractmethod
    def loss(self, outputs: Any, batch: Batch) -> dict[str, Tensor]:
        """Loss terms; the key ``"loss"`` is the one optimized."""

    def training_inputs(self, images: Tensor) -> Tensor:
        """The images a training step feeds to the model: (B, 3, H, W) uint8 or float in [0, 255] in,
        the same shape and scale out (default: ``images`` unchanged).

        Called in training steps only, before the normalization; :meth:`loss` still gets the batch as it
        was (a denoising autoencoder corrupts its inputs here and compares against the clean images).
        """
        return images

    def evaluation_outputs(self, outputs: Any, batch: Batch) -> Any:
        """Raw ``outputs`` in the task's evaluation form (default: unchanged).

        classification: logits (B, C); segmentation: logits (B, C, H, W);
        detection: a list of B dicts ``{"boxes": (K, 4) float xyxy in pixels of the
        model input, "scores": (K,), "labels": (K,) int64 in 0..C-1}``.
        """
        return outputs

    def export_outputs(self, outputs: Any, input_size: tuple[int, int]) -> dict[str, Tensor]:
        """Raw ``outputs`` → what an exported model returns, by output name, in order (``vision-pipe export``).

        ``input_size``: the (H, W) of the model input (e.g. to give boxes in its pixels).

        Traced into the exported graph, so tensor operations only (no Python loop over
        images, no ``.item()``/numpy). Default, from the task: classification
        ``{"probabilities": softmax (B, C) float32}``; segmentation ``{"class_ids":
        argmax (B, H, W) int64}`` at the input size. A head whose raw outputs are not
        the task's logits (e.g. a detector: ``boxes`` (B, K, 4) xyxy in input pixels,
        ``scores`` (B, K), ``labels`` (B, K) int64 after per-class NMS, padded to K, and
        ``count`` (B,) int64) implements this to be exportable; without it, exporting raises
        ``NotImplementedError``, which the export turns into a message naming the head.
        """
        from vision_pipe.tasks import get_task

        return get_task(self.task).export_outputs(outputs)

    def make_metrics(self, **options: Any) -> torchmetrics.MetricCollection:
        """A fresh metric collection (one per split is made): the task's, for :attr:`num_classes`.

        ``options``: the task's metric options from the YAML's ``metrics:`` section (e.g. ``backend``
        of ``metrics.detection``); given only when they differ from the defaults."""
        num_classes = getattr(self, "num_classes", None)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise StageError(
                f"head {type(self).__name__} ({self.task}) uses its task's metrics, which need the number of "
                "classes: set self.num_classes in __init__ (or override make_metrics, update_metrics and summarize)"
            )
        from vision_pipe.tasks import get_task  # the tasks build on these contracts: imported when used

        return get_task(self.task).make_metrics(num_classes, ignore_index=self.ignore_index, **options)

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Any, batch: Batch) -> None:
        """Feed one batch to ``metrics``: :meth:`evaluation_outputs` of ``outputs``, to the task's metrics."""
        from vision_pipe.tasks import get_task

        get_task(self.task).update_metrics(metrics, self.evaluation_outputs(outputs, batch), batch)

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """Turn ``metrics.compute()`` into flat scalars (keys without split prefix,
        e.g. ``acc``); write pictures/CSVs into ``plots_dir`` when it is given (the task's)."""
        from vision_pipe.tasks import get_task

        return get_task(self.task).summarize(computed, class_names, plots_dir)

    @abstractmethod
    def decode(self, outputs: Any, batch: Batch, class_names: Sequence[str]) -> Sequence[Prediction]:
        """Predictions for each image (a list, of the task's prediction type), in the original image's
        pixel coordinates."""


__all__ = [
    "KINDS",
    "Backbone",
    "Batch",
    "FeatureInfo",
    "Features",
    "Head",
    "LoadedData",
    "Loader",
    "Normalizer",
    "Sample",
    "SampleSource",
    "StageContext",
    "StageInfo",
    "stage",
]
