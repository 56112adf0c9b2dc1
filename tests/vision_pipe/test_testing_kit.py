"""vision_pipe.testing: the reference stages pass, and a deliberately broken stage of each kind is caught."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision_pipe import (
    Backbone,
    ClassificationPrediction,
    ContractError,
    FeatureInfo,
    Features,
    Head,
    LoadedData,
    Loader,
    Normalizer,
    Sample,
    SampleSource,
    StageError,
    stage,
)
from vision_pipe.plugins import PluginManager
from vision_pipe.registry import make_entry
from vision_pipe.tasks import get_task
from vision_pipe.testing import (
    BoringBackbone,
    BoringLoader,
    BoringPlugin,
    boring_backbone,
    boring_loader,
    check_augmentation,
    check_backbone,
    check_head,
    check_loader,
    check_normalization,
    check_stage,
    make_batch,
)

# ----------------------------------------------------------------------------
# reference stages
# ----------------------------------------------------------------------------


def test_the_boring_stages_keep_their_contracts():
    assert isinstance(check_loader(boring_loader), BoringLoader)  # every task it declares
    backbone = check_backbone(boring_backbone, width=2, stages=3)
    assert [(f.channels, f.stride) for f in backbone.feature_info] == [(2, 2), (4, 4), (8, 8)]


def test_the_boring_plugin_registers_and_check_stage_dispatches_by_kind():
    manager = PluginManager(autoload=False)
    manager.register(BoringPlugin(), name="boring")
    assert isinstance(check_stage(manager.registry.get("loading", "boring"), num_images=3), BoringLoader)
    assert isinstance(check_stage(manager.registry.get("backbone", "boring"), width=2), BoringBackbone)
    with pytest.raises(ContractError, match="neither a registry entry nor a factory marked"):
        check_stage(object())


def test_a_stage_of_another_kind_or_one_that_cannot_be_built_is_named():
    with pytest.raises(ContractError, match=r"loading stage 'boring' is a loading stage, not a backbone stage"):
        check_backbone(boring_loader)
    with pytest.raises(ContractError, match=r"backbone stage 'boring' could not be built with parameters \{'width': 0\}"):
        check_backbone(boring_backbone, width=0)
    with pytest.raises(ContractError, match=r"parameters \['width'\] given for a stage that is already built"):
        check_backbone(BoringBackbone(), width=3)


def test_the_boring_backbone_constraints_are_checked_by_the_registry():
    entry = make_entry(boring_backbone, plugin="boring")
    assert [(p.name, p.type_str()) for p in entry.parameters] == [("width", "int ≥ 1"), ("stages", "int ≥ 1")]
    with pytest.raises(StageError, match=r"^backbone stage 'boring': width must be ≥ 1, got 0"):
        entry.build({"width": 0})
    with pytest.raises(StageError, match=r"^backbone stage 'boring': stages must be ≥ 1, got -1"):
        entry.build({"stages": -1})
    with pytest.raises(ContractError, match=r"width must be ≥ 1, got 0"):
        check_backbone(boring_backbone, width=0)


def test_make_batch_has_the_documented_shapes():
    batch = make_batch("detection", (16, 24), num_classes=4, batch_size=3)
    assert batch["image"].shape == (3, 3, 16, 24) and batch["image"].dtype == torch.uint8
    assert [len(b) for b in batch["boxes"]] == [2, 0, 1] and batch["labels"][0].dtype == torch.int64
    mask = make_batch("segmentation", (8, 8))["mask"]
    assert mask.shape == (2, 8, 8) and (mask == 255).any() and mask[mask != 255].max() < 3


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


class _Source(SampleSource):
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def fingerprint(self) -> str:
        return "fixed"


class _Loader(Loader):
    """Serves ``sample`` (a function of the index) for ``task``."""

    def __init__(self, task: str, sample: dict[str, Any], splits: Sequence[str] = ("all",)) -> None:
        self.tasks = (task,)
        self.sample = sample
        self.split_names = splits

    def load(self, task: str) -> LoadedData:
        samples = [{"id": f"s{i}", **self.sample} for i in range(3)]
        return LoadedData(["background", "a", "b"], {s: _Source(samples) for s in self.split_names})


IMAGE = np.zeros((8, 10, 3), np.uint8)


@pytest.mark.parametrize(
    ("task", "sample", "message"),
    [
        ("classification", {"image": IMAGE.astype(np.float32) / 255, "label": 0}, r"the image is a float32 array of shape \(8, 10, 3\); expected an \(H, W, 3\) uint8"),
        ("classification", {"image": IMAGE[..., 0], "label": 0}, r"the image is a uint8 array of shape \(8, 10\)"),
        ("classification", {"image": IMAGE, "label": 3}, r"label 3 is not a class index \(0..2\)"),
        ("segmentation", {"image": IMAGE, "mask": np.zeros((10, 8), np.int64)}, r"the mask is 10x8 but its image is 8x10 \(height x width\)"),
        ("segmentation", {"image": IMAGE, "mask": np.full((8, 10), 7, np.int64)}, r"mask values 7 are not class ids: the pipeline has 3 classes \(0..2\) and 255 means ignore"),
        ("segmentation", {"image": IMAGE, "mask": np.zeros((8, 10, 3), np.uint8)}, r"the mask has shape \(8, 10, 3\); expected \(H, W\) class ids"),
        ("detection", {"image": IMAGE, "boxes": np.array([[5, 1, 2, 4]], np.float32), "labels": np.array([1])}, r"box 0 \[x1, y1, x2, y2\] = \[5, 1, 2, 4\] has x2 2 ≤ x1 5 \(no width\)"),
        ("detection", {"image": IMAGE, "boxes": np.array([[0, 0, 12, 4]], np.float32), "labels": np.array([1])}, r"box 0 \[x1, y1, x2, y2\] = \[0, 0, 12, 4\] lies outside the 10×8 image \(width × height\)"),
        ("detection", {"image": IMAGE, "boxes": np.zeros((2, 4), np.float32) + [0, 0, 1, 1], "labels": np.array([1])}, r"2 boxes but 1 labels; give one label per box"),
        ("classification", {"image": IMAGE, "label": 0, "id": 7}, r"sample id 7: 'id' must be a non-empty str"),
    ],
    ids=["float-image", "grey-image", "label-range", "mask-shape", "mask-values", "rgb-mask", "box-order", "box-outside", "labels-count", "int-id"],
)
def test_a_loader_with_samples_off_the_schema_is_caught(task, sample, message):
    """The kit applies the one sample contract (vision_pipe.samples) and names the stage, split and sample."""
    with pytest.raises(ContractError, match=rf"loading stage _Loader, task {task}, split 'all', sample 0: (s0: )?{message}"):
        check_loader(_Loader(task, sample))


def test_the_kit_and_the_preflight_apply_the_same_rules():
    """A box one pixel past the border (the contract's tolerance) and 255 mask pixels pass both."""
    sample = {"image": IMAGE, "boxes": np.array([[0, 0, 11, 4]], np.float32), "labels": np.array([1])}
    check_loader(_Loader("detection", sample))
    get_task("detection").check_sample({"id": "s0", **sample}, 3)
    mask = np.full((8, 10), 255, np.int64)
    check_loader(_Loader("segmentation", {"image": IMAGE, "mask": mask}))


def test_a_loader_with_bad_splits_tasks_or_fingerprints_is_caught():
    good = {"image": IMAGE, "label": 1}
    with pytest.raises(ContractError, match=r"splits must be \{'all': source\} or 'train'.*got \['all', 'test'\]"):
        check_loader(_Loader("classification", good, splits=("all", "test")))
    with pytest.raises(ContractError, match="cannot be checked for task 'detection': it declares only classification"):
        check_loader(_Loader("classification", good), "detection")

    class Unstable(_Source):
        def fingerprint(self) -> str:
            return str(np.random.random())

    loader = _Loader("classification", good)
    loader.load = lambda task: LoadedData(["a", "b"], {"all": Unstable([{"id": "x", **good}])})  # type: ignore[method-assign]
    with pytest.raises(ContractError, match=r"fingerprint\(\) must return the same non-empty string every time"):
        check_loader(loader)


# ----------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------


class _WrongStride(BoringBackbone):
    def __init__(self) -> None:
        super().__init__(width=2, stages=2)
        self.feature_info[1] = FeatureInfo("s2", 4, 8)  # the map is at stride 4


class _WrongChannels(BoringBackbone):
    def __init__(self) -> None:
        super().__init__(width=2, stages=2)
        self.feature_info[0] = FeatureInfo("s1", 3, 2)


class _RenamedMap(BoringBackbone):
    def forward(self, images: Tensor) -> Features:
        maps = super().forward(images).maps
        return Features(maps={k.upper(): v for k, v in maps.items()})


class _Detached(BoringBackbone):
    def forward(self, images: Tensor) -> Features:
        features = super().forward(images)
        return Features(maps={k: v.detach() for k, v in features.maps.items()}, pool_indices=features.pool_indices)


class _FloorSizes(Backbone):
    """Rounds sizes down (a 2×2 convolution with stride 2 and no padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 2, stride=2)
        self.feature_info = [FeatureInfo("out", 4, 2)]

    def forward(self, images: Tensor) -> Features:
        return Features(maps={"out": self.conv(images)})


class _NotPowerOfTwo(BoringBackbone):
    def __init__(self) -> None:
        super().__init__(width=2, stages=1)
        self.feature_info = [FeatureInfo("s1", 2, 3)]


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (_WrongStride, r"map 's2' is \(2, 4, 8, 8\) for a 32×32 input, but feature_info declares 4 channels at stride 8: expected \(2, 4, 4, 4\)"),
        (_WrongChannels, r"map 's1' is \(2, 2, 16, 16\) .* declares 3 channels at stride 2"),
        (_RenamedMap, r"forward\(\) returned maps \['S1', 'S2', 'S3', 'S4'\]; feature_info declares \['s1', 's2', 's3', 's4'\]"),
        (_Detached, "no gradient reaches its parameters from its maps"),
        (_FloorSizes, r"map 'out' is \(2, 4, 16, 17\) for a 33×35 input.*expected \(2, 4, 17, 18\) \(sizes round up\)"),
        (_NotPowerOfTwo, r"map 's1' declares stride 3; strides are powers of two \(1, 2, 4, ...\)"),
    ],
    ids=["stride", "channels", "names", "no-gradient", "odd-sizes", "stride-not-power-of-two"],
)
def test_a_broken_backbone_is_caught(backbone, message):
    with pytest.raises(ContractError, match=rf"^backbone stage {backbone.__name__}: {message}"):
        check_backbone(backbone())


# ----------------------------------------------------------------------------
# head
# ----------------------------------------------------------------------------


class _Head(Head):
    """A minimal correct classification head on the coarsest map."""

    task = "classification"

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, features: Features) -> Tensor:
        return self.linear(list(features.maps.values())[-1].mean(dim=(2, 3)))

    def loss(self, outputs: Tensor, batch: Any) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(outputs, batch["label"])}

    def make_metrics(self) -> Any:
        import torchmetrics

        n = self.linear.out_features
        return torchmetrics.MetricCollection({"acc": torchmetrics.classification.MulticlassAccuracy(num_classes=n)})

    def update_metrics(self, metrics: Any, outputs: Tensor, batch: Any) -> None:
        metrics.update(outputs, batch["label"])

    def summarize(self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None) -> dict[str, float]:
        return {"acc": float(computed["acc"])}

    def decode(self, outputs: Tensor, batch: Any, class_names: Sequence[str]) -> list[Any]:
        labels = outputs.argmax(dim=1).tolist()
        return [ClassificationPrediction(id=m["id"], label=i, class_name=class_names[i]) for m, i in zip(batch["meta"], labels, strict=True)]


class _NanLoss(_Head):
    def loss(self, outputs: Tensor, batch: Any) -> dict[str, Tensor]:
        return {"loss": super().loss(outputs, batch)["loss"] * float("nan")}


class _DetachesFeatures(_Head):
    def forward(self, features: Features) -> Tensor:
        return super().forward(Features(maps={k: v.detach() for k, v in features.maps.items()}))


class _DetachedLoss(_Head):
    def loss(self, outputs: Tensor, batch: Any) -> dict[str, Tensor]:
        return super().loss(outputs.detach(), batch)


class _VectorLoss(_Head):
    def loss(self, outputs: Tensor, batch: Any) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(outputs, batch["label"], reduction="none")}


class _PrefixedSummary(_Head):
    def summarize(self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None) -> dict[str, float]:
        return {"val/acc": float(computed["acc"])}


class _TensorSummary(_Head):
    def summarize(self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None) -> dict[str, Any]:
        return {"acc": computed["acc"]}


class _WrongIds(_Head):
    def decode(self, outputs: Tensor, batch: Any, class_names: Sequence[str]) -> list[Any]:
        return [ClassificationPrediction(id=str(i), label=0) for i in range(len(outputs))]


class _OnePrediction(_Head):
    def decode(self, outputs: Tensor, batch: Any, class_names: Sequence[str]) -> list[Any]:
        return super().decode(outputs, batch, class_names)[:1]


@stage("head", "kit_head")
def _head_factory(context: Any, kind: str = "ok") -> _Head:
    """Builds one of the heads above on the context's coarsest map."""
    classes = {"ok": _Head, "nan": _NanLoss, "detach": _DetachesFeatures, "detached_loss": _DetachedLoss, "vector": _VectorLoss,
               "prefix": _PrefixedSummary, "tensor": _TensorSummary, "ids": _WrongIds, "one": _OnePrediction}  # fmt: skip
    if context.task != "classification":
        raise StageError("classification only")
    return classes[kind](context.feature_info[-1].channels, context.num_classes)


def test_a_correct_head_passes_and_its_task_is_found():
    head = check_head(_head_factory)
    assert isinstance(head, _Head) and head.task == "classification"
    with pytest.raises(ContractError, match="could not be built.*classification only"):
        check_head(_head_factory, "segmentation")
    assert isinstance(check_head(_Head(32, 3)), _Head)  # an instance: its own task
    with pytest.raises(ContractError, match=r"^head stage _Head: solves 'classification', not 'segmentation'"):
        check_head(_Head(32, 3), "segmentation")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", r"loss\(\) gave 'loss' = \[nan\]; it must be one finite number"),
        ("detach", "no gradient of the loss reaches the backbone: the head must not detach the features"),
        ("detached_loss", "'loss' does not require grad: no gradient can reach the backbone"),
        ("vector", r"loss\(\) gave 'loss' = \[.*\]; it must be one finite number"),
        ("prefix", r"summarize\(\) key 'val/acc' must be a str without split prefix"),
        ("tensor", r"summarize\(\)\['acc'\] is Tensor; values must be Python floats"),
        ("ids", r"decode\(\) gave id '0' for image 'kit:0': take ids from batch\['meta'\]"),
        ("one", r"decode\(\) must return a list of 2 predictions"),
    ],
)
def test_a_broken_head_is_caught(kind, message):
    with pytest.raises(ContractError, match=rf"^head stage 'kit_head': {message}"):
        check_head(_head_factory, kind=kind)


