"""The reconstruction task: learning from unlabelled images (an autoencoder gives back its input).

A sample is an ``image`` and nothing else; a batch has no targets: the target is
the batch's own images. Pixel scale: everything this task compares is in
**[0, 1]** (a head's outputs and ``batch["image"] / 255``), so PSNR is
``10 log10(1 / MSE)`` with a data range of 1 (torchmetrics' ``PeakSignalNoiseRatio``
over every pixel of the split: the MSE is pooled before the log). Summary:
``psnr`` (dB) and ``mse``; picture: ``reconstructions.png`` (input / noisy input
when the head corrupts its training inputs / output, one column per image).
Predictions are :class:`~vision_pipe.results.ReconstructionPrediction`: the
reconstructed image, written as ``<stem>_reconstruction.png``.

Evaluation form of a head's outputs: ``{"reconstruction": (B, 3, H, W) in [0, 1],
"noisy": (B, 3, H, W) in [0, 1] or None}`` (the corrupted inputs a denoising head
trains on, for the picture only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np

from vision_pipe.drawing import upscale
from vision_pipe.errors import DataError
from vision_pipe.io import write_png
from vision_pipe.results import Prediction, ReconstructionPrediction
from vision_pipe.samples import IGNORE_INDEX
from vision_pipe.tasks.base import Graded, Task

if TYPE_CHECKING:
    import torchmetrics
    from torch import Tensor

#: The target keys of the other tasks, which a reconstruction sample must not have.
OTHER_TARGETS = ("label", "mask", "boxes", "labels")
#: Images shown in ``reconstructions.png``.
PICTURED = 8
#: The smallest side of one image in ``reconstructions.png`` (smaller ones are enlarged, nearest neighbour).
PICTURE_SIDE = 64


class ReconstructionTask(Task):
    """Reconstruction: ``image`` only per sample; the batch's images are the targets."""

    name = "reconstruction"
    prediction_type = ReconstructionPrediction
    target_keys = ()
    has_classes = False

    # -- samples ---------------------------------------------------------------

    def check_targets(self, sample: Mapping[str, Any], size: tuple[int, int], num_classes: int, sample_id: str) -> None:
        """A reconstruction sample is an image and nothing else: :class:`~vision_pipe.errors.DataError`
        naming the sample if it carries another task's targets."""
        extra = [key for key in OTHER_TARGETS if key in sample]
        if extra:
            raise DataError(
                f"sample {sample_id}: a reconstruction sample is an image and nothing else, but it has "
                f"{', '.join(repr(k) for k in extra)}: the loader must leave targets out for task 'reconstruction'"
            )

    # -- evaluation ------------------------------------------------------------

    def make_metrics(self, num_classes: int, *, ignore_index: int = IGNORE_INDEX) -> torchmetrics.MetricCollection:
        """``psnr`` (data range 1: pixels in [0, 1]) and ``examples`` (the first :data:`PICTURED` images)."""
        import torchmetrics
        from torchmetrics.image import PeakSignalNoiseRatio

        from vision_pipe.tasks.examples_metric import FirstExamples

        return torchmetrics.MetricCollection(
            {"psnr": PeakSignalNoiseRatio(data_range=1.0), "examples": FirstExamples(PICTURED)},
            compute_groups=False,
        )

    def update_metrics(self, metrics: torchmetrics.MetricCollection, outputs: Any, batch: Mapping[str, Any]) -> None:
        """Feed ``outputs["reconstruction"]`` (B, 3, H, W) in [0, 1] against ``batch["image"] / 255``."""
        target = pixels01(batch["image"])
        output = outputs["reconstruction"].detach().float().clamp(0, 1)
        metrics["psnr"].update(output, target)
        noisy = outputs.get("noisy")
        rows = (target, output) if noisy is None else (target, noisy.detach().float().clamp(0, 1), output)
        metrics["examples"].update(*rows)

    def summarize(
        self, computed: dict[str, Tensor], class_names: Sequence[str], plots_dir: Path | None
    ) -> dict[str, float]:
        """``psnr`` (dB) and ``mse`` (pixels in [0, 1]: ``10 ** (-psnr / 10)``); with ``plots_dir``,
        ``reconstructions.png`` there (:func:`write_reconstruction_grid`)."""
        psnr = float(computed["psnr"])
        out = {"psnr": psnr, "mse": float(10 ** (-psnr / 10))}
        examples = computed["examples"]
        if plots_dir is not None and examples.numel():
            plots_dir.mkdir(parents=True, exist_ok=True)
            write_reconstruction_grid(examples.numpy(), plots_dir / "reconstructions.png")
        return out

    # -- predictions -------------------------------------------------------------

    def export_outputs(self, outputs: Any) -> dict[str, Tensor]:
        """Reconstructions (B, 3, H, W) → ``{"reconstruction": (B, 3, H, W) float32 in [0, 1]}``."""
        return {"reconstruction": outputs.float().clamp(0, 1)}

    def draw(
        self, image: np.ndarray, prediction: Prediction, class_colors: Sequence[Sequence[int]] | None = None
    ) -> np.ndarray:
        """The input (left) and its reconstruction (right), side by side."""
        prediction = cast(ReconstructionPrediction, prediction)
        recon = prediction.image
        if recon.shape[:2] != image.shape[:2]:
            recon = cv2.resize(recon, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(upscale(np.concatenate([image, recon], axis=1))[0])

    def write_prediction(self, prediction: Prediction, out_dir: Path, stem: str) -> dict[str, str]:
        """``<stem>_reconstruction.png``: the reconstructed image at the original size, 8-bit RGB."""
        prediction = cast(ReconstructionPrediction, prediction)
        path = write_png(out_dir / f"{stem}_reconstruction.png", cv2.cvtColor(prediction.image, cv2.COLOR_RGB2BGR))
        return {"reconstruction": str(path)}

    def describe(self, prediction: Prediction) -> str:
        prediction = cast(ReconstructionPrediction, prediction)
        h, w = prediction.image.shape[:2]
        return f"{prediction.id}: reconstruction {w}x{h}, PSNR {prediction.psnr:.2f} dB"

    def grade(self, prediction: Prediction, sample: Mapping[str, Any], class_names: Sequence[str]) -> Graded:
        """The reconstruction's PSNR (dB) against the model's input: the image is its own target."""
        prediction = cast(ReconstructionPrediction, prediction)
        return Graded(prediction.psnr, f"PSNR {prediction.psnr:.2f} dB", prediction)


def pixels01(images: Tensor) -> Tensor:
    """Images (B, 3, H, W) uint8 or float in [0, 255] → float32 in [0, 1]."""
    return images.float() / 255.0


def write_reconstruction_grid(examples: np.ndarray, path: Path) -> Path:
    """``examples`` (N, R, 3, H, W) float in [0, 1] → one PNG: R rows (input / noisy input / output),
    one column per example, each image enlarged to at least :data:`PICTURE_SIDE` pixels, 2-px white gaps."""
    n, rows = examples.shape[:2]
    tiles = (np.clip(examples, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 1, 3, 4, 2)  # (N, R, H, W, 3)
    h, w = tiles.shape[2:4]
    scale = max(1, -(-PICTURE_SIDE // min(h, w)))
    th, tw, gap = h * scale, w * scale, 2
    grid = np.full((rows * th + (rows + 1) * gap, n * tw + (n + 1) * gap, 3), 255, np.uint8)
    for i in range(n):
        for r in range(rows):
            tile = np.repeat(np.repeat(tiles[i, r], scale, axis=0), scale, axis=1)
            y, x = gap + r * (th + gap), gap + i * (tw + gap)
            grid[y : y + th, x : x + tw] = tile
    return write_png(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


RECONSTRUCTION = ReconstructionTask()
