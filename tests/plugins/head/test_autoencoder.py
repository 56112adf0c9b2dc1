"""The built-in autoencoder head: output sizes for every upsampling mode, denoising noise (training inputs only,
never the target), the loss against the clean pixels, decoding, and build errors."""

from __future__ import annotations

import pytest
import torch

from vision_pipe import Batch, ChainError, ReconstructionPrediction, StageContext, StageError
from vision_pipe.registry import ParameterError, make_entry
from vision_pipe_plugins.backbone.resnet import resnet
from vision_pipe_plugins.backbone.vgg import vgg
from vision_pipe_plugins.head.autoencoder import AutoencoderHead, autoencoder


def make_context(backbone, name: str = "vgg", input_size: tuple[int, int] = (32, 32)) -> StageContext:
    return StageContext(
        task="reconstruction",
        seed=0,
        input_size=input_size,
        class_names=(),
        feature_info=tuple(backbone.feature_info),
        backbone_provides=frozenset(backbone.provides),
        backbone_name=name,
    )


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return vgg(width=4, stages=3).eval()


@pytest.mark.parametrize("upsample", ["transposed", "unpool", "bilinear"])
@pytest.mark.parametrize("size", [(32, 32), (17, 9)])
def test_every_upsampling_mode_gives_back_the_input_size_in_unit_pixels(backbone, upsample, size) -> None:
    head = autoencoder(make_context(backbone, input_size=size), upsample=upsample, channels=8).eval()
    with torch.no_grad():
        out = head(backbone(torch.rand(2, 3, *size) * 255))
    assert out.shape == (2, 3, *size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # sigmoid: pixels in [0, 1]


def test_the_decoder_reuses_the_fcn_upsampling_steps(backbone) -> None:
    from vision_pipe_plugins.head.fcn import UpStep

    head = autoencoder(make_context(backbone), upsample="unpool", channels=8)
    assert len(head.steps) == 3 and all(isinstance(step, UpStep) and step.mode == "unpool" for step in head.steps)


def _batch(images: torch.Tensor) -> Batch:
    return {
        "image": images,
        "meta": [{"id": f"i{k}", "orig_size": tuple(images.shape[-2:])} for k in range(len(images))],
    }


@pytest.mark.parametrize("noise", [{"gaussian": 0.2}, {"mask": 0.5}])
def test_noise_corrupts_the_training_inputs_and_never_the_target(backbone, noise) -> None:
    head = autoencoder(make_context(backbone), noise=noise)
    images = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    corrupted = head.training_inputs(images)
    assert corrupted.shape == images.shape and float(corrupted.min()) >= 0 and float(corrupted.max()) <= 255
    changed = (corrupted != images.float()).float().mean()
    if "mask" in noise:  # whole pixels set to 0, about half of them
        assert torch.all((corrupted == 0).all(dim=1) | (corrupted == 128).all(dim=1))
        assert 0.4 < float(changed) < 0.6
    else:  # std 0.2 in [0, 1] units = 51 grey levels
        assert float(changed) > 0.99
        assert abs(float((corrupted - 128).std()) - 51.0) < 3.0
    # the target is the clean image: its own pixels in [0, 1] reconstruct it with zero loss
    assert float(head.loss(images.float() / 255, _batch(images))["loss"]) == 0.0


def test_without_noise_the_training_inputs_are_the_images(backbone) -> None:
    head = autoencoder(make_context(backbone))
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert head.training_inputs(images) is images
    assert head.evaluation_outputs(torch.zeros(1, 3, 32, 32), _batch(images))["noisy"] is None


@pytest.mark.parametrize(("loss", "expected"), [("mse", 0.25**2), ("l1", 0.25)])
def test_loss_against_the_clean_pixels_in_unit_scale(backbone, loss, expected) -> None:
    head = autoencoder(make_context(backbone), loss=loss)
    images = torch.full((1, 3, 4, 4), 51, dtype=torch.uint8)  # 0.2 in [0, 1]
    outputs = torch.full((1, 3, 4, 4), 0.45)
    assert float(head.loss(outputs, _batch(images))["loss"]) == pytest.approx(expected, rel=1e-5)


def test_decode_resizes_to_the_original_size_with_the_psnr_against_the_input(backbone) -> None:
    head = autoencoder(make_context(backbone))
    images = torch.full((1, 3, 8, 8), 102, dtype=torch.uint8)  # 0.4
    outputs = torch.full((1, 3, 8, 8), 0.5)
    batch: Batch = {"image": images, "meta": [{"id": "a.png", "orig_size": (20, 12)}]}
    (pred,) = head.decode(outputs, batch, [])
    assert isinstance(pred, ReconstructionPrediction)
    assert pred.image.shape == (20, 12, 3) and pred.image.dtype.name == "uint8"
    assert int(pred.image[0, 0, 0]) == 128  # 0.5 * 255 rounded
    assert pred.psnr == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 → 10 log10(1 / 0.01)


def test_unknown_noise_key_is_an_error_naming_the_key(backbone) -> None:
    with pytest.raises(ParameterError) as err:
        make_entry(autoencoder).build({"noise": {"salt": 0.1}}, make_context(backbone))
    assert (
        str(err.value)
        == "head stage 'autoencoder': noise must be dict['gaussian' | 'mask' | 'block', float ≥ 0], got 'salt'"
    )


@pytest.mark.parametrize("kind", ["mask", "block"])
def test_a_fraction_of_one_is_refused(backbone, kind) -> None:
    with pytest.raises(StageError, match=rf"noise\.{kind}"):
        autoencoder(make_context(backbone), noise={kind: 1.0})


def test_block_noise_hides_one_rectangle_of_the_asked_area_per_image(backbone) -> None:
    head = autoencoder(make_context(backbone), noise={"block": 0.25})
    torch.manual_seed(0)
    images = torch.full((400, 3, 32, 20), 200, dtype=torch.uint8)
    corrupted = head.training_inputs(images)
    hidden = (corrupted == 0).all(dim=1)  # (B, H, W): all three channels of a pixel, nothing else touched
    assert torch.all(hidden | (corrupted == 200).all(dim=1))
    for k in range(len(images)):
        rows = hidden[k].any(dim=1).nonzero().flatten()
        cols = hidden[k].any(dim=0).nonzero().flatten()
        # one 16 x 10 rectangle (sqrt(0.25) of each side), contiguous: its bounding box is all hidden
        assert (len(rows), len(cols)) == (16, 10) and int(hidden[k].sum()) == 160
        assert rows[-1] - rows[0] == 15 and cols[-1] - cols[0] == 9
    tops = {int(hidden[k].any(dim=1).nonzero()[0]) for k in range(len(images))}
    lefts = {int(hidden[k].any(dim=0).nonzero()[0]) for k in range(len(images))}
    assert tops == set(range(17)) and lefts == set(range(11))  # every place inside the image, over 400 draws


def test_unpool_needs_pool_indices() -> None:
    net = resnet(depth=10, width=4, stages=2)
    with pytest.raises(ChainError, match="head 'autoencoder'.*unpool"):
        autoencoder(make_context(net, "resnet"), upsample="unpool")


def test_the_head_has_no_classes_and_the_reconstruction_task(backbone) -> None:
    head = autoencoder(make_context(backbone))
    assert isinstance(head, AutoencoderHead) and head.task == "reconstruction" and head.num_classes == 0
