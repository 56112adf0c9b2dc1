"""The reconstruction task: the sample rule (an image and nothing else), collation without targets, PSNR against a
hand-computed value, the summary, the reconstructions grid, prediction files and description."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from vision_pipe import DataError, ReconstructionPrediction
from vision_pipe.data import collate
from vision_pipe.tasks import RECONSTRUCTION, get_task, task_of_item, task_of_prediction


def test_a_sample_is_an_image_and_nothing_else() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    RECONSTRUCTION.check_sample({"id": "a", "image": image}, 0)
    with pytest.raises(DataError, match=r"sample a: a reconstruction sample is an image and nothing else.*'label'"):
        RECONSTRUCTION.check_sample({"id": "a", "image": image, "label": 1}, 0)


def test_a_batch_has_images_and_no_targets() -> None:
    items = [{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "meta": {"id": str(i)}} for i in range(2)]
    batch = collate(items, "reconstruction")
    assert set(batch) == {"image", "meta"} and batch["image"].shape == (2, 3, 4, 4)
    assert task_of_item(items[0]).name == "images"  # no target keys: nothing to tell it apart from images only
    assert get_task("reconstruction") is RECONSTRUCTION and not RECONSTRUCTION.has_classes


def _update(metrics, output: torch.Tensor, image: torch.Tensor, noisy: torch.Tensor | None = None) -> None:
    RECONSTRUCTION.update_metrics(metrics, {"reconstruction": output, "noisy": noisy}, {"image": image})


def test_psnr_is_pooled_over_the_split_on_unit_pixels() -> None:
    metrics = RECONSTRUCTION.make_metrics(0)
    image = torch.full((1, 3, 2, 2), 51, dtype=torch.uint8)  # 0.2
    # batch 1: every pixel off by 0.1; batch 2: every pixel off by 0.2 → MSE (0.01 + 0.04) / 2 = 0.025
    _update(metrics, torch.full((1, 3, 2, 2), 0.3), image)
    _update(metrics, torch.full((1, 3, 2, 2), 0.4), image)
    summary = RECONSTRUCTION.summarize(metrics.compute(), [], None)
    assert summary["psnr"] == pytest.approx(10 * math.log10(1 / 0.025), abs=1e-4)  # 16.0206 dB
    assert summary["mse"] == pytest.approx(0.025, rel=1e-4)


def test_the_grid_shows_input_noisy_input_and_output_rows(tmp_path) -> None:
    metrics = RECONSTRUCTION.make_metrics(0)
    image = torch.zeros((2, 3, 16, 16), dtype=torch.uint8)
    image[:, 0] = 255  # red inputs
    noisy = torch.zeros(2, 3, 16, 16)
    noisy[:, 1] = 1.0  # green noisy inputs
    output = torch.zeros(2, 3, 16, 16)
    output[:, 2] = 1.0  # blue outputs
    _update(metrics, output, image, noisy)
    RECONSTRUCTION.summarize(metrics.compute(), [], tmp_path)
    grid = cv2.imread(str(tmp_path / "reconstructions.png"))[:, :, ::-1]  # RGB
    # 16 px tiles enlarged 4x to 64, 2 px gaps: 3 rows x 2 columns
    assert grid.shape == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2, 3)
    for row, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        y = 2 + row * 66 + 32
        assert tuple(grid[y, 2 + 32]) == colour and tuple(grid[y, 2 + 66 + 32]) == colour
    assert tuple(grid[0, 0]) == (255, 255, 255)  # gap


def test_the_grid_keeps_the_first_eight_images_and_has_two_rows_without_noise(tmp_path) -> None:
    metrics = RECONSTRUCTION.make_metrics(0)
    for _ in range(3):
        _update(metrics, torch.zeros(5, 3, 16, 16), torch.zeros((5, 3, 16, 16), dtype=torch.uint8))
    examples = metrics.compute()["examples"]
    assert examples.shape == (8, 2, 3, 16, 16)


def test_prediction_file_description_and_drawing(tmp_path) -> None:
    image = np.zeros((5, 7, 3), np.uint8)
    image[..., 0] = 200
    pred = ReconstructionPrediction(id="x.png", image=image, psnr=23.456)
    assert task_of_prediction(pred) is RECONSTRUCTION
    files = RECONSTRUCTION.write_prediction(pred, tmp_path, "x")
    written = cv2.imread(files["reconstruction"])[:, :, ::-1]
    assert np.array_equal(written, image)
    assert RECONSTRUCTION.describe(pred) == "x.png: reconstruction 7x5, PSNR 23.46 dB"
    assert pred.to_dict() == {"id": "x.png", "size": [5, 7], "psnr": 23.456}
    drawn = RECONSTRUCTION.draw(np.zeros((5, 7, 3), np.uint8), pred)  # the input (black) | the reconstruction
    assert drawn.shape[0] == 256 and abs(drawn.shape[1] - 14 * 256 / 5) <= 1  # 5 x 14 enlarged to a 256 px side
    assert tuple(drawn[0, 0]) == (0, 0, 0) and tuple(drawn[0, -1]) == (200, 0, 0)


def test_export_outputs_are_clamped_unit_pixels() -> None:
    out = RECONSTRUCTION.export_outputs(torch.tensor([[-0.5, 0.5, 1.5]]))
    assert torch.equal(out["reconstruction"], torch.tensor([[0.0, 0.5, 1.0]]))
