"""LPIPS from a local torchvision file (clear error when missing), the reconstruction loss, diffusers' schedules."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.training.losses import ReconstructionLoss, build_lpips
from magicbokeh.training.optim import build_lr_scheduler, build_optimizer


def test_missing_backbone_file_names_file_key_and_source(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        build_lpips("vgg", tmp_path)
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and "paths.torchvision_weights" in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message


def test_backbone_is_loaded_from_the_local_torchvision_file(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(3)
    reference = alexnet()
    torch.save(reference.state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    model = build_lpips("alex", tmp_path)
    assert torch.equal(model.net.slice1[0].weight, reference.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "10").bias, reference.features[10].bias)
    assert not any(p.requires_grad for p in model.parameters())


def test_random_backbone_lpips_is_zero_on_identical_images_and_positive_otherwise():
    model = build_lpips("alex", random_backbone=True)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = ReconstructionLoss(l2_weight=1.0, lpips_weight=2.0, lpips_model=model)
    total, parts = loss(images, images)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    total, parts = loss(images, images.flip(-1))
    assert parts["lpips"] > 0 and total.item() == pytest.approx(parts["l2"].item() + 2 * parts["lpips"].item())


def test_l2_only_loss_needs_no_lpips_and_lpips_weight_needs_a_model():
    total, parts = ReconstructionLoss(1.0, 0.0)(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    assert total.item() == 1.0 and set(parts) == {"l2"}
    with pytest.raises(ConfigError):
        ReconstructionLoss(1.0, 2.0, None)


def _rates(scheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(round(scheduler.get_last_lr()[0], 4))
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_warmup_then_constant_or_cosine():
    """diffusers' schedules: warm-up n / warmup_steps (step 0 at lr 0), then constant or a cosine decay to 0."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    assert _rates(build_lr_scheduler(optimizer, warmup_steps=4), 6) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    cosine = build_lr_scheduler(optimizer, warmup_steps=2, schedule="cosine", total_steps=6)
    assert _rates(cosine, 7) == [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0]
    with pytest.raises(ConfigError, match="lr schedule"):
        build_lr_scheduler(optimizer, 1, schedule="step")
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_lr_scheduler(optimizer, -1)


def test_scheduler_state_is_plain_data(tmp_path):
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    scheduler = build_lr_scheduler(optimizer, warmup_steps=3, schedule="cosine", total_steps=10)
    optimizer.step()
    scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "lr.pt")
    state = torch.load(tmp_path / "lr.pt", weights_only=True)  # loadable without unrestricted unpickling
    again = build_lr_scheduler(build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1e-3), 3, "cosine", 10)
    again.load_state_dict(state)
    assert again.last_epoch == 1 and again.get_last_lr() == scheduler.get_last_lr()
    with pytest.raises(ConfigError):
        build_optimizer([], lr=1e-3)
