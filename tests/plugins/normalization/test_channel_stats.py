"""Tests of the built-in ``channel_stats`` normalization stage."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from vision_pipe import Normalizer, StageError
from vision_pipe.registry import make_entry
from vision_pipe_plugins.normalization.channel_stats import ChannelStats, channel_stats, vision_pipe_stages

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def make_images(n: int = 50, size: tuple[int, int] = (7, 5), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def reference(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std (3,) over all pixels of all images, in float64."""
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_registration() -> None:
    assert vision_pipe_stages() == [channel_stats]
    info = channel_stats.__vision_pipe_stage__  # type: ignore[attr-defined]
    assert (info.kind, info.name) == ("normalization", "channel_stats")
    assert isinstance(channel_stats(), Normalizer)


def test_given_statistics_need_no_fit() -> None:
    stage = channel_stats(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert not stage.needs_fit
    assert channel_stats().needs_fit
    np.testing.assert_allclose(stage.mean.numpy(), IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(stage.std.numpy(), IMAGENET_STD, rtol=1e-6)
    stage.fit(make_images())  # a no-op: the given statistics stay
    np.testing.assert_allclose(stage.mean.numpy(), IMAGENET_MEAN, rtol=1e-6)


def test_fit_matches_numpy_reference() -> None:
    images = make_images(n=50) + make_images(n=3, size=(4, 9), seed=1)  # sizes may differ
    stage = channel_stats()
    stage.fit(iter(images))
    mean, std = reference(images)
    assert stage.mean.dtype == torch.float32 and stage.std.shape == (3,)
    np.testing.assert_allclose(stage.mean.numpy(), mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stage.std.numpy(), std, rtol=0, atol=1e-5)


def test_fit_from_generator_is_constant_memory() -> None:
    n, size = 2000, (64, 64)
    consumed = 0

    def generate() -> Iterator[np.ndarray]:
        nonlocal consumed
        rng = np.random.default_rng(1)
        for _ in range(n):
            consumed += 1
            yield rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)

    stage = channel_stats()
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
    np.testing.assert_allclose(stage.mean.numpy(), 127.5, atol=0.2)
    np.testing.assert_allclose(stage.std.numpy(), np.sqrt((256**2 - 1) / 12), rtol=1e-3)


def test_forward_formula() -> None:
    images = make_images()
    stage = channel_stats()
    stage.fit(images)
    mean, std = reference(images)
    batch = torch.rand(4, 3, 6, 8, dtype=torch.float64) * 255
    expected = (batch.numpy() - mean[:, None, None]) / std[:, None, None]
    out = stage(batch.float())
    assert out.shape == (4, 3, 6, 8) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip() -> None:
    stage = channel_stats()
    stage.fit(make_images())
    assert set(stage.state_dict()) == {"mean", "std"}
    fresh = channel_stats()
    fresh.load_state_dict(stage.state_dict())
    batch = torch.rand(2, 3, 4, 4) * 255
    assert torch.equal(fresh(batch), stage(batch))


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        (IMAGENET_MEAN, [58.0, 0.0, 57.0], r"std\[1\] must be in \(0, 255\], got 0.0"),
        (IMAGENET_MEAN, [58.0, 57.0], r"std must be list\[float in \(0, 255\]\] \(3 items\)"),
        ([300.0, 0.0, 0.0], IMAGENET_STD, r"mean\[0\] must be in \[0, 255\], got 300.0"),
        ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], r"images in \[0, 1\].*multiply by 255"),
        (IMAGENET_MEAN, None, r"'std' is missing"),
    ],
)
def test_invalid_given_statistics(mean: list[float], std: list[float] | None, match: str) -> None:
    with pytest.raises(StageError, match=match):
        make_entry(channel_stats).build({"mean": mean, "std": std})


def test_empty_iterable() -> None:
    with pytest.raises(StageError, match="no training images"):
        channel_stats().fit([])


def test_wrong_image_shape() -> None:
    with pytest.raises(StageError, match=r"image 1 has shape \(7, 5\), expected \(height, width, 3\)"):
        channel_stats().fit([make_images(1)[0], np.zeros((7, 5), np.uint8)])


def test_constant_channel() -> None:
    images = make_images(5)
    for image in images:
        image[..., 2] = 7
    with pytest.raises(StageError, match="channel B is constant"):
        channel_stats().fit(images)


def test_direct_construction() -> None:
    assert isinstance(ChannelStats(), ChannelStats)
    with pytest.raises(StageError, match="expected"):
        ChannelStats()(torch.zeros(2, 1, 4, 4))
