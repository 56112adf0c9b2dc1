"""Multi-process runs: Lightning's DDP on 2 CPU processes (gloo) end to end, and the helpers behind it."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from vision_pipe import Pipeline
from vision_pipe.distributed import (
    MARKER_ENV,
    check_shared_run_dir,
    evaluation_sampler,
    is_secondary_process,
    share_cache,
    wait_for_rank_zero,
)
from vision_pipe.errors import VisionPipeError

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "SLURM_NTASKS", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def single_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*RANK_VARIABLES, MARKER_ENV):
        monkeypatch.delenv(name, raising=False)


def _confusion_total(path: Path) -> int:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    return sum(int(v) for row in rows for v in row[1:])


def _fit_in_two_processes(config: dict, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Write ``config`` to ``path`` and fit it with the CLI (Lightning's ddp launcher starts rank 1 by
    re-running the command, so the fit runs as a process of its own); it must succeed."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    cmd = [sys.executable, "-m", "vision_pipe.cli", "fit", str(path), *flags, "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_ddp_on_two_cpu_processes_matches_one_process(tiny_config, tmp_path: Path, single_process_env) -> None:
    """fit + test with ``strategy: ddp, devices: 2``; its test metrics equal a 1-process test of the same checkpoint."""
    config = copy.deepcopy(tiny_config)
    config["data"]["loader"]["num_images"] = 55  # val and test get 11 samples: an odd number to split in 2
    config["trainer"].update(strategy="ddp", devices=2, max_epochs=1)
    path = tmp_path / "tiny_ddp.yaml"
    proc = _fit_in_two_processes(config, path)

    runs = list((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote no run directory of its own
    run = runs[0]
    ddp = json.loads((run / "metrics.json").read_text())
    # every test sample counted exactly once (Lightning's own sampler would repeat one to fill rank 1)
    assert _confusion_total(run / "plots/test/confusion_matrix.csv") == 11
    # rank 0 alone reports (it ran the pre-flight pass and the mean image; rank 1 read their cache)
    preflight_lines = [line for line in proc.stdout.splitlines() if line.startswith("pre-flight:")]
    assert len(preflight_lines) == 1 and "cached result" not in preflight_lines[0], proc.stdout
    assert proc.stdout.count("run directory:") == 1 and "test metrics" in proc.stdout
    assert len(list(Path(os.environ["VISION_PIPE_CACHE"]).glob("normalization/*.pt"))) == 1

    single = Pipeline.from_yaml(path, ["trainer.strategy=auto", "trainer.devices=1"])
    metrics = single.test(run / "checkpoints" / "best.ckpt")
    for key, value in metrics.items():
        if key == "test/loss":
            assert ddp[key] == pytest.approx(value, rel=1e-5), key
        elif not math.isnan(value):
            assert ddp[key] == value, key
    assert _confusion_total(run / "plots/test/confusion_matrix.csv") == 11


def test_rank_from_the_launchers_environment(monkeypatch: pytest.MonkeyPatch, single_process_env) -> None:
    assert not is_secondary_process()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "0")
    assert not is_secondary_process()  # rank 0 after Lightning started the others
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert is_secondary_process()  # a process Lightning's launcher started
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert not is_secondary_process()  # a single-task SLURM step is no multi-process run
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert is_secondary_process()


def test_secondary_process_waits_for_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_process_env) -> None:
    target = tmp_path / "cache" / "x.pt"
    assert wait_for_rank_zero(target, "x", timeout=0.0) is False  # rank 0 never waits
    monkeypatch.setenv("RANK", "1")
    assert wait_for_rank_zero(target, "x", timeout=0.2, poll=0.05) is False  # gives up: computes it itself

    def write_later() -> None:
        time.sleep(0.2)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"done")

    writer = threading.Thread(target=write_later)
    writer.start()
    assert wait_for_rank_zero(target, "x", timeout=30, poll=0.05) is True
    writer.join()


def test_secondary_process_writes_no_run_directory(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    pipe = Pipeline.from_dict(tiny_config)
    run_dir = pipe._ensure_run_dir()
    assert not (tmp_path / "runs").exists() and run_dir.is_dir() and not (run_dir / "config.yaml").exists()


def test_evaluation_sampler_splits_without_repeating() -> None:
    class FakeTrainer:
        world_size = 2

        def __init__(self, rank: int) -> None:
            self.global_rank = rank

    data = list(range(11))
    assert evaluation_sampler(data, None) is None
    shares = [list(evaluation_sampler(data, FakeTrainer(rank))) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == data and {len(s) for s in shares} == {5, 6}


UNUSED_PARAMETER_RUNS = {
    # the fcn head's bilinear fallback layers are never taken when every step has pooling indices
    "fcn-unpool": {"task": "segmentation", "head": {"name": "fcn", "upsample": "unpool", "channels": 8, "skips": "fcn16"}},
    # a classification head on the first map: the backbone's second stage feeds nothing
    "early-feature": {"task": "classification", "head": {"name": "classification", "feature": "stage1"}},
    # SSD predictors on the first map only: again the backbone's second stage feeds nothing
    "ssd-early-maps": {
        "task": "detection",
        "head": {"name": "ssd", "feature_maps": ["stage1"], "num_maps": 1, "batch_norm": False},
    },
}


@pytest.mark.parametrize("case", sorted(UNUSED_PARAMETER_RUNS))
def test_ddp_trains_models_with_parameters_no_output_uses(
    tiny_config, tmp_path: Path, single_process_env, case: str
) -> None:
    """DDP would wait forever for gradients of parameters that no output depends on ("Expected to have
    finished reduction"): the build freezes them, so 2-process training runs without find_unused_parameters."""
    spec = UNUSED_PARAMETER_RUNS[case]
    config = copy.deepcopy(tiny_config)
    config["task"] = spec["task"]
    config["model"]["head"] = spec["head"]
    config["data"]["loader"]["num_images"] = 40
    config["data"]["batch_size"] = 4  # 3 steps per process: DDP notices a missing gradient at the second
    config["trainer"].update(strategy="ddp", devices=2, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    pipe = Pipeline.from_dict(config)
    assert pipe.module.unused_parameters  # what the probe found, frozen
    assert all(not p.requires_grad for n, p in pipe.module.named_parameters() if n in pipe.module.unused_parameters)
    proc = _fit_in_two_processes(config, tmp_path / f"{case}.yaml", "--no-test")
    assert "Expected to have finished reduction" not in proc.stderr


def test_a_rank_that_cannot_see_rank_zeros_cache_stops_at_once(tmp_path: Path, monkeypatch, single_process_env) -> None:
    """Rank 0 leaves a marker in its cache folder and names it in the environment its launcher passes on;
    a secondary process whose cache folder is another one (not shared) stops with a message, not a wait."""
    share_cache(tmp_path / "cache0")
    marker = Path(os.environ[MARKER_ENV])
    assert marker.is_file() and marker.parent == tmp_path / "cache0" / "ranks"
    monkeypatch.setenv("LOCAL_RANK", "1")
    share_cache(tmp_path / "cache0")  # it sees the marker: the cache is shared
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "elsewhere" / "ranks" / "node0-1"))
    with pytest.raises(VisionPipeError, match=r"cannot see rank 0's cache folder .*file system every node sees"):
        share_cache(tmp_path / "cache1")


