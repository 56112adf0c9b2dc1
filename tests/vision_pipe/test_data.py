"""Behaviour of the data side (vision_pipe/data.py) and image reading (vision_pipe/io.py),
checked against hand-computed values on small synthetic sources."""

from __future__ import annotations

import inspect
import struct
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from vision_pipe import DataError, LoadedData, Sample, SampleSource
from vision_pipe.cache import iter_resized_images, normalization_fingerprint
from vision_pipe.data import (
    SubsetSource,
    build_transform,
    collate,
    make_splits,
    transform_sample,
)
from vision_pipe.io import read_image

# ----------------------------------------------------------------------------
# Synthetic sources
# ----------------------------------------------------------------------------


class ListSource(SampleSource):
    """Samples held in a list; counts how often each is read."""

    def __init__(self, samples: list[Sample], fingerprint: str = "list-v1") -> None:
        self.samples = samples
        self.fp = fingerprint
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        self.reads.append(index)
        return self.samples[index]

    def fingerprint(self) -> str:
        return self.fp


class IdSource(SampleSource):
    """``n`` tiny classification samples whose id is their index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return {"id": str(index), "image": np.full((4, 4, 3), index, np.uint8), "label": index % 2}

    def fingerprint(self) -> str:
        return f"ids-{self.n}"


def _ids(source: SampleSource) -> list[int]:
    return [int(source[i]["id"]) for i in range(len(source))]


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _apply(sample: Sample, task: str, input_size: tuple[int, int], augs: list[Any] = (), seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return transform_sample(sample, task, build_transform(task, input_size, list(augs)), input_size)


# ----------------------------------------------------------------------------
# make_splits
# ----------------------------------------------------------------------------


def test_split_sizes_disjoint_and_covering() -> None:
    splits = make_splits(LoadedData(["a", "b"], {"all": IdSource(10)}), (0.6, 0.2, 0.2), seed=0)
    assert sorted(splits) == ["test", "train", "val"]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    ids = {s: _ids(splits[s]) for s in splits}
    assert not set(ids["train"]) & set(ids["val"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(10))


def test_split_sizes_round_and_train_gets_the_remainder() -> None:
    # 7 samples: val = round(1.4) = 1, test = round(1.4) = 1, train = 7 - 2 = 5
    splits = make_splits(LoadedData(["a"], {"all": IdSource(7)}), (0.6, 0.2, 0.2), seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 1, 1]


def test_split_is_seeded() -> None:
    loaded = LoadedData(["a", "b"], {"all": IdSource(10)})
    first = {s: _ids(src) for s, src in make_splits(loaded, (0.6, 0.2, 0.2), seed=0).items()}
    again = {s: _ids(src) for s, src in make_splits(loaded, (0.6, 0.2, 0.2), seed=0).items()}
    other = {s: _ids(src) for s, src in make_splits(loaded, (0.6, 0.2, 0.2), seed=1).items()}
    assert first == again
    assert first != other


def test_loader_splits_are_passed_through() -> None:
    train, val, test = IdSource(5), IdSource(2), IdSource(3)
    splits = make_splits(LoadedData(["a"], {"train": train, "val": val, "test": test}), (0.6, 0.2, 0.2), seed=0)
    assert splits["train"] is train and splits["val"] is val and splits["test"] is test


def test_empty_source_is_an_error() -> None:
    with pytest.raises(DataError, match="no samples"):
        make_splits(LoadedData(["a"], {"all": IdSource(0)}), (0.6, 0.2, 0.2), seed=0)


def test_too_few_samples_for_the_split_is_an_error() -> None:
    with pytest.raises(DataError, match="too few"):
        make_splits(LoadedData(["a"], {"all": IdSource(2)}), (0.0, 0.5, 0.5), seed=0)


def test_all_together_with_train_is_an_error() -> None:
    with pytest.raises(DataError, match="'all'"):
        make_splits(LoadedData(["a"], {"all": IdSource(4), "train": IdSource(4)}), (0.6, 0.2, 0.2), seed=0)


def test_subset_fingerprint_depends_on_indices() -> None:
    source = IdSource(10)
    base = SubsetSource(source, [0, 1, 2]).fingerprint()
    assert SubsetSource(source, [0, 1, 2]).fingerprint() == base
    assert SubsetSource(source, [0, 1, 3]).fingerprint() != base
    assert SubsetSource(source, [0, 1]).fingerprint() != base
    assert SubsetSource(IdSource(11), [0, 1, 2]).fingerprint() != base
    assert _ids(SubsetSource(source, [7, 2])) == [7, 2]


# ----------------------------------------------------------------------------
# collate
# ----------------------------------------------------------------------------


def _item(h: int = 4, w: int = 6, **targets: Any) -> dict[str, Any]:
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8), "meta": {"id": "x", "orig_size": (h, w)}, **targets}


def test_collate_classification_stacks_labels() -> None:
    items = [_item(label=i) for i in (2, 0, 1)]  # an int per item, one tensor per batch
    items[1]["image"][:] = 7
    batch = collate(items)
    assert batch["image"].shape == (3, 3, 4, 6) and batch["image"].dtype == torch.uint8
    assert batch["image"][1].unique().tolist() == [7]
    assert batch["label"].tolist() == [2, 0, 1] and batch["label"].dtype == torch.int64
    assert [m["orig_size"] for m in batch["meta"]] == [(4, 6)] * 3
    assert "boxes" not in batch and "mask" not in batch


def test_collate_segmentation_stacks_masks() -> None:
    items = [_item(mask=torch.full((4, 6), v, dtype=torch.int64)) for v in (0, 255)]
    batch = collate(items)
    assert batch["mask"].shape == (2, 4, 6)
    assert batch["mask"][:, 0, 0].tolist() == [0, 255]


def test_collate_detection_keeps_per_image_lists() -> None:
    boxes = [
        torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[0.5, 0.5, 5.0, 3.0]]),
    ]
    labels = [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64), torch.tensor([3])]
    batch = collate([_item(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)])
    assert batch["image"].shape == (3, 3, 4, 6)
    assert isinstance(batch["boxes"], list) and isinstance(batch["labels"], list)
    assert [tuple(b.shape) for b in batch["boxes"]] == [(2, 4), (0, 4), (1, 4)]
    assert [lab.tolist() for lab in batch["labels"]] == [[1, 2], [], [3]]
    assert torch.equal(batch["boxes"][0], boxes[0]) and torch.equal(batch["boxes"][2], boxes[2])
    assert [d.tolist() for d in batch["difficult"]] == [[False, False], [], [False]]


# ----------------------------------------------------------------------------
# transform_sample + build_transform
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_resize_to_input_size(task: str) -> None:
    sample: Sample = {"id": "s0", "image": _random_image(30, 20)}
    if task == "classification":
        sample["label"] = 3
    elif task == "segmentation":
        sample["mask"] = np.zeros((30, 20), np.int64)
    else:
        sample["boxes"] = np.array([[2, 3, 10, 12]], np.float32)
        sample["labels"] = np.array([1], np.int64)
    item = _apply(sample, task, (12, 16))
    assert item["image"].shape == (3, 12, 16) and item["image"].dtype == torch.uint8
    assert item["meta"] == {"id": "s0", "orig_size": (30, 20)}
    if task == "classification":
        assert item["label"] == 3 and isinstance(item["label"], int)  # collate makes the batch tensor
    elif task == "segmentation":
        assert item["mask"].shape == (12, 16) and item["mask"].dtype == torch.uint8  # int64 on the device
    else:
        assert item["boxes"].shape == (1, 4) and item["labels"].tolist() == [1]


def test_image_channels_are_kept_in_order() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    item = _apply({"id": "c", "image": image, "label": 0}, "classification", (4, 4))
    assert [item["image"][c].unique().tolist() for c in range(3)] == [[10], [20], [30]]


def test_segmentation_mask_resize_is_nearest() -> None:
    # 2×2 blocks of 2×2 pixels: any nearest-neighbour downscale by 2 gives the block values
    mask = np.kron(np.array([[0, 3], [255, 1]], np.int64), np.ones((2, 2), np.int64))
    item = _apply({"id": "m", "image": _random_image(4, 4), "mask": mask}, "segmentation", (2, 2))
    assert item["mask"].tolist() == [[0, 3], [255, 1]]
    # a checkerboard of 0 / 3 / 255 resized up and down: no interpolated values appear
    checker = np.choose(np.indices((5, 7)).sum(0) % 3, [0, 3, 255]).astype(np.int64)
    for size in [(13, 11), (3, 4)]:
        item = _apply({"id": "m", "image": _random_image(5, 7), "mask": checker}, "segmentation", size)
        assert item["mask"].shape == size
        assert set(item["mask"].unique().tolist()) <= {0, 3, 255}


def test_segmentation_masks_stay_compact_until_the_device() -> None:
    from vision_pipe.data import PipelineDataModule, collate

    for dtype in (np.uint8, np.int64):
        mask = np.array([[0, 1], [2, 255]], dtype)
        item = _apply({"id": "m", "image": _random_image(2, 2), "mask": mask}, "segmentation", (2, 2))
        assert item["mask"].dtype == torch.uint8 and item["mask"].tolist() == [[0, 1], [2, 255]]
    batch = collate([item, item], "segmentation")
    assert batch["mask"].dtype == torch.uint8
    dm = PipelineDataModule({}, "segmentation", (2, 2), [], batch_size=2, num_workers=0)
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["mask"].dtype == torch.int64 and moved["mask"][1].tolist() == [[0, 1], [2, 255]]
    wide = _apply({"id": "w", "image": _random_image(2, 2), "mask": np.array([[0, 300], [2, 255]])}, "segmentation", (2, 2))
    assert collate([wide], "segmentation")["mask"].dtype == torch.int64  # ids above 255 stay wide


def _detection_sample(boxes: list[list[float]], labels: list[int]) -> Sample:
    # 100 wide, 50 high
    return {
        "id": "d",
        "image": _random_image(50, 100),
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
    }


def test_detection_boxes_scale_with_the_resize() -> None:
    # input_size is (H, W). 100×50 (W×H) → 50×50: x × 0.5, y × 1
    item = _apply(_detection_sample([[10, 10, 50, 30]], [4]), "detection", (50, 50))
    assert item["boxes"].tolist() == [pytest.approx([5.0, 10.0, 25.0, 30.0])]
    assert item["labels"].tolist() == [4] and item["labels"].dtype == torch.int64
    # → H 40, W 25: x × 0.25, y × 0.8
    item = _apply(_detection_sample([[10, 10, 50, 30], [0, 0, 100, 50]], [1, 2]), "detection", (40, 25))
    assert item["boxes"].tolist() == [
        pytest.approx([2.5, 8.0, 12.5, 24.0]),
        pytest.approx([0.0, 0.0, 25.0, 40.0]),
    ]
    assert item["boxes"].dtype == torch.float32 and item["labels"].tolist() == [1, 2]


def test_detection_without_boxes() -> None:
    item = _apply(_detection_sample([], []), "detection", (50, 50))
    assert tuple(item["boxes"].shape) == (0, 4) and tuple(item["labels"].shape) == (0,)
    assert item["labels"].dtype == torch.int64


def test_horizontal_flip_moves_boxes() -> None:
    # after the resize to 50×50 the box is [5, 10, 25, 30]; flipped in a 50-wide image: x → 50 - x
    item = _apply(_detection_sample([[10, 10, 50, 30]], [4]), "detection", (50, 50), [A.HorizontalFlip(p=1)])
    assert item["boxes"].tolist() == [pytest.approx([25.0, 10.0, 45.0, 30.0])]
    # and the image is flipped with it
    plain = _apply(_detection_sample([[10, 10, 50, 30]], [4]), "detection", (50, 50))
    assert torch.equal(item["image"], plain["image"].flip(-1))


def test_horizontal_flip_moves_mask_with_image() -> None:
    mask = np.zeros((4, 6), np.int64)
    mask[:, :2] = 1
    sample: Sample = {"id": "m", "image": _random_image(4, 6), "mask": mask}
    item = _apply(sample, "segmentation", (4, 6), [A.HorizontalFlip(p=1)])
    assert item["mask"][:, 4:].unique().tolist() == [1] and item["mask"][:, :4].unique().tolist() == [0]


def _augmented(augs: list[Any], seed: int) -> torch.Tensor:
    sample: Sample = {"id": "r", "image": _random_image(16, 16, seed=7), "label": 0}
    return _apply(sample, "classification", (16, 16), augs, seed=seed)["image"]


def test_random_crop_is_reproducible_under_torch_seed() -> None:
    augs = [A.PadIfNeeded(min_height=24, min_width=24), A.RandomCrop(height=16, width=16)]
    for seed in range(3):
        assert torch.equal(_augmented(augs, seed), _augmented(augs, seed))
    # 81 possible crop positions: several seeds do not all land on the same one
    assert len({_augmented(augs, seed).numpy().tobytes() for seed in range(6)}) > 1


def test_affine_is_reproducible_under_torch_seed() -> None:
    augs = [A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), p=1.0)]
    assert torch.equal(_augmented(augs, 0), _augmented(augs, 0))
    assert torch.equal(_augmented(augs, 5), _augmented(augs, 5))
    assert not torch.equal(_augmented(augs, 0), _augmented(augs, 1))


def test_one_transform_reused_is_reproducible() -> None:
    """The same Compose object (as in one worker) gives the same output per seed, whatever ran before."""
    transform = build_transform("classification", (16, 16), [A.Affine(rotate=(-30, 30), p=1.0)])
    sample: Sample = {"id": "r", "image": _random_image(16, 16, seed=7), "label": 0}
    outputs = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        outputs.append(transform_sample(sample, "classification", transform, (16, 16))["image"])
    assert torch.equal(outputs[0], outputs[2]) and not torch.equal(outputs[0], outputs[1])


def test_a_batch_is_seeded_once_from_torch_and_repeats_under_the_same_seed() -> None:
    """The DataLoader fetches a batch with ``__getitems__``: one draw from torch's RNG seeds the batch."""
    from vision_pipe.data import PipelineDataset, draw_seed

    class SameImage(IdSource):  # one image at every index: outputs differ by their augmentation only
        def __getitem__(self, index: int) -> Sample:
            return {"id": str(index), "image": _random_image(16, 16, seed=7), "label": 0}

    transform = build_transform("classification", (16, 16), [A.Affine(rotate=(-30, 30), p=1.0), A.HorizontalFlip()])
    ds = PipelineDataset(SameImage(6), "classification", transform, (16, 16))

    def batch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        images = [item["image"] for item in ds.__getitems__([4, 1, 3])]
        after_batch = torch.randint(0, 2**31 - 1, ()).item()
        torch.manual_seed(seed)
        draw_seed()
        assert torch.randint(0, 2**31 - 1, ()).item() == after_batch  # the batch took exactly one draw
        return images

    first, again, other = batch(0), batch(0), batch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not torch.equal(first[0], first[1])  # the batch's samples draw different augmentations


