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

    def __init__(self, n: int, seed: int = 0, task: str = "classification", fail_at: int | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.items: list[dict[str, Any]] = []
        for i in range(n):
            h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
            item: dict[str, Any] = {"id": f"img{i}.png", "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)}
            if task == "segmentation":
                item["mask"] = rng.integers(0, 3, (h, w)).astype(np.int64)
            elif task == "detection":  # 0-3 boxes, one of them reaching past the border (clipped)
                k = int(rng.integers(0, 4))
                x1, y1 = rng.uniform(0, w - 8, k), rng.uniform(0, h - 8, k)
                boxes = np.stack([x1, y1, x1 + rng.uniform(4, 20, k), y1 + rng.uniform(4, 20, k)], 1)
                item["boxes"] = boxes.astype(np.float32).reshape(-1, 4)
                item["labels"] = rng.integers(0, 3, k)
                item["difficult"] = rng.random(k) < 0.3
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


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
@pytest.mark.parametrize("mode", ["ram", "disk"])
@pytest.mark.parametrize("augment", [True, False])
def test_cached_samples_equal_uncached(task: str, mode: str, augment: bool) -> None:
    source = ListSource(12, task=task)
    cached = ic.cache_splits({"train": source}, INPUT, task, mode, 0)["train"]
    assert isinstance(cached, ic.CachedSource)
    for a, b in zip(_items(source, task, augment), _items(cached, task, augment), strict=True):
        assert a["meta"] == b["meta"]  # orig_size is the decoded image's, not the cached one's
        for key in ("image", "label", "mask", "labels", "difficult"):
            if key in a:
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
        if "boxes" in a:  # resized once in the cache, then by an identity resize: equal to float32 rounding
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)


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


def test_auto_caches_a_fit_that_fits_in_memory_only() -> None:
    assert ic.resolve_mode("auto", need=100, free=1000, fitting=True) == "ram"
    assert ic.resolve_mode("auto", need=300, free=1000, fitting=True) == "none"  # over a quarter of the memory
    assert ic.resolve_mode("auto", need=100, free=1000, fitting=False) == "none"  # read once: not worth it
    assert ic.resolve_mode("auto", need=100, free=0, fitting=True) == "none"  # unknown memory
    assert ic.resolve_mode("disk", need=100, free=1000, fitting=False) == "disk"
    source = ListSource(4)
    assert ic.cache_splits({"train": source}, INPUT, "classification", "auto", 0)["train"] is source
    cached = ic.cache_splits({"train": source}, INPUT, "classification", "auto", 0, fitting=True)["train"]
    assert isinstance(cached, ic.CachedSource) and isinstance(cached.images, torch.Tensor)


def test_a_fit_caches_by_default_and_a_test_alone_does_not(tiny_config: dict[str, Any]) -> None:
    pipeline = Pipeline.from_dict(tiny_config)
    pipeline.cache_images(fitting=False)
    dm = pipeline.datamodule
    assert not any(isinstance(s, ic.CachedSource) for s in dm.splits.values())
    pipeline.cache_images()
    assert all(isinstance(s, ic.CachedSource) for s in dm.splits.values() if len(s))


def test_a_truncated_cache_file_is_rebuilt() -> None:
    source = ListSource(4)
    path = ic.cache_path(source, INPUT, "classification")
    expected = np.array(ic.cache_source(source, INPUT, "classification", "disk", 0).images)
    data = (path / "images.npy").read_bytes()
    (path / "images.npy").write_bytes(data[: len(data) // 2])
    rebuilt = ic.cache_source(source, INPUT, "classification", "disk", 0)
    assert np.array_equal(np.asarray(rebuilt.images), expected)
    assert (path / "images.npy").stat().st_size == len(data)


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_worker_processes_read_the_same_cached_arrays(mode: str) -> None:
    source = ListSource(6)
    cached = ic.cache_source(source, INPUT, "classification", mode, 0)
    items, source.items = source.items, []  # a worker that read the source instead of the cache would fail
    loader = torch.utils.data.DataLoader(cached, batch_size=None, num_workers=2, collate_fn=lambda item: item)
    seen = {item["id"]: item["image"] for item in loader}
    for i, item in enumerate(items):
        expected = build_transform("classification", INPUT, [])(image=item["image"])["image"]
        assert np.array_equal(seen[item["id"]], expected), i


def test_bad_cache_value_names_the_key(tiny_config: dict[str, Any]) -> None:
    tiny_config["data"]["cache"] = "gpu"
    with pytest.raises(ConfigError, match=r"data\.cache"):
        Pipeline.from_dict(tiny_config)


def test_cache_dir_holds_only_complete_folders(tmp_path: Path) -> None:
    source = ListSource(3)
    ic.cache_source(source, INPUT, "classification", "disk", 0)
    folder = ic.cache_path(source, INPUT, "classification")
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "meta.json", "orig_sizes.npy"]


def test_cached_cpu_fits_use_no_workers_unless_asked(tiny_config: dict[str, Any]) -> None:
    from vision_pipe.data import cached_num_workers

    assert cached_num_workers(3, {"accelerator": "cpu"}) == 0
    if not torch.cuda.is_available():
        assert cached_num_workers(3, {"accelerator": "auto"}) == 0
    assert cached_num_workers(3, {"accelerator": "gpu"}) == 3
    tiny_config["data"]["num_workers"] = "auto"
    tiny_config["trainer"]["accelerator"] = "cpu"
    auto = Pipeline.from_dict(tiny_config)
    auto.datamodule.num_workers = 1  # what auto gives a 2-core machine
    auto.cache_images()
    assert auto.datamodule.num_workers == 0
    tiny_config["data"]["num_workers"] = 1
    explicit = Pipeline.from_dict(tiny_config)
    explicit.cache_images()
    assert explicit.datamodule.num_workers == 1