class _Strategy:
    """Two processes as Lightning's strategy reports them: rank 0's broadcast, an all-ranks decision."""

    def __init__(self, other_sees: bool) -> None:
        self.other_sees = other_sees

    def broadcast(self, obj: str, src: int = 0) -> str:
        return obj

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        return decision and self.other_sees


class _Trainer:
    world_size = 2

    def __init__(self, other_sees: bool) -> None:
        self.strategy = _Strategy(other_sees)


def test_a_run_directory_not_seen_by_every_process_is_an_error_in_all(tmp_path: Path) -> None:
    check_shared_run_dir(_Trainer(other_sees=True), tmp_path)
    with pytest.raises(VisionPipeError, match=r"run directory .* not visible in every process.*output_dir"):
        check_shared_run_dir(_Trainer(other_sees=False), tmp_path)


def test_ddp_detection_metrics_on_a_split_that_does_not_divide_equal_one_process(
    tiny_config, tmp_path: Path, single_process_env
) -> None:
    """5 test images on 2 processes (3 + 2): torchmetrics' mAP used to gather its per-image lists with one
    collective per image, so the processes' collectives stopped lining up (gloo: a mismatch, NCCL: a hang).
    Synced once per evaluation, in the split's order, the metrics equal a one-process test exactly."""
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    config["data"]["input_size"] = [32, 32]
    config["data"]["loader"].update(size=32, num_images=25)  # 15 / 5 / 5
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False}
    config["trainer"].update(strategy="ddp", devices=2, max_epochs=3)
    config["data"]["batch_size"] = 4
    path = tmp_path / "det_ddp.yaml"
    _fit_in_two_processes(config, path)
    run = next((tmp_path / "runs" / "tiny").iterdir())
    ddp = json.loads((run / "metrics.json").read_text())

    single = Pipeline.from_yaml(path, ["trainer.strategy=auto", "trainer.devices=1"])
    metrics = single.test(run / "checkpoints" / "best.ckpt")
    # the SSD loss divides by the matched boxes of each batch, and the processes' batches are others
    keys = [k for k in metrics if k.startswith("test/") and not k.startswith("test/loss")]
    assert "test/map" in keys and "test/mar_100" in keys
    assert metrics["test/mar_100"] > 0  # the comparison is of detections, not of empty results
    for key in keys:
        if math.isnan(metrics[key]):
            assert math.isnan(ddp[key]), key
        else:
            assert ddp[key] == metrics[key], key


