"""Masks and boxes stay aligned with the image under augmentation.

A scene of known coloured rectangles is drawn together with its mask (class 1,
class 2 and an 'ignore' (255) patch) and its boxes; after
:func:`vision_pipe.data.build_transform` + :func:`vision_pipe.data.transform_sample`
each image pixel is classified by its nearest scene colour, and that map must
coincide with the transformed mask (IoU ≥ 0.95 per region: the image is
interpolated bilinearly, the mask with nearest neighbour, so edges may differ by
a pixel) and the transformed boxes with the bounding rectangles of the colours.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from vision_pipe.data import build_transform, transform_sample

H, W = 72, 96  #: scene size (rows, columns), also the pipeline's input size
BACKGROUND, RED, GREEN, BLUE, BLACK = (40, 40, 40), (230, 40, 40), (40, 220, 60), (40, 60, 230), (0, 0, 0)
#: Scene colours and the mask value each stands for (BLACK: the border fill of warps = background).
COLOR_CLASS = {BACKGROUND: 0, BLACK: 0, RED: 1, GREEN: 2, BLUE: 255}
#: (x1, y1, x2, y2) edges of the rectangles, their colour and mask value / box label.
RECTS = (((20, 14, 60, 42), RED, 1), ((64, 48, 88, 64), GREEN, 2), ((4, 48, 16, 66), BLUE, 255))
MASK_VALUES = {0, 1, 2, 255}
MIN_IOU = 0.95
#: Below this many pixels (union of mask and colour), a region cropped to a sliver is
#: compared by count instead: at most SLIVER_PIXELS may differ.
SMALL_REGION, SLIVER_PIXELS = 100, 3
SEEDS = range(3)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image of the rectangles and the (H, W) int64 mask of the same regions."""
    image = np.empty((H, W, 3), np.uint8)
    image[:] = BACKGROUND
    mask = np.zeros((H, W), np.int64)
    for (x1, y1, x2, y2), color, value in RECTS:
        image[y1:y2, x1:x2] = color
        mask[y1:y2, x1:x2] = value
    return image, mask


def classify(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) image → (H, W) mask value of the nearest scene colour at each pixel."""
    colors = np.array(list(COLOR_CLASS), np.float64)  # (K, 3)
    values = np.array(list(COLOR_CLASS.values()))
    distance = ((image[:, :, None, :].astype(np.float64) - colors) ** 2).sum(axis=-1)  # (H, W, K)
    return values[distance.argmin(axis=-1)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean maps; 1.0 when both are empty (the region was cropped away in both)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def augment(task: str, transforms: list[A.BasicTransform], seed: int, size: tuple[int, int] = (H, W), **sample):
    """Run the pipeline's per-sample transform (resize to ``size``, then ``transforms``) on the scene."""
    torch.manual_seed(seed)  # transform_sample draws the augmentation seed from torch's RNG
    image, mask = scene()
    inputs = {"image": image, "id": "scene", **sample}
    if task == "segmentation":
        inputs["mask"] = mask
    out = transform_sample(inputs, task, build_transform(task, size, transforms), size)
    out["image"] = out["image"].numpy().transpose(1, 2, 0)  # (H, W, 3)
    return out


def region_ious(out: dict) -> dict[int, float]:
    """IoU per mask value between the transformed mask and the classified transformed image."""
    seen = classify(out["image"])
    mask = out["mask"].numpy()
    return {v: round(iou(mask == v, seen == v), 3) for v in (1, 2, 255)}


def assert_aligned(out: dict) -> None:
    """Each region of the mask coincides with its colour: IoU ≥ MIN_IOU, or a sliver off by ≤ SLIVER_PIXELS."""
    seen = classify(out["image"])
    mask = out["mask"].numpy()
    for v in (1, 2, 255):
        a, b = mask == v, seen == v
        if np.count_nonzero(a | b) < SMALL_REGION:
            assert np.count_nonzero(a ^ b) <= SLIVER_PIXELS, (v, np.count_nonzero(a), np.count_nonzero(b))
        else:
            assert iou(a, b) >= MIN_IOU, (v, iou(a, b))


