"""The :class:`Task` base class: what the pipeline knows about a task, besides what a head does.

A head owns forward, loss and decoding. Everything else that depends only on
the task — the sample contract, the albumentations targets, tensors and
collation of the targets, the prediction type, metrics with their summaries
and plots, drawing and writing predictions — is one :class:`Task` object per
task (:mod:`vision_pipe.tasks.classification`, ``.segmentation``,
``.detection``), looked up by name with :func:`vision_pipe.tasks.get_task`.
So a new head of an existing task inherits evaluation and rendering, and the
core has no ``if task == ...`` branches.

The base class itself is the "images only" task used at prediction time
(:data:`IMAGES_ONLY`): samples without targets, nothing to evaluate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vision_pipe.drawing import upscale
from vision_pipe.results import Prediction
from vision_pipe.samples import IGNORE_INDEX, check_image

if TYPE_CHECKING:
    import albumentations as A
    import torchmetrics
    from torch import Tensor

    from vision_pipe.config import BoxRules
    from vision_pipe.tasks.coco_results import CocoIds


class Task:
    """One task's behaviour outside the head. Subclasses set :attr:`name` and override what they need.

    Data side (in DataLoader workers): :meth:`check_sample` (the sample
    contract), :meth:`compose` (the albumentations ``Compose`` with the task's
    targets), :meth:`transform_inputs` (a sample's targets as the Compose's
    keyword arguments), :meth:`transformed_targets` (the Compose's output as
    tensors), :meth:`collate_targets` (a batch's targets).

    Evaluation (a head's default ``make_metrics`` / ``update_metrics`` /
    ``summarize`` delegate here): :meth:`make_metrics`, :meth:`update_metrics`
    fed with the head's ``evaluation_outputs``, :meth:`summarize`.

    Predictions: :attr:`prediction_type`, :meth:`draw`, :meth:`write_prediction`
    (files of one prediction), :meth:`write_predictions` (files of all of them),
    :meth:`describe` (one line for the CLI).

    Runs and their reports (:mod:`vision_pipe.run_table`, :mod:`vision_pipe.report`): :attr:`main_metrics`,
    :attr:`per_class_metrics`, :attr:`report_plots`, :meth:`grade` (a test prediction against its sample).
    """

    #: The task's name, as in a pipeline's ``task:``.
    name: ClassVar[str] = "images"
    #: The class of the predictions a head of this task decodes.
    prediction_type: ClassVar[type[Prediction]] = Prediction
    #: Whether :meth:`class_scores` gives one score per class and image (what class saliency maps need).
    has_class_scores: ClassVar[bool] = False
    #: The keys of a sample's (and a batch's) targets; the first one tells the task of a collated item.
    target_keys: ClassVar[tuple[str, ...]] = ()
    #: The summary's main metrics (``vision-pipe runs`` shows ``test/<name>``; the first one is drawn by ``compare``).
    main_metrics: ClassVar[tuple[str, ...]] = ()
    #: The summary's per-class metrics (``<name>/<class>`` keys): the columns of a report's per-class table.
    per_class_metrics: ClassVar[tuple[str, ...]] = ()
    #: The pictures :meth:`summarize` writes that a report shows (file names in the plots folder).
    report_plots: ClassVar[tuple[str, ...]] = ()
    #: Whether the task's data has classes (a loader's ``class_names`` is then a non-empty list).
    has_classes: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"<task {self.name!r}>"

    # -- samples ---------------------------------------------------------------

    def check_sample(self, sample: Mapping[str, Any], num_classes: int) -> None:
        """Raise :class:`~vision_pipe.errors.DataError` naming the sample if it breaks the contract
        (:mod:`vision_pipe.samples`): ``image`` (H, W, 3) uint8 and the task's targets (:meth:`check_targets`).

        The ``id`` only names the sample here; the testing kit also checks it is a str (``samples.check_id``).
        """
        sample_id = str(sample.get("id", "?"))
        image = check_image(sample.get("image"), sample_id)
        self.check_targets(sample, (int(image.shape[0]), int(image.shape[1])), num_classes, sample_id)

    def check_targets(self, sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
        """Check the task's targets of a sample whose image is ``size`` (H, W) pixels."""

    # -- per-sample transform and collation --------------------------------------

    def compose(self, transforms: Sequence[A.BasicTransform], boxes: BoxRules | None = None) -> A.Compose:
        """One ``albumentations.Compose`` of ``transforms`` with the task's targets.

        ``boxes``: the rules that drop boxes after a geometric transform (detection; ``None``: drop none).
        """
        import albumentations as A

        return A.Compose(list(transforms))

    def transform_inputs(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The sample's targets as keyword arguments of :meth:`compose`'s transform (besides ``image``)."""
        return {}

    def transformed_targets(self, sample: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
        """The targets of one transformed sample (``out``, the Compose's output): tensors, or plain values
        that :meth:`collate_targets` makes into one tensor per batch (cheaper for scalars such as a label)."""
        return {}

    def collate_targets(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The targets of a batch from the items :meth:`transformed_targets` made (see :class:`~vision_pipe.Batch`)."""
        return {}

    def random_targets(
        self, rng: np.random.Generator, batch_size: int, input_size: tuple[int, int], num_classes: int
    ) -> dict[str, Any]:
        """Random targets of a batch of ``batch_size`` images of ``input_size`` (the testing kit's ``make_batch``)."""
        return {}

    # -- evaluation ------------------------------------------------------------

    def make_metrics(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torchmetrics.MetricCollection:
        """A fresh metric collection (torchmetrics is imported here: it takes seconds to import)."""
        raise NotImplementedError(f"task {self.name!r} has no metrics")

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Any, batch: Mapping[str, Any]) -> None:
        """Feed one batch: ``outputs`` in the task's evaluation form (a head's ``evaluation_outputs``)."""
        raise NotImplementedError(f"task {self.name!r} has no metrics")

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``metrics.compute()`` as flat scalars without split prefix; pictures and CSVs into ``plots_dir`` when given."""
        raise NotImplementedError(f"task {self.name!r} has no metrics")

    # -- export ------------------------------------------------------------------

    def export_outputs(self, outputs: Any) -> dict[str, Tensor]:
        """The default of :meth:`vision_pipe.stages.Head.export_outputs` for this task's heads (tensor operations
        only: it is traced into the exported graph); ``NotImplementedError`` where the task has none."""
        raise NotImplementedError(f"the {self.name} task has no default export-time decoding")

    # -- saliency ----------------------------------------------------------------

    def class_scores(self, outputs: Any) -> Tensor | None:
        """(B, num_classes) differentiable per-class scores of a batch from a head's evaluation-form ``outputs``:
        what a class saliency map (Grad-CAM, :mod:`vision_pipe.inspect`) takes the gradient of; ``None`` where
        the task has no single score per class and image (:attr:`has_class_scores` false)."""
        return None

    # -- predictions -------------------------------------------------------------

    def draw(
        self, image: np.ndarray, prediction: Prediction, class_colors: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """``image`` (H, W, 3) uint8 RGB with ``prediction`` drawn on it (upscaled for small images)."""
        return np.ascontiguousarray(upscale(image.copy())[0])

    def write_prediction(self, prediction: Prediction, out_dir: Path, stem: str) -> dict[str, str]:
        """Write the task's files of one prediction into ``out_dir`` (names start with ``stem``);
        return the entries they add to its record in ``predictions.json``."""
        return {}

    def write_predictions(
        self, predictions: Sequence[Prediction], out_dir: Path, ids: CocoIds | None = None
    ) -> list[Path]:
        """Write the task's files about all ``predictions`` (of the inputs in order) into ``out_dir``;
        ``ids``: the dataset's ids, for the files that carry them (detection's COCO results)."""
        return []

    def describe(self, prediction: Prediction) -> str:
        """One line about ``prediction`` (``vision-pipe predict`` prints it)."""
        return prediction.id

    def grade(self, prediction: Prediction, sample: Mapping[str, Any], class_names: Sequence[str]) -> Graded:
        """How good ``prediction`` is for ``sample`` (its targets, in original-image coordinates): what a report's
        grid of best and worst test predictions sorts by, captions and draws."""
        raise NotImplementedError(f"task {self.name!r} has no targets to grade predictions against")


@dataclass
class Graded:
    """A prediction graded against its sample: ``score`` (higher is better; comparable within a task),
    ``caption`` (one line: what was expected and found) and ``shown``, the prediction to draw."""

    score: float
    caption: str
    shown: Prediction


#: Samples with images only: what :meth:`vision_pipe.Pipeline.predict` transforms and collates.
IMAGES_ONLY = Task()
