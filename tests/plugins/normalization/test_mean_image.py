"""Tests of the built-in ``mean_image`` normalization stage."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vision_pipe import Normalizer, StageContext, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.normalization.mean_image import MeanImage, mean_image, vision_pipe_stages

H, W = 7, 5


def make_images(n: int = 50, size: tuple[int, int] = (H, W), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def make_stage(divide_by: str = "std", size: tuple[int, int] = (H, W)) -> MeanImage:
    return mean_image(StageContext(task="classification", seed=0, input_size=size), divide_by=divide_by)  # type: ignore[arg-type]


def reference(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean image (3, H, W) and pooled per-channel std (3,) around it, in float64."""
    stack = np.stack(images).astype(np.float64)  # (N, H, W, 3)
    mean = stack.mean(axis=0)
    std = np.sqrt(((stack - mean) ** 2).mean(axis=(0, 1, 2)))
    return mean.transpose(2, 0, 1), std


class OnePass:
    """An iterable of images that refuses to be iterated twice."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.iterated = False

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.iterated:
            raise RuntimeError("iterated twice")
        self.iterated = True
        return iter(self.images)


def test_registration() -> None:
    assert vision_pipe_stages() == [mean_image]
    info = mean_image.__vision_pipe_stage__  # type: ignore[attr-defined]
    assert (info.kind, info.name) == ("normalization", "mean_image")
    stage = make_stage()
    assert isinstance(stage, Normalizer)
    assert stage.needs_fit
    assert stage.mean.shape == (3, H, W) and stage.mean.dtype == torch.float32


def test_fit_matches_numpy_reference() -> None:
    images = make_images()
    stage = make_stage()
    stage.fit(OnePass(images))
    mean, std = reference(images)
    np.testing.assert_allclose(stage.mean.numpy(), mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stage.std.numpy(), std, rtol=1e-6, atol=0)


def test_fit_from_generator_is_single_pass_and_constant_memory() -> None:
    n, size = 2000, (64, 64)
    stage = make_stage(size=size)
    consumed = 0

    def generate() -> Iterator[np.ndarray]:
        nonlocal consumed
        rng = np.random.default_rng(1)
        for _ in range(n):
            consumed += 1
            yield rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)

    one_image_float64 = size[0] * size[1] * 3 * 8
    next(iter(make_images(1, size)))  # numpy's random generator allocates on its first use
    tracemalloc.start()
    try:
        stage.fit(generate())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert consumed == n
    assert peak < 10 * one_image_float64, f"peak {peak} bytes grows with the number of images"
    # uniform uint8: mean 127.5, std sqrt((256² - 1) / 12) ≈ 73.9
    assert abs(stage.mean.mean().item() - 127.5) < 0.5
    np.testing.assert_allclose(stage.std.numpy(), np.sqrt((256**2 - 1) / 12), rtol=1e-2)


@pytest.mark.parametrize("divide_by", ["std", "255", "none"])
def test_forward_formula(divide_by: str) -> None:
    images = make_images()
    stage = make_stage(divide_by)
    stage.fit(images)
    mean, std = reference(images)
    batch = np.stack(make_images(4, seed=1)).transpose(0, 3, 1, 2).astype(np.float64)  # (4, 3, H, W)
    divisor = {"std": std[:, None, None], "255": 255.0, "none": 1.0}[divide_by]
    expected = (batch - mean) / divisor
    out = stage(torch.from_numpy(batch).float())
    assert out.shape == (4, 3, H, W) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_state_dict_round_trip() -> None:
    stage = make_stage()
    stage.fit(make_images())
    assert set(stage.state_dict()) == {"mean", "std"}
    fresh = make_stage()
    fresh.load_state_dict(stage.state_dict())
    batch = torch.rand(2, 3, H, W) * 255
    assert torch.equal(fresh(batch), stage(batch))


def test_wrong_image_shape() -> None:
    images = make_images(3) + [np.zeros((H + 1, W, 3), np.uint8)]
    with pytest.raises(StageError, match=r"image 3 has shape \(8, 5, 3\), expected \(7, 5, 3\)"):
        make_stage().fit(images)


def test_wrong_image_dtype() -> None:
    with pytest.raises(StageError, match="dtype float32"):
        make_stage().fit([np.zeros((H, W, 3), np.float32)])


def test_empty_iterable() -> None:
    with pytest.raises(StageError, match="no training images to fit the mean image on"):
        make_stage().fit(iter([]))


def test_constant_channel_with_std_divisor() -> None:
    images = make_images(5)
    for image in images:
        image[..., 1] = 42
    with pytest.raises(StageError, match="channel G"):
        make_stage("std").fit(images)
    make_stage("none").fit(images)  # subtracting only is fine


def test_wrong_batch_size() -> None:
    stage = make_stage()
    with pytest.raises(StageError, match=r"7×5.*8×5.*must keep the input size"):
        stage(torch.zeros(2, 3, H + 1, W))
    with pytest.raises(StageError, match=r"expected \(B, 3, 7, 5\)"):
        stage(torch.zeros(2, 1, H, W))


def test_unknown_divisor() -> None:
    context = StageContext(task="classification", seed=0, input_size=(H, W))
    with pytest.raises(StageError, match=r"divide_by must be one of 'none', 'std', '255', got 'max'"):
        make_entry(mean_image).build({"divide_by": "max"}, context)


def test_save_artifacts(tmp_path: Path) -> None:
    stage = make_stage()
    stage.fit(make_images())
    paths = stage.save_artifacts(tmp_path / "plots")
    assert paths == [tmp_path / "plots" / "mean_image.png"]
    bgr = cv2.imread(str(paths[0]), cv2.IMREAD_COLOR)
    assert bgr is not None and min(bgr.shape[:2]) >= 128
    factor = bgr.shape[0] // H
    assert bgr.shape[:2] == (H * factor, W * factor)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[::factor, ::factor]  # (H, W, 3)
    expected = np.rint(reference(make_images())[0].transpose(1, 2, 0)).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_forward_on_gpu() -> None:
    stage = make_stage()
    stage.fit(make_images())
    batch = torch.rand(2, 3, H, W) * 255
    expected = stage(batch)
    out = stage.cuda()(batch.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), expected)
