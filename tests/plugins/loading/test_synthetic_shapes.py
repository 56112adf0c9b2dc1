"""The synthetic_shapes loading stage: determinism, targets per task, validation."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
import pytest

from vision_pipe import LoadedData, Loader, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.loading import synthetic_shapes as plugin
from vision_pipe_plugins.loading.synthetic_shapes import MIN_CONTRAST, render, synthetic_shapes


def source(task: str, **params: Any):
    return synthetic_shapes(**params).load(task).splits["all"]


def background_and_foreground(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a noise-free image: the background colour (its most frequent one) and the (H, W) bool of other pixels."""
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return background, (image != background).any(axis=-1)


def tight_box(mask: np.ndarray) -> list[float]:
    """xyxy of a (H, W) bool mask, x2/y2 = last pixel + 1."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# -- registration and contract ------------------------------------------------


def test_registered_as_loading_stage() -> None:
    assert plugin.vision_pipe_stages() == [synthetic_shapes]
    info = synthetic_shapes.__vision_pipe_stage__
    assert (info.kind, info.name) == ("loading", "synthetic_shapes")
    loader = synthetic_shapes()
    assert isinstance(loader, Loader)
    assert loader.tasks == ("classification", "segmentation", "detection", "reconstruction")


def test_reconstruction_samples_are_the_classification_images_without_labels() -> None:
    loader = synthetic_shapes(num_images=4, size=16)
    unlabelled, labelled = (loader.load(task) for task in ("reconstruction", "classification"))
    assert unlabelled.class_names == []
    for i in range(4):
        sample, reference = unlabelled.splits["all"][i], labelled.splits["all"][i]
        assert set(sample) == {"id", "image"} and np.array_equal(sample["image"], reference["image"])


@pytest.mark.parametrize(
    ("task", "class_names"),
    [
        ("classification", ["circle", "square", "triangle"]),
        ("segmentation", ["background", "circle", "square", "triangle"]),
        ("detection", ["circle", "square", "triangle"]),
    ],
)
def test_load_gives_one_all_split_and_class_names(task: str, class_names: list[str]) -> None:
    data = synthetic_shapes(num_images=10).load(task)
    assert isinstance(data, LoadedData)
    assert data.class_names == class_names
    assert list(data.splits) == ["all"]
    src = data.splits["all"]
    assert len(src) == 10
    assert [src[i]["id"] for i in (0, 9)] == ["synthetic_shapes:0", "synthetic_shapes:9"]
    assert src[-1]["id"] == "synthetic_shapes:9"
    with pytest.raises(IndexError):
        src[10]


def test_sample_types_per_task() -> None:
    cls = source("classification", size=32)[3]
    assert cls["image"].shape == (32, 32, 3) and cls["image"].dtype == np.uint8
    assert isinstance(cls["label"], int) and 0 <= cls["label"] < 3

    seg = source("segmentation", size=48)[3]
    assert seg["image"].shape == (48, 48, 3) and seg["image"].dtype == np.uint8
    assert seg["mask"].shape == (48, 48) and seg["mask"].dtype == np.int64
    assert set(np.unique(seg["mask"])) <= {0, 1, 2, 3}

    det = source("detection")[3]
    n = len(det["labels"])
    assert 1 <= n <= 3
    assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == np.float32
    assert det["labels"].dtype == np.int64
    boxes = det["boxes"]
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 64)
    assert np.all(boxes[:, 2:] > boxes[:, :2])


# -- determinism --------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_same_seed_same_samples_in_any_order(task: str) -> None:
    forward = [source(task, num_images=20, seed=3)[i] for i in range(20)]
    fresh = source(task, num_images=20, seed=3)
    backward = {i: fresh[i] for i in reversed(range(20))}
    for i, a in enumerate(forward):
        b = backward[i]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_different_seeds_differ() -> None:
    a, b = source("segmentation", seed=0), source("segmentation", seed=1)
    assert not np.array_equal(a[0]["image"], b[0]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_segmentation_and_detection_share_the_scene() -> None:
    seg, det = source("segmentation", seed=5), source("detection", seed=5)
    for i in range(30):
        s, d = seg[i], det[i]
        np.testing.assert_array_equal(s["image"], d["image"])
        # every object stays mostly visible, so every detected class shows in the mask
        assert set(np.unique(s["mask"])) - {0} == set(d["labels"] + 1)


def test_fingerprint_is_stable_and_tracks_parameters() -> None:
    fp = source("detection").fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == source("detection").fingerprint()
    assert fp != source("segmentation").fingerprint()
    assert fp != source("detection", seed=1).fingerprint()
    assert fp != source("detection", shapes=["circle", "star"]).fingerprint()


# -- the drawing --------------------------------------------------------------


def test_classification_image_holds_one_contrasting_shape() -> None:
    src = source("classification", noise=0.0)
    for i in range(30):
        image = src[i]["image"]
        background, fg = background_and_foreground(image)
        count, _ = cv2.connectedComponents(fg.astype(np.uint8))
        assert count == 2  # background + one shape
        colour = np.unique(image[fg], axis=0)
        assert len(colour) == 1
        assert np.abs(colour[0].astype(int) - background).mean() >= MIN_CONTRAST


def test_segmentation_mask_is_exactly_the_drawn_pixels() -> None:
    src = source("segmentation", noise=0.0, max_objects=4, shapes=["circle", "square", "triangle", "star", "ellipse"])
    for i in range(30):
        sample = src[i]
        background, fg = background_and_foreground(sample["image"])
        np.testing.assert_array_equal(sample["mask"] > 0, fg)
        assert np.all(sample["image"][sample["mask"] == 0] == background)


def test_single_object_box_is_the_tight_box_of_its_pixels() -> None:
    params = dict(noise=0.0, min_objects=1, max_objects=1, seed=2)
    det, seg = source("detection", **params), source("segmentation", **params)
    for i in range(30):
        sample = det[i]
        _, fg = background_and_foreground(sample["image"])
        assert sample["boxes"].tolist() == [tight_box(fg)]
        assert sample["boxes"].tolist() == [tight_box(seg[i]["mask"] > 0)]
        assert sample["labels"].tolist() == [seg[i]["mask"].max() - 1]


def test_circle_size_matches_the_parameters() -> None:
    # diameter 0.5 × 64 = 32 px; OpenCV also fills the boundary pixels, which adds
    # about half a pixel all round: area ≈ π·16.5² ≈ 855 px², box 32–33 px wide
    src = source("segmentation", noise=0.0, shapes=["circle"], min_size=0.5, max_size=0.5, max_objects=1)
    for i in range(10):
        mask = src[i]["mask"]
        x1, y1, x2, y2 = tight_box(mask > 0)
        assert 32 <= x2 - x1 <= 33 and 32 <= y2 - y1 <= 33
        assert abs((mask > 0).sum() - np.pi * 16.5**2) < 0.03 * np.pi * 16.5**2


def test_objects_do_not_hide_each_other() -> None:
    cfg = synthetic_shapes(min_objects=5, max_objects=5, size=64).cfg
    for i in range(30):
        scene = render(cfg, i)
        visible = np.bincount(scene.owner.ravel() + 1, minlength=len(scene.classes) + 1)[1:]
        assert np.all(visible > 0)
        boxes = np.array(scene.boxes, float)
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        for a in range(len(boxes)):
            for b in range(a):
                lo, hi = np.maximum(boxes[a, :2], boxes[b, :2]), np.minimum(boxes[a, 2:], boxes[b, 2:])
                inter = np.prod(np.clip(hi - lo, 0, None))
                assert inter / (areas[a] + areas[b] - inter) <= 0.3 + 1e-9


def test_classes_are_roughly_balanced() -> None:
    src = source("classification", num_images=1500, size=16, noise=0.0)
    counts = np.bincount([src[i]["label"] for i in range(1500)], minlength=3)
    assert np.all(np.abs(counts - 500) < 80), counts  # binomial std ≈ 18


def test_empty_fraction() -> None:
    src = source("detection", num_images=400, size=16, empty_fraction=0.5)
    empty = sum(len(src[i]["labels"]) == 0 for i in range(400))
    assert 140 < empty < 260
    sample = next(src[i] for i in range(400) if len(src[i]["labels"]) == 0)
    assert sample["boxes"].shape == (0, 4) and sample["boxes"].dtype == np.float32
    with pytest.raises(StageError, match="empty_fraction"):
        synthetic_shapes(empty_fraction=0.1).load("classification")


def test_sampling_is_fast() -> None:
    src = source("detection")
    start = time.perf_counter()
    for i in range(200):
        src[i]
    assert (time.perf_counter() - start) / 200 < 0.005  # < 1 ms typical; loose bound for slow CI


# -- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"num_images": 0}, "num_images"),
        ({"size": 4}, "size"),
        ({"shapes": []}, "shapes"),
        (
            {"shapes": ["circle", "hexagon"]},
            r"shapes\[1\] must be one of 'circle', 'square', 'triangle', 'star', 'ellipse', got 'hexagon'",
        ),
        ({"shapes": ["circle", "circle"]}, "twice"),
        ({"min_size": 0.0}, "min_size"),
        ({"min_size": 0.7, "max_size": 0.5}, "min_size ≤ max_size"),
        ({"max_size": 1.5}, "max_size"),
        ({"min_objects": 0}, "min_objects"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"noise": -1.0}, "noise"),
        ({"seed": -1}, "seed"),
        ({"empty_fraction": 1.0}, "empty_fraction"),
    ],
)
def test_invalid_parameters_raise_stage_error(params: dict[str, Any], words: str) -> None:
    with pytest.raises(StageError, match=f"synthetic_shapes.*{words}"):
        make_entry(synthetic_shapes).build(params)


def test_unknown_task() -> None:
    with pytest.raises(StageError, match="'keypoints'.*classification, segmentation, detection, reconstruction"):
        synthetic_shapes().load("keypoints")
