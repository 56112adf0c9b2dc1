"""The pre-flight pass: per-sample checks, skip/error policy, caching."""

from __future__ import annotations

import numpy as np
import pytest

from vision_pipe.data import SubsetSource
from vision_pipe.errors import DataError
from vision_pipe.preflight import apply_report, run_preflight
from vision_pipe.stages import Sample, SampleSource
from vision_pipe.tasks import get_task


def _image(h: int = 8, w: int = 10) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


class ListSource(SampleSource):
    """Samples from a list; an Exception in the list is raised by ``__getitem__``; counts reads."""

    def __init__(self, items: list[Sample | Exception]) -> None:
        self.items = items
        self.reads = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        self.reads += 1
        item = self.items[index]
        if isinstance(item, Exception):
            raise item
        return item

    def fingerprint(self) -> str:
        return f"list-{len(self.items)}"


# ----------------------------------------------------------------------------
# check_sample
# ----------------------------------------------------------------------------


def test_good_samples_of_every_task_pass() -> None:
    get_task("classification").check_sample({"id": "a", "image": _image(), "label": 2}, 3)
    mask = np.zeros((8, 10), np.int64)
    mask[0, 0], mask[1, 1] = 2, 255
    get_task("segmentation").check_sample({"id": "a", "image": _image(), "mask": mask}, 3)
    boxes = np.array([[0, 0, 10, 8], [2, 2, 4, 4], [-0.5, 0, 10.5, 8]], np.float32)  # 1 px tolerance
    get_task("detection").check_sample({"id": "a", "image": _image(), "boxes": boxes, "labels": np.array([0, 1, 2])}, 3)
    get_task("detection").check_sample({"id": "a", "image": _image(), "boxes": np.zeros((0, 4)), "labels": np.zeros(0)}, 3)


@pytest.mark.parametrize(
    ("sample", "task", "expected"),
    [
        ({"image": np.zeros((8, 10), np.uint8)}, "classification", "expected an (H, W, 3) uint8 RGB image"),
        ({"image": _image().astype(np.float32)}, "classification", "float32 array"),
        ({"image": _image(), "label": 3}, "classification", "label 3 is not a class index (0..2)"),
        ({"image": _image()}, "segmentation", "has no mask"),
        ({"image": _image(), "mask": np.zeros((8, 10, 3), np.uint8)}, "segmentation", "An RGB colour mask"),
        ({"image": _image(), "mask": np.zeros((8, 9), np.uint8)}, "segmentation", "the mask is 8x9 but its image is 8x10"),
        ({"image": _image(), "mask": np.zeros((8, 10), np.float32)}, "segmentation", "dtype float32"),
        ({"image": _image(), "mask": np.full((8, 10), 7, np.uint8)}, "segmentation", "mask values 7 are not class ids"),
        (
            {"image": _image(), "mask": np.where(np.eye(8, 10) > 0, 255, 0).astype(np.uint8)},
            "segmentation",
            None,  # 0/255 is a valid mask (255 = ignore) as far as ids go
        ),
        (
            {"image": _image(), "boxes": [[5, 1, 5, 4]], "labels": [0]},
            "detection",
            "box 0 [x1, y1, x2, y2] = [5, 1, 5, 4] has x2 5 ≤ x1 5 (no width)",
        ),
        ({"image": _image(), "boxes": [[1, 1, 3, 3], [1, 6, 4, 2]], "labels": [0, 0]}, "detection", "box 1"),
        ({"image": _image(), "boxes": [[0, 0, np.nan, 4]], "labels": [0]}, "detection", "NaN"),
        ({"image": _image(), "boxes": [[0, 0, 12, 4]], "labels": [0]}, "detection", "outside the 10×8 image"),
        ({"image": _image(), "boxes": [[0, 0, 2, 4]], "labels": [5]}, "detection", "has label 5"),
        ({"image": _image(), "boxes": [[0, 0, 2, 4]], "labels": []}, "detection", "1 boxes but 0 labels"),
    ],
)
def test_bad_samples_are_named_with_the_fix(sample: Sample, task: str, expected: str | None) -> None:
    sample = {"id": "data/x.png", **sample}
    if expected is None:
        get_task(task).check_sample(sample, 3)
        return
    with pytest.raises(DataError) as info:
        get_task(task).check_sample(sample, 3)
    assert str(info.value).startswith("data/x.png: ")
    assert expected in str(info.value)