def test_augmentation_changing_the_size_is_an_error() -> None:
    sample: Sample = {"id": "img_042.png", "image": _random_image(20, 20), "label": 0}
    with pytest.raises(DataError) as info:
        _apply(sample, "classification", (16, 16), [A.RandomCrop(height=8, width=8)])
    message = str(info.value)
    assert "img_042.png" in message and "(16, 16)" in message and "(8, 8)" in message


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        [[0, 0], [0, 0]],
    ],
    ids=["float", "2d", "rgba", "list"],
)
def test_bad_loader_image_is_an_error_naming_the_sample(image: Any) -> None:
    with pytest.raises(DataError, match=r"sample_17.*\(H, W, 3\) uint8"):
        _apply({"id": "sample_17", "image": image, "label": 0}, "classification", (8, 8))


# ----------------------------------------------------------------------------
# iter_resized_images and the normalization cache key
# ----------------------------------------------------------------------------


def test_iter_resized_images_streams_resized_uint8() -> None:
    images = [np.full((10, 20, 3), (10, 20, 30), np.uint8), _random_image(8, 12, seed=1), _random_image(30, 7, seed=2)]
    source = ListSource([{"id": str(i), "image": im} for i, im in enumerate(images)])
    it = iter_resized_images(source, (8, 12), num_workers=0)
    assert inspect.isgenerator(it)
    first = next(it)
    assert source.reads == [0], f"images must be read one at a time, read {source.reads}"
    rest = list(it)
    assert source.reads == [0, 1, 2]
    out = [first, *rest]
    assert [(type(im), im.shape, im.dtype) for im in out] == [(np.ndarray, (8, 12, 3), np.uint8)] * 3
    assert np.all(out[0] == np.array([10, 20, 30], np.uint8))  # a constant image stays constant
    assert np.array_equal(out[1], images[1])  # already at input_size: unchanged
    assert np.array_equal(out[2], cv2.resize(images[2], (12, 8), interpolation=cv2.INTER_LINEAR))


