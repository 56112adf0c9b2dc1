"""vision_pipe.predict: where prediction runs (the accelerator when there is one), under which precision,
and half-precision outputs decoded in float32."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_pipe import Pipeline
from vision_pipe.cli import main
from vision_pipe.errors import ConfigError
from vision_pipe.predict import as_float32, autocast_dtype, predict_device

HAS_CUDA = torch.cuda.is_available()


def test_the_device_follows_the_machine_and_the_pipelines_accelerator() -> None:
    expected = "cuda" if HAS_CUDA else "cpu"
    assert predict_device(None).type == expected and predict_device("auto").type == expected
    assert predict_device("auto", accelerator="cpu") == torch.device("cpu")  # the pipeline says cpu
    assert predict_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message for a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_device_the_machine_lacks_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"--device '{name}': no CUDA device on this machine; use auto or cpu"):
        predict_device(name)


def test_a_name_that_is_no_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--device 'gpu0': not a device name"):
        predict_device("gpu0")


def test_autocast_follows_the_precision_on_an_accelerator_only() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert autocast_dtype(cuda, "bf16-mixed") is torch.bfloat16 and autocast_dtype(cuda, "16-mixed") is torch.float16
    assert autocast_dtype(cuda, 16) is torch.float16 and autocast_dtype(cuda, "32-true") is None
    assert autocast_dtype(cpu, "bf16-mixed") is None


def test_half_precision_outputs_are_decoded_in_float32() -> None:
    @dataclasses.dataclass
    class Outputs:
        logits: torch.Tensor
        labels: torch.Tensor
        extra: dict

    out = as_float32(Outputs(torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.long), {"a": [torch.ones(1, dtype=torch.half)]}))
    assert out.logits.dtype == torch.float32 and out.labels.dtype == torch.long and out.extra["a"][0].dtype == torch.float32


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)]


def test_predict_on_the_cpu_by_name(checkpoint: Path) -> None:
    pipe = Pipeline.load(checkpoint)
    auto = pipe.predict(_images())
    cpu = pipe.predict(_images(), device="cpu")
    assert next(pipe.module.parameters()).device.type == "cpu"
    if not HAS_CUDA:  # auto is the CPU here: the same predictions
        assert [p.to_dict() for p in cpu] == [p.to_dict() for p in auto]


def test_cli_predict_device_errors_name_the_flag(checkpoint: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(image), _images(1)[0])
    assert main(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())[0]["id"] == str(image)
    if not HAS_CUDA:
        assert main(["predict", str(checkpoint), str(image), "--device", "cuda:0"]) == 2
        assert "--device 'cuda:0': no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_predict_on_the_gpu_in_bf16_agrees_with_the_cpu(checkpoint: Path) -> None:
    pipe = Pipeline.load(checkpoint)
    pipe.config.trainer["precision"] = "bf16-mixed"
    gpu = pipe.predict(_images(8))  # auto: the GPU, under bf16 autocast
    assert next(pipe.module.parameters()).device.type == "cuda"
    cpu = pipe.predict(_images(8), device="cpu")
    agree = sum(a.to_dict()["class_name"] == b.to_dict()["class_name"] for a, b in zip(gpu, cpu, strict=True))
    assert agree >= 7