def test_binary_mask_saved_as_0_255_gets_a_hint() -> None:
    mask = np.zeros((8, 10), np.uint8)
    mask[2:4, 2:4] = 255
    mask[5, 5] = 1
    get_task("segmentation").check_sample({"id": "m", "image": _image(), "mask": mask}, 2)  # 255 = ignore is fine
    with pytest.raises(DataError, match=r"binary mask with its foreground saved as 128\? Store class ids \(1, not 128\)"):
        get_task("segmentation").check_sample({"id": "m", "image": _image(), "mask": (mask > 1).astype(np.uint8) * 128}, 2)


# ----------------------------------------------------------------------------
# the pass, the policy, the cache
# ----------------------------------------------------------------------------


def _splits() -> tuple[ListSource, dict[str, SampleSource]]:
    good = {"id": "g", "image": _image(), "label": 0}
    items: list[Sample | Exception] = [good, DataError("img/3.png: file not found"), good, {**good, "label": 9}, good]
    base = ListSource(items)
    return base, {"train": SubsetSource(base, [4, 1, 0, 3]), "test": SubsetSource(base, [2])}


def test_pass_collects_every_bad_sample_and_error_policy_lists_them() -> None:
    _, splits = _splits()
    report = run_preflight(splits, "classification", 2, num_workers=0, use_cache=False)
    assert report.checked == {"train": 4, "test": 1}
    assert [(b.split, b.index) for b in report.bad] == [("train", 1), ("train", 3)]
    assert report.bad[0].reason == "img/3.png: file not found"
    assert "label 9 is not a class index" in report.bad[1].reason
    with pytest.raises(DataError) as info:
        apply_report(splits, report, "error")
    message = str(info.value)
    assert "found 2 bad sample(s) of 5" in message and "img/3.png: file not found" in message
    assert "data.on_bad_sample: skip" in message


def test_skip_policy_drops_bad_samples_and_keeps_loader_indices() -> None:
    base, splits = _splits()
    report = run_preflight(splits, "classification", 2, num_workers=0, use_cache=False)
    kept = apply_report(splits, report, "skip")
    assert kept["test"] is splits["test"]
    train = kept["train"]
    assert isinstance(train, SubsetSource) and train.source is base
    assert train.indices.tolist() == [4, 0]  # loader indices, as splits.json records them


def test_skip_policy_refuses_an_all_bad_split() -> None:
    source = ListSource([DataError("a.png: missing"), DataError("b.png: missing")])
    report = run_preflight({"train": source}, "classification", 2, num_workers=0, use_cache=False)
    with pytest.raises(DataError, match="every sample of the train split is bad; first problem: a.png: missing"):
        apply_report({"train": source}, report, "skip")


def test_report_is_cached_by_fingerprint() -> None:
    base, splits = _splits()
    first = run_preflight(splits, "classification", 2, num_workers=0)
    reads = base.reads
    again = run_preflight(splits, "classification", 2, num_workers=0)
    assert base.reads == reads  # nothing was read the second time
    assert again.cached and not first.cached
    assert again.to_dict()["bad"] == first.to_dict()["bad"]
    run_preflight(splits, "classification", 3, num_workers=0)  # other class count: another key
    assert base.reads == 2 * reads


def test_pass_runs_in_worker_processes() -> None:
    _, splits = _splits()
    report = run_preflight(splits, "classification", 2, num_workers=2, use_cache=False)
    assert [(b.split, b.index) for b in report.bad] == [("train", 1), ("train", 3)]