def test_a_head_whose_gradient_does_not_reach_a_trainable_backbone_is_caught():
    class FrozenPath(_Head):
        """Uses the features only through a constant: the loss has a gradient, the backbone gets none."""

        def forward(self, features: Features) -> Tensor:
            fmap = list(features.maps.values())[-1]
            return self.linear(fmap.mean(dim=(2, 3)) * 0.0)

    with pytest.raises(ContractError, match="no gradient of the loss reaches the backbone: the head must not detach"):
        check_head(FrozenPath(32, 3))


# ----------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------


class _Broken(A.DualTransform):
    """Flips the image; ``mask_too`` / ``boxes_too`` say whether masks / boxes follow."""

    def __init__(self, mask_too: bool = False, boxes_too: bool = True, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.mask_too, self.boxes_too = mask_too, boxes_too

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return np.ascontiguousarray(mask[:, ::-1]) if self.mask_too else mask

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        if not self.boxes_too:
            return bboxes
        flipped = bboxes.copy()  # normalized xyxy
        flipped[:, [0, 2]] = 1 - bboxes[:, [2, 0]]
        return flipped

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mask_too", "boxes_too")


class _ToFloat(A.ImageOnlyTransform):
    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img.astype(np.float32) / 255


class _InterpolatesMask(A.DualTransform):
    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return img

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return mask * 3

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes


def test_a_consistent_augmentation_passes():
    assert isinstance(check_augmentation(_Broken(mask_too=True)), _Broken)
    check_augmentation(A.HorizontalFlip)  # a transform class is a factory too


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_Broken(), r"in 6 of 6 tries the mask no longer marks the object in the image \(\|correlation\| 0\.\d+ < 0.5\)"),
        (_Broken(mask_too=True, boxes_too=False), r"in 6 of 6 tries the box \[2.0, 3.0, 18.0, 10.0\] does not match the mask's object at \[14.0, 3.0, 30.0, 10.0\] \(IoU 0.\d+ < 0.5\)"),
        (_ToFloat(p=1), r"turned the uint8 RGB image into a float32 array of shape \(32, 32, 3\)"),
        (_InterpolatesMask(p=1), r"turned the mask's class ids 0/1 into \[3\]"),
    ],
    ids=["image-only-flip", "boxes-left-behind", "float-output", "mask-values"],
)
def test_a_broken_augmentation_is_caught(transform, message):
    with pytest.raises(ContractError, match=rf"^augmentation stage {type(transform).__name__}: {message}"):
        check_augmentation(transform)