def test_interleave_restores_the_evaluation_samplers_order() -> None:
    from vision_pipe.tasks.metric_sync import interleave

    data = list(range(11))
    shares = [data[r::3] for r in range(3)]  # what evaluation_sampler gives 3 processes
    assert interleave(shares) == data
    assert interleave([[0, 1], [2, 3, 4]]) == [0, 1, 2, 3, 4]  # not a sampler's shape: in rank order
    assert interleave([[], []]) == []


def test_ddp_pycocotools_metrics_and_saved_detections_equal_one_process(
    tiny_config, tmp_path: Path, single_process_env
) -> None:
    """``metrics.detection: pycocotools`` and ``fit --save-json`` on 2 processes (5 test images: 3 + 2): the COCOeval
    metrics and every saved detection, in the split's order, equal a one-process test of the same checkpoint."""
    config = copy.deepcopy(tiny_config)
    config["task"] = "detection"
    config["metrics"] = {"detection": "pycocotools"}
    config["data"]["input_size"] = [32, 32]
    config["data"]["loader"].update(size=32, num_images=25)  # 15 / 5 / 5
    config["model"]["head"] = {"name": "ssd", "extra_channels": 8, "batch_norm": False}
    config["trainer"].update(strategy="ddp", devices=2, max_epochs=2)
    config["data"]["batch_size"] = 4
    path = tmp_path / "det_ddp.yaml"
    proc = _fit_in_two_processes(config, path, "--save-json")
    run = next((tmp_path / "runs" / "tiny").iterdir())
    assert proc.stdout.count("COCO results:") == 1
    ddp = json.loads((run / "metrics.json").read_text())
    ddp_detections = json.loads((run / "detections_test_coco.json").read_text())

    single = Pipeline.from_yaml(path, ["trainer.strategy=auto", "trainer.devices=1"])
    metrics = single.test(run / "checkpoints" / "best.ckpt", save_json=True)
    assert json.loads((run / "detections_test_coco.json").read_text()) == ddp_detections
    assert {d["image_id"] for d in ddp_detections} == set(range(5))  # every test image, by its position
    keys = [k for k in metrics if k.startswith("test/") and not k.startswith("test/loss")]
    assert metrics["test/mar_100"] > 0
    for key in keys:
        assert (math.isnan(ddp[key]) and math.isnan(metrics[key])) or ddp[key] == metrics[key], key