# -- masks ------------------------------------------------------------------------------

GEOMETRIC: dict[str, Callable[[], list[A.BasicTransform]]] = {
    "HorizontalFlip": lambda: [A.HorizontalFlip(p=1.0)],
    "VerticalFlip": lambda: [A.VerticalFlip(p=1.0)],
    "RandomCrop+PadIfNeeded": lambda: [
        A.RandomCrop(56, 72, p=1.0),
        A.PadIfNeeded(H, W, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0),
    ],
    "Affine": lambda: [A.Affine(rotate=(20, 30), scale=(0.8, 0.9), translate_percent=(0.05, 0.1), p=1.0)],
    "SafeRotate": lambda: [A.SafeRotate(limit=(20, 30), p=1.0)],
    "Perspective": lambda: [A.Perspective(scale=(0.05, 0.1), p=1.0)],
    "ElasticTransform": lambda: [A.ElasticTransform(alpha=30, sigma=5, p=1.0)],
    "GridDistortion": lambda: [A.GridDistortion(p=1.0)],
    "RandomResizedCrop (nearest-exact)": lambda: [
        A.RandomResizedCrop(size=(H, W), scale=(0.4, 0.8), mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0)
    ],
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_follows_geometric_transforms(name: str, seed: int) -> None:
    out = augment("segmentation", GEOMETRIC[name](), seed)
    mask = out["mask"].numpy()
    assert not np.array_equal(mask, scene()[1]), "the transform left the mask as it was: the test proves nothing"
    assert set(np.unique(mask).tolist()) <= MASK_VALUES  # nearest neighbour: no new values
    assert_aligned(out)


def test_flips_move_the_mask_exactly() -> None:
    _, mask = scene()
    flipped = augment("segmentation", [A.HorizontalFlip(p=1.0)], 0)["mask"].numpy()
    np.testing.assert_array_equal(flipped, mask[:, ::-1])
    assert flipped[14, W - 1 - 20] == 1 and flipped[14, 20] == 0  # hand check: column x → W - 1 - x
    flipped = augment("segmentation", [A.VerticalFlip(p=1.0)], 0)["mask"].numpy()
    np.testing.assert_array_equal(flipped, mask[::-1])


@pytest.mark.parametrize(
    "transform",
    [
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=1.0),
        A.RandomBrightnessContrast(p=1.0),
        A.HueSaturationValue(p=1.0),
        A.GaussNoise(p=1.0),
        A.Blur(p=1.0),
    ],
    ids=lambda t: type(t).__name__,
)
def test_colour_transforms_leave_masks_and_boxes_untouched(transform: A.BasicTransform) -> None:
    image, mask = scene()
    out = augment("segmentation", [transform], 0)
    assert not np.array_equal(out["image"], image), "the transform left the image as it was"
    np.testing.assert_array_equal(out["mask"].numpy(), mask)
    boxes = np.array([r[0] for r in RECTS[:2]], np.float32)
    out = augment("detection", [transform], 0, boxes=boxes, labels=np.array([1, 2]))
    np.testing.assert_array_equal(out["boxes"].numpy(), boxes)


# Resizing masks with OpenCV's INTER_NEAREST (albumentations' default mask_interpolation)
# samples source pixel floor(x * scale) while the bilinear image samples around
# (x + 0.5) * scale - 0.5: the mask shifts by up to half a source pixel. INTER_NEAREST_EXACT
# samples floor((x + 0.5) * scale), aligned with the image; build_transform uses it.


