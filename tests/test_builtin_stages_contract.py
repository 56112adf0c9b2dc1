"""Every stage of the default plugin manager passes the testing kit a plugin author would use.

Parametrized over whatever the registry holds when the tests are collected,
so stages added later are checked without touching this file. Loaders that
need data get parameters from ``PARAMS``; stages that cannot run here are
skipped with the reason in ``SKIP`` (or, for loaders and transforms with
required parameters, a reason naming them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vision_pipe import KINDS, ContractError
from vision_pipe.plugins import PluginManager
from vision_pipe.registry import StageEntry
from vision_pipe.testing import check_stage

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TESTS = Path(__file__).resolve().parent

#: Parameters per (kind, name): data for loaders, small widths so that big backbones check fast.
PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("loading", "image_folder"): {"root": ASSETS / "imagefolder_tiny"},
    ("loading", "synthetic_shapes"): {"num_images": 12, "size": 32},
    ("loading", "mask_folder"): {
        "images": TESTS / "assets" / "segmentation" / "images",
        "masks": TESTS / "assets" / "segmentation" / "masks",
        "classes": TESTS / "assets" / "segmentation" / "classes.yaml",
    },
    ("loading", "coco"): {
        "annotations": TESTS / "assets" / "detection" / "coco" / "instances.json",
        "images": TESTS / "assets" / "detection" / "coco" / "images",
    },
    ("loading", "csv_list"): {
        "root": TESTS / "assets" / "classification" / "gtsrb",
        "lists": {"train": "Final_Training/Images/*/GT-*.csv", "test": "Final_Test/Images/GT-final_test.csv"},
        "crop_roi": True,
    },
    ("loading", "voc"): {"root": TESTS / "assets" / "detection" / "voc"},
    ("loading", "unlabelled_folder"): {"root": ASSETS / "imagefolder_tiny"},
    ("loading", "yolo"): {
        "images": TESTS / "assets" / "detection" / "yolo" / "images",
        "classes": TESTS / "assets" / "detection" / "yolo" / "classes.txt",
    },
    ("backbone", "vgg"): {"width": 8},
    ("backbone", "resnet"): {"width": 8},
}

_VOLUMES = "a 3D transform of volumes, not of images"
_METADATA = "needs an extra input (reference images, metadata or a cropping box) that a pipeline does not pass"
_DTYPE = "turns the uint8 image into floats; vision-pipe normalizes batches with a normalization stage instead"
#: Stages that cannot be checked on a 32 px RGB image with a mask and a box, and why.
SKIP: dict[tuple[str, str], str] = {
    **{("augmentation", n): _VOLUMES for n in ("CenterCrop3D", "CoarseDropout3D", "CubicSymmetry", "Pad3D", "PadIfNeeded3D", "RandomCrop3D")},
    **{("augmentation", n): _METADATA for n in ("FDA", "HistogramMatching", "Mosaic", "OverlayElements", "PixelDistributionAdaptation", "RandomCropNearBBox")},
    **{("augmentation", n): _DTYPE for n in ("FromFloat", "Normalize", "ToFloat")},
    ("augmentation", "Crop"): "its default crop box (0, 0, 1024, 1024) is larger than a 32 px image",
    ("augmentation", "CropAndPad"): "its defaults are invalid: px or percent must be given",
    ("augmentation", "LongestMaxSize"): "its defaults are invalid: max_size or max_size_hw must be given",
    ("augmentation", "SmallestMaxSize"): "its defaults are invalid: max_size or max_size_hw must be given",
    ("augmentation", "TimeMasking"): "its default mask length (up to 40 px) does not fit a 32 px image",
    ("augmentation", "MaskDropout"): "drops the only object of the check's mask by design, leaving nothing to compare",
}

#: Stages that break their contract today (the check must keep failing until they are fixed).
KNOWN_BROKEN: dict[tuple[str, str], str] = {}

MANAGER = PluginManager()
ENTRIES = MANAGER.registry.entries()


def _skip_reason(entry: StageEntry) -> str | None:
    key = (entry.kind, entry.name)
    if key in SKIP:
        return SKIP[key]
    required = [p.name for p in entry.parameters if p.required and p.name not in PARAMS.get(key, {})]
    if required and entry.kind == "loading":
        return f"needs data params: add to table (PARAMS[{key!r}] for {', '.join(required)})"
    if required:
        return f"needs parameters without defaults: {', '.join(required)}"
    return None


def test_every_kind_is_covered():
    assert {e.kind for e in ENTRIES} == set(KINDS)
    checked = [e for e in ENTRIES if _skip_reason(e) is None]
    assert {e.kind for e in checked} == set(KINDS)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.kind}:{e.name}")
def test_the_stage_keeps_its_kinds_contract(entry: StageEntry, request: pytest.FixtureRequest):
    reason = _skip_reason(entry)
    if reason is not None:
        pytest.skip(reason)
    broken = KNOWN_BROKEN.get((entry.kind, entry.name))
    if broken is not None:
        request.applymarker(pytest.mark.xfail(raises=ContractError, strict=True, reason=broken))
    check_stage(entry, **PARAMS.get((entry.kind, entry.name), {}))
