"""The decode-once image cache (``data.cache``): same batches as uncached, disk reuse, atomic writes, invalidation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytest
import torch

from vision_pipe import ConfigError, Pipeline
from vision_pipe import image_cache as ic
from vision_pipe.data import PipelineDataset, build_transform
from vision_pipe.errors import DataError
from vision_pipe.stages import Sample, SampleSource

INPUT = (24, 20)


class ListSource(SampleSource):
    """Random images of varying sizes (none at the input size); counts reads."""

    def __init__(self, n: int, seed: int = 0, segmentation: bool = False, fail_at: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.items: list[dict[str, Any]] = []
        for i in range(n):
            h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
            item: dict[str, Any] = {"id": f"img{i}.png", "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
            if segmentation:
                item["mask"] = rng.integers(0, 3, (h, w)).astype(np.int64)
            else:
                item["label"] = np.int64(i % 3)
            self.items.append(item)
        self.seed, self.reads, self.fail_at = seed, 0, fail_at

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        self.reads += 1
        if index == self.fail_at:
            raise DataError(f"img{index}.png: killed mid-way")
        return dict(self.items[index])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        return f"list-{len(self.items)}-{self.seed}"


AUGMENT = [
    A.HorizontalFlip(p=0.5),
    A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), p=0.5),
    A.RandomResizedCrop(size=INPUT, scale=(0.5, 1.0), p=1.0),
    A.ColorJitter(p=0.5),
]


def _items(source: SampleSource, task: str, augment: bool) -> list[dict[str, Any]]:
    transform = build_transform(task, INPUT, copy.deepcopy(AUGMENT) if augment else [])
    ds = PipelineDataset(source, task, transform, INPUT)
    torch.manual_seed(0)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("mode", ["ram", "disk"])
@pytest.mark.parametrize("augment", [True, False])
def test_cached_samples_equal_uncached(task: str, mode: str, augment: bool) -> None:
    source = ListSource(12, segmentation=task == "segmentation")
    cached = ic.cache_splits({"train": source}, INPUT, task, mode, 0)["train"]
    assert isinstance(cached, ic.CachedSource)
    for a, b in zip(_items(source, task, augment), _items(cached, task, augment), strict=True):
        assert a["meta"] == b["meta"]  # orig_size is the decoded image's, not the cached one's
        for key in ("image", "label", "mask"):
            if key in a:
                assert torch.equal(a[key], b[key]), key


def test_cached_run_gives_the_same_metrics(tiny_config: dict[str, Any]) -> None:
    tiny_config["data"]["loader"]["size"] = 20  # resized to 16: the cache holds resized images
    tiny_config["trainer"]["max_epochs"] = 1
    metrics = {}
    for mode in ("none", "ram", "disk"):
        config = copy.deepcopy(tiny_config)
        config["data"]["cache"] = mode
        metrics[mode] = Pipeline.from_dict(config).fit()
    assert metrics["ram"] == metrics["none"] == metrics["disk"]


def test_disk_cache_is_reused_and_keyed_by_input_size(monkeypatch: pytest.MonkeyPatch) -> None:
    source = ListSource(6)
    ic.cache_source(source, INPUT, "classification", "disk", 0)
    reads = source.reads
    assert ic.cache_path(source, INPUT, "classification").is_dir()

    def no_write(*args: Any) -> None:
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(ic, "_write_disk_cache", no_write)
    again = ic.cache_source(source, INPUT, "classification", "disk", 0)
    assert source.reads == reads  # nothing decoded
    assert isinstance(again.images, np.memmap) or isinstance(again.images.base, np.memmap)
    assert ic.cache_path(source, (16, 16), "classification") != ic.cache_path(source, INPUT, "classification")


def test_changed_data_gets_a_new_cache() -> None:
    old, new = ListSource(6, seed=0), ListSource(6, seed=1)
    assert ic.cache_path(old, INPUT, "classification") != ic.cache_path(new, INPUT, "classification")
    ic.cache_source(old, INPUT, "classification", "disk", 0)
    cached = ic.cache_source(new, INPUT, "classification", "disk", 0)
    assert new.reads == 6
    expected = build_transform("classification", INPUT, [])(image=new.items[0]["image"])["image"]
    assert np.array_equal(cached[0]["image"], expected)


def test_a_half_written_cache_is_never_read() -> None:
    source = ListSource(6, fail_at=4)
    path = ic.cache_path(source, INPUT, "classification")
    with pytest.raises(DataError, match="killed mid-way"):
        ic.cache_source(source, INPUT, "classification", "disk", 0)
    assert not path.exists() and list(path.parent.iterdir()) == []  # no final folder, the temporary one removed
    # a leftover temporary folder (a killed process) is not taken for the cache
    (path.parent / f".{path.name}.x.tmp").mkdir()
    source.fail_at = None
    cached = ic.cache_source(source, INPUT, "classification", "disk", 0)
    assert source.reads > 6 and len(cached) == 6 and path.is_dir()


def test_a_broken_cache_is_rebuilt() -> None:
    source = ListSource(4)
    path = ic.cache_path(source, INPUT, "classification")
    ic.cache_source(source, INPUT, "classification", "disk", 0)
    (path / "meta.json").write_text("{")
    assert len(ic.cache_source(source, INPUT, "classification", "disk", 0)) == 4


def test_ram_that_does_not_fit_suggests_disk() -> None:
    with pytest.raises(DataError, match=r"data\.cache: ram needs 2\.0 GB .* use data\.cache: disk"):
        ic.check_fits("ram", 2 * 1024**3, 1024**3, "this machine")
    ic.check_fits("ram", 1024, 1024**3, "this machine")


def test_estimate_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="vision_pipe")
    ic.cache_splits({"train": ListSource(4), "val": ListSource(2, seed=3)}, INPUT, "classification", "ram", 0)
    assert "image cache (ram): 4 train + 2 val samples at 20x24 need 8.4 KB" in caplog.text


def test_detection_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"data\.cache: ram is for classification and segmentation"):
        ic.cache_splits({"train": ListSource(2)}, INPUT, "detection", "ram", 0)


def test_bad_cache_value_names_the_key(tiny_config: dict[str, Any]) -> None:
    tiny_config["data"]["cache"] = "gpu"
    with pytest.raises(ConfigError, match=r"data\.cache"):
        Pipeline.from_dict(tiny_config)


def test_cache_dir_holds_only_complete_folders(tmp_path: Path) -> None:
    source = ListSource(3)
    ic.cache_source(source, INPUT, "classification", "disk", 0)
    folder = ic.cache_path(source, INPUT, "classification")
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "meta.json", "orig_sizes.npy"]
