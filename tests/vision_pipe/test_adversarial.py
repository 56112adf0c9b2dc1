"""Adversarial perturbations in pixel space (:mod:`vision_pipe.adversarial`): FGSM against hand-computed values on a
linear model, PGD's special case and bounds, and the adversarial mixing of a training batch (parameters' gradients
and batch-norm statistics untouched)."""

from __future__ import annotations

import torch
from torch import nn

from vision_pipe.adversarial import fgsm, head_loss, mix_adversarial, pgd
from vision_pipe.config import AdversarialTrainingConfig
from vision_pipe.pipeline import Pipeline
from vision_pipe.testing import make_batch


def _linear_loss(w: torch.Tensor):
    """J(x) = Σ w·x: its gradient with respect to x is w everywhere."""
    return lambda x: (w * x).sum()


def test_fgsm_on_a_linear_model_is_x_plus_eps_sign_w_clipped():
    w = torch.tensor([[[[1.5, -0.2], [0.0, -3.0]]]]).expand(1, 3, 2, 2).clone()
    w[0, 1] = -w[0, 1]  # channel 1: the opposite signs
    x = torch.tensor([[[[10, 254], [100, 3]]]], dtype=torch.uint8).expand(1, 3, 2, 2).clone()
    adv = fgsm(_linear_loss(w), x, 4.0)
    # by hand: channel 0 (and 2): +4, -4, +0 (sign 0), -4; channel 1: -4, +4, 0, +4; then clip to [0, 255]
    want0 = torch.tensor([[14.0, 250.0], [100.0, 0.0]])
    want1 = torch.tensor([[6.0, 255.0], [100.0, 7.0]])
    assert torch.equal(adv[0, 0], want0) and torch.equal(adv[0, 2], want0) and torch.equal(adv[0, 1], want1)
    assert adv.dtype == torch.float32 and not adv.requires_grad


def test_fgsm_zero_eps_is_the_image_and_pixels_stay_valid():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    w = torch.randn(2, 3, 8, 8)
    assert torch.equal(fgsm(_linear_loss(w), x, 0.0), x.float())
    big = fgsm(_linear_loss(w), x, 300.0)
    assert big.min() >= 0 and big.max() <= 255
    assert set(big.unique().tolist()) <= {0.0, 255.0}  # every pixel pushed to a bound, by the sign of w


def _tiny_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0])
    return model, x, y


def test_pgd_with_one_step_of_eps_and_no_random_start_is_fgsm():
    model, x, y = _tiny_classifier()

    def loss_of(pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(pixels / 255.0), y)

    one = pgd(loss_of, x, 6.0, alpha=6.0, steps=1, random_start=False)
    assert torch.equal(one, fgsm(loss_of, x, 6.0))
    assert all(p.grad is None for p in model.parameters())  # gradients with respect to the pixels only


def test_pgd_stays_in_the_eps_ball_and_valid_pixels_and_raises_the_loss():
    model, x, y = _tiny_classifier()

    def loss_of(pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(pixels / 255.0), y)

    gen = torch.Generator().manual_seed(0)
    adv = pgd(loss_of, x, 8.0, steps=5, random_start=True, generator=gen)
    delta = adv - x.float()
    assert delta.abs().max() <= 8.0 + 1e-4 and adv.min() >= 0 and adv.max() <= 255
    with torch.no_grad():
        assert loss_of(adv) > loss_of(x.float())


def test_mix_adversarial_replaces_a_fraction_and_leaves_gradients_and_statistics(tiny_config):
    tiny_config["model"]["head"]["dropout"] = 0.0  # deterministic forward passes in training mode
    pipe = Pipeline.from_dict(tiny_config)  # vgg with batch norm; not trained
    module = pipe.module.train()
    batch = make_batch("classification", (16, 16), num_classes=len(pipe.class_names), batch_size=4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    spec = AdversarialTrainingConfig(eps=3.0, fraction=0.5)
    mixed, count = mix_adversarial(module, batch, spec)
    assert count == 2
    assert torch.equal(mixed[2:], batch["image"][2:].float())  # the rest untouched
    assert (mixed[:2] - batch["image"][:2].float()).abs().max() == 3.0
    assert all(p.grad is None for p in module.parameters())
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running means, variances, counts put back
    assert torch.equal(mixed[:2], fgsm(head_loss(module, batch), batch["image"], 3.0)[:2])