# ----------------------------------------------------------------------------
# normalization
# ----------------------------------------------------------------------------


class _Scale(Normalizer):
    """Divides by the fitted maximum, kept in a buffer (correct)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("peak", torch.ones(()))

    def fit(self, images: Iterable[np.ndarray]) -> None:
        self.peak.fill_(float(max(int(image.max()) for image in images)))

    def forward(self, images: Tensor) -> Tensor:
        return images / self.peak


class _PlainAttribute(_Scale):
    def fit(self, images: Iterable[np.ndarray]) -> None:
        self.scale = float(max(int(image.max()) for image in images))  # a plain attribute, not a buffer

    def forward(self, images: Tensor) -> Tensor:
        return images / getattr(self, "scale", 1.0)


class _NeedsLen(_Scale):
    def fit(self, images: Iterable[np.ndarray]) -> None:
        self.peak.fill_(float(len(images)))  # type: ignore[arg-type]


class _Float64(_Scale):
    def forward(self, images: Tensor) -> Tensor:
        return images.double()


class _Cropping(_Scale):
    def forward(self, images: Tensor) -> Tensor:
        return images[..., 1:, :]


class _DividesByZero(_Scale):
    def forward(self, images: Tensor) -> Tensor:
        return images / 0.0


@stage("normalization", "kit_scale")
def _scale_factory(kind: str = "ok") -> _Scale:
    """Builds one of the normalizers above."""
    return {"ok": _Scale, "plain": _PlainAttribute, "len": _NeedsLen, "float64": _Float64,
            "crop": _Cropping, "inf": _DividesByZero}[kind]()  # fmt: skip


def test_a_correct_normalization_passes():
    assert check_normalization(_scale_factory).peak > 200


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("plain", "a fresh instance loaded with the fitted state_dict normalizes differently: keep fitted statistics in buffers"),
        ("len", r"fit\(\) failed on a one-pass stream of 4 images: TypeError"),
        ("float64", r"forward\(\) gave torch.float64 \(4, 3, 16, 16\) for a float32 \(4, 3, 16, 16\) batch"),
        ("crop", r"forward\(\) gave torch.float32 \(4, 3, 15, 16\)"),
        ("inf", r"forward\(\) gave NaN or infinite values"),
    ],
)
def test_a_broken_normalization_is_caught(kind, message):
    with pytest.raises(ContractError, match=rf"^normalization stage 'kit_scale': {message}"):
        check_normalization(_scale_factory, kind=kind)