@pytest.mark.parametrize("size", [(48, 64), (36, 48), (100, 130)])
def test_resize_keeps_the_mask_aligned_with_exact_nearest(size: tuple[int, int]) -> None:
    image, mask = scene()
    out = A.Compose([A.Resize(*size, mask_interpolation=cv2.INTER_NEAREST_EXACT)])(image=image, mask=mask)
    assert_aligned({"image": out["image"], "mask": torch.from_numpy(out["mask"])})


@pytest.mark.parametrize("size", [(48, 64), (100, 130)])
def test_resize_to_input_size_keeps_the_mask_aligned(size: tuple[int, int]) -> None:
    assert_aligned(augment("segmentation", [], 0, size=size))


def test_random_resized_crop_with_default_interpolation_keeps_the_mask_aligned() -> None:
    worst = min(
        min(region_ious(augment("segmentation", [A.RandomResizedCrop(size=(H, W), scale=(0.4, 0.8))], s)).values())
        for s in range(5)
    )
    assert worst >= MIN_IOU


# -- boxes ------------------------------------------------------------------------------


def color_boxes(image: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """Bounding rectangle (x1, y1, x2, y2 edges) of each box label's colour in ``image``, if present."""
    seen = classify(image)
    found = {}
    for label in (1, 2):
        x, y, w, h = cv2.boundingRect((seen == label).astype(np.uint8))
        if w and h:
            found[label] = (x, y, x + w, y + h)
    return found


BOX_TRANSFORMS: dict[str, tuple[Callable[[], list[A.BasicTransform]], float]] = {
    # name: (transforms, tolerance in pixels)
    "HorizontalFlip": (lambda: [A.HorizontalFlip(p=1.0)], 1e-3),
    "VerticalFlip": (lambda: [A.VerticalFlip(p=1.0)], 1e-3),
    "RandomCrop+PadIfNeeded": (
        lambda: [
            A.RandomCrop(56, 72, p=1.0),
            A.PadIfNeeded(H, W, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        ],
        1e-3,
    ),
    "RandomResizedCrop": (lambda: [A.RandomResizedCrop(size=(H, W), scale=(0.5, 0.9), p=1.0)], 1.0),
    "Affine (scale, translate)": (lambda: [A.Affine(scale=(0.8, 0.9), translate_percent=(0.05, 0.1), p=1.0)], 1.0),
    # rotating a box grows it in general; for these rectangles the rotated corners' box is the colour's box
    "Affine (rotate, scale, translate)": (
        lambda: [A.Affine(rotate=(20, 30), scale=(0.8, 0.9), translate_percent=(0.05, 0.1), p=1.0)],
        1.5,
    ),
}


@pytest.mark.parametrize("name", list(BOX_TRANSFORMS))
@pytest.mark.parametrize("seed", SEEDS)
def test_boxes_follow_geometric_transforms(name: str, seed: int) -> None:
    transforms, tolerance = BOX_TRANSFORMS[name]
    boxes = np.array([r[0] for r in RECTS[:2]], np.float32)
    out = augment("detection", transforms(), seed, boxes=boxes, labels=np.array([1, 2]))
    expected = color_boxes(out["image"])
    got = {int(label): box for label, box in zip(out["labels"].tolist(), out["boxes"].numpy(), strict=True)}
    assert set(got) == set(expected)  # a box is dropped exactly when its rectangle left the image
    assert got, "every box was cropped away: the test proves nothing"
    for label, box in got.items():
        np.testing.assert_allclose(box, expected[label], atol=tolerance, err_msg=f"label {label}")


def test_horizontal_flip_gives_the_hand_computed_boxes() -> None:
    boxes = np.array([r[0] for r in RECTS[:2]], np.float32)
    out = augment("detection", [A.HorizontalFlip(p=1.0)], 0, boxes=boxes, labels=np.array([1, 2]))
    # x1' = W - x2, x2' = W - x1 (edges), y unchanged
    np.testing.assert_allclose(out["boxes"].numpy(), [[36, 14, 76, 42], [8, 48, 32, 64]], atol=1e-4)