def test_iter_resized_images_matches_the_training_resize() -> None:
    """Statistics are fitted on the same pixels the model is fed (without augmentation)."""
    image = _random_image(31, 17, seed=3)
    fitted = next(iter_resized_images(ListSource([{"id": "0", "image": image}]), (12, 20), num_workers=0))
    fed = _apply({"id": "0", "image": image, "label": 0}, "classification", (12, 20))["image"]
    assert np.array_equal(fitted, fed.permute(1, 2, 0).numpy())


def test_iter_resized_images_checks_images() -> None:
    source = ListSource([{"id": "bad_one", "image": np.zeros((8, 8), np.uint8)}])
    with pytest.raises(DataError, match="bad_one"):
        list(iter_resized_images(source, (8, 8), num_workers=0))


def test_normalization_fingerprint() -> None:
    source = ListSource([], fingerprint="data-v1")
    stage = {"name": "mean_image", "params": {"size": [4, 4], "mode": "per_pixel"}}
    base = normalization_fingerprint(source, (16, 16), stage)
    # stable: same inputs, equal dicts in another key order, a fresh source with the same fingerprint
    assert normalization_fingerprint(source, (16, 16), dict(stage)) == base
    reordered = {"params": {"mode": "per_pixel", "size": [4, 4]}, "name": "mean_image"}
    assert normalization_fingerprint(ListSource([], fingerprint="data-v1"), [16, 16], reordered) == base
    # changes with the input size, the stage, its parameters and the data
    changed = [
        normalization_fingerprint(source, (16, 32), stage),
        normalization_fingerprint(source, (32, 16), stage),
        normalization_fingerprint(source, (16, 16), {**stage, "name": "channel_stats"}),
        normalization_fingerprint(source, (16, 16), {**stage, "params": {"size": [4, 4], "mode": "per_channel"}}),
        normalization_fingerprint(ListSource([], fingerprint="data-v2"), (16, 16), stage),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert isinstance(base, str) and len(base) >= 16


# ----------------------------------------------------------------------------
# io.read_image
# ----------------------------------------------------------------------------


def _write(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    buf.tofile(path)
    return path


def test_read_png_is_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((3, 5, 3), np.uint8)
    bgr[...] = (0, 0, 255)  # pure red in OpenCV's BGR order
    assert cv2.imwrite(str(tmp_path / "red.png"), bgr)
    image = read_image(tmp_path / "red.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    assert image.reshape(-1, 3).tolist() == [[255, 0, 0]] * 15


def test_read_grayscale_gives_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = read_image(_write(tmp_path / "gray.png", gray))
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(image[..., c], gray)


def test_read_rgba_drops_alpha(tmp_path: Path) -> None:
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[...] = (0, 0, 255, 128)  # red, half transparent
    image = read_image(_write(tmp_path / "rgba.png", bgra))
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    assert image.reshape(-1, 3).tolist() == [[255, 0, 0]] * 6


def test_read_16_bit_is_scaled_to_uint8(tmp_path: Path) -> None:
    gray16 = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    image = read_image(_write(tmp_path / "gray16.png", gray16))
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert image[..., 0].tolist() == [[0, 100], [255, 7]]
    bgr16 = np.zeros((1, 2, 3), np.uint16)
    bgr16[0, 0] = (0, 0, 65535)
    bgr16[0, 1] = (257 * 10, 257 * 20, 257 * 30)
    image = read_image(_write(tmp_path / "color16.png", bgr16))
    assert image.tolist() == [[[255, 0, 0], [30, 20, 10]]]


def test_read_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "missing.png"
    with pytest.raises(DataError, match="missing") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not an image\n", b""], ids=["text", "empty"])
def test_read_invalid_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a valid image") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_read_non_ascii_file_name(tmp_path: Path) -> None:
    folder = tmp_path / "données"
    folder.mkdir()
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[...] = (255, 0, 0)  # blue
    path = _write(folder / "日本語 ümlaut.png", bgr)
    assert read_image(path).reshape(-1, 3).tolist() == [[0, 0, 255]] * 4
    assert read_image(str(path)).shape == (2, 2, 3)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only an Orientation tag after the JPEG's SOI marker."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_read_jpeg_applies_exif_orientation(tmp_path: Path) -> None:
    bgr = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half red
    bgr[:, :20] = (0, 0, 255)
    ok, buf = cv2.imencode(".jpg", bgr)
    assert ok
    path = tmp_path / "portrait.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # 6: rotate 90° clockwise to display
    assert cv2.imread(str(path)).shape == (40, 20, 3)  # OpenCV's own default applies it
    image = read_image(path)
    assert image.shape == (40, 20, 3)
    # rotated clockwise, the left half (red) becomes the top half
    assert image[5, 10, 0] > 200 and image[35, 10, 0] < 50


# ----------------------------------------------------------------------------
# detection: difficult flags and the box visibility rules
# ----------------------------------------------------------------------------


def test_difficult_flags_follow_their_boxes_through_augmentation() -> None:
    sample: Sample = {
        "id": "d",
        "image": _random_image(20, 20),
        "boxes": np.array([[0, 0, 4, 4], [10, 10, 20, 20]], np.float32),
        "labels": np.array([0, 1]),
        "difficult": np.array([False, True]),
    }
    item = transform_sample(
        sample, "detection", build_transform("detection", (20, 20), [A.HorizontalFlip(p=1)]), (20, 20)
    )
    assert item["boxes"].tolist() == [[16, 0, 20, 4], [0, 10, 10, 20]]
    assert item["labels"].tolist() == [0, 1] and item["difficult"].tolist() == [False, True]
    plain = {k: v for k, v in sample.items() if k != "difficult"}
    item = transform_sample(plain, "detection", build_transform("detection", (20, 20), []), (20, 20))
    assert item["difficult"].tolist() == [False, False]


def test_box_rules_drop_mostly_hidden_boxes_in_training_only() -> None:
    from vision_pipe.config import BoxRules

    # a crop of the left half: box 0 stays whole, box 1 keeps 2/10 of its width, box 2 keeps 6/10
    sample: Sample = {
        "id": "v",
        "image": _random_image(20, 40),
        "boxes": np.array([[2, 2, 8, 8], [18, 0, 28, 10], [14, 10, 24, 20]], np.float32),
        "labels": np.array([0, 1, 2]),
    }
    crop = A.Crop(x_min=0, y_min=0, x_max=20, y_max=20)
    train = build_transform("detection", (20, 40), [crop, A.Resize(20, 40)], boxes=BoxRules(min_visibility=0.3))
    item = transform_sample(sample, "detection", train, (20, 40))
    assert item["labels"].tolist() == [0, 2]
    assert item["boxes"][1].tolist() == [28, 10, 40, 20]  # clipped at the crop's edge, then scaled x2
    keep_all = build_transform("detection", (20, 40), [crop, A.Resize(20, 40)])  # no rules: nothing dropped
    assert transform_sample(sample, "detection", keep_all, (20, 40))["labels"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(("n", "dropped"), [(17, True), (18, False), (16, False), (1, False)])
def test_a_last_training_batch_of_one_image_is_dropped(n: int, dropped: bool) -> None:
    from vision_pipe.data import PipelineDataModule

    splits = {s: IdSource(n) for s in ("train", "val", "test")}
    dm = PipelineDataModule(splits, "classification", (4, 4), [], batch_size=16, num_workers=0)
    sizes = [len(b["label"]) for b in dm.train_dataloader()]
    assert sum(sizes) == n - (1 if dropped else 0)
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == n  # evaluation sees every sample


def test_training_drops_a_last_batch_of_one_image_per_process() -> None:
    from vision_pipe.data import drops_last_batch

    assert drops_last_batch(17, 16) and not drops_last_batch(18, 16) and not drops_last_batch(1, 16)
    # 2 processes share 34 samples as 17 + 17: each has a last batch of one, the whole split (34 = 2·16 + 2) not
    assert drops_last_batch(34, 16, world_size=2) and not drops_last_batch(34, 16)
    # 33 samples: one process ends on a single image; 2 processes get 17 each (DistributedSampler pads)
    assert drops_last_batch(33, 16) and drops_last_batch(33, 16, world_size=2)
    assert not drops_last_batch(36, 16, world_size=2) and not drops_last_batch(36, 16, world_size=1)


def test_workers_are_each_local_processes_share_of_the_allowed_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from vision_pipe import data

    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert data.cpu_count() == 64
    assert data.default_num_workers() == 63  # no cap of 8: a big node feeds its GPU with every core
    assert data.default_num_workers(4) == 15 and data.default_num_workers(128) == 0
    assert data.local_processes({"devices": 4}) == 4 and data.local_processes({"devices": [0, 2]}) == 2
    assert data.local_processes({"devices": "3"}) == 3
    assert data.local_processes({"devices": "auto", "accelerator": "cpu"}) == 1
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8(x2)")
    assert data.local_processes({"devices": 1}) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's count wins
    assert data.local_processes({}) == 2


def _target_item(task: str, i: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "image": torch.zeros(3, 4, 4, dtype=torch.uint8),
        "meta": {"id": str(i), "orig_size": (4, 4)},
    }
    if task == "detection":
        n = i  # 0, 1, 2 objects
        item["boxes"] = torch.tensor([[0.0, 0.0, 2.0 + k, 3.0] for k in range(n)]).reshape(-1, 4)
        item["labels"] = torch.arange(n, dtype=torch.int64)
        item["difficult"] = torch.tensor([k == 1 for k in range(n)], dtype=torch.bool)
    else:
        item["mask"] = torch.full((4, 4), i, dtype=torch.int64)
        item["mask"][0, 0] = 255
    return item


def test_detection_targets_are_packed_for_the_device_and_lists_stay_on_the_host() -> None:
    from vision_pipe.data import PipelineDataModule, collate

    batch = collate([_target_item("detection", i) for i in range(3)], "detection")
    assert batch["box_targets"].shape == (3, 2, 4) and batch["label_targets"].tolist() == [[-1, -1], [0, -1], [0, 1]]
    assert batch["difficult_targets"].tolist() == [[False, False], [False, False], [False, True]]
    assert torch.equal(batch["box_targets"][2], batch["boxes"][2]) and batch["box_targets"][1, 1].tolist() == [0.0] * 4
    dm = PipelineDataModule({}, "detection", (4, 4), [], batch_size=3, num_workers=0)
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["boxes"] is batch["boxes"] and moved["meta"] is batch["meta"]  # lists are not walked


def test_masks_travel_as_uint8_and_arrive_as_int64() -> None:
    from vision_pipe.data import PipelineDataModule, collate

    batch = collate([_target_item("segmentation", i) for i in range(2)], "segmentation")
    assert batch["mask"].dtype == torch.uint8 and batch["mask"][0, 0, 0] == 255
    dm = PipelineDataModule({}, "segmentation", (4, 4), [], batch_size=2, num_workers=0)
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["mask"].dtype == torch.int64 and moved["mask"][1].tolist()[1] == [1] * 4
    big = _target_item("segmentation", 0)
    big["mask"][1, 1] = 300  # ids of a 16-bit mask stay int64
    assert collate([big], "segmentation")["mask"].dtype == torch.int64


def test_seeded_transforms_repeat_their_draws_and_transforms_draw_independently() -> None:
    from vision_pipe.data import seed_transform

    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])

    def flipped(seed: int) -> tuple[bool, bool]:
        seed_transform(flips, seed)
        out = flips(image=image)["image"]
        for horizontal, vertical in ((False, False), (True, False), (False, True), (True, True)):
            axes = tuple(axis for axis, on in ((1, horizontal), (0, vertical)) if on)
            if np.array_equal(out, np.flip(image, axes) if axes else image):
                return horizontal, vertical
        raise AssertionError("not a flip of the image")

    outcomes = [flipped(seed) for seed in range(64)]
    assert outcomes == [flipped(seed) for seed in range(64)]  # the same seed, the same draws
    # the two flips draw independently: all four combinations occur (albumentations' own seeding,
    # one generator per transform with the same seed, would flip both or neither)
    assert set(outcomes) == {(False, False), (True, False), (False, True), (True, True)}
