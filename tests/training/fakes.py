"""Tiny stand-ins with the real contracts: a model with the MagicBokehModel training API, a dataset with the sample
dict contract. They make the trainer's tests fast; the real tiny network is exercised in test_train_smoke.py."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from magicbokeh.utils.seeding import sample_generator

GROUPS = {
    "sr_pretrain": ("vae_lora", "sr_lora", "conv_in"),
    "bokeh": ("controlnet", "bokeh_lora"),
    "sr": ("sr_lora",),
    "joint": ("vae_lora", "sr_lora", "conv_in", "controlnet", "bokeh_lora"),
}


class FakeMagicBokeh(nn.Module):
    """``forward(lq_images, defocus) -> images`` through one small layer per trainable group (+ a frozen base)."""

    has_pretrained_base = False

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Conv2d(3, 3, 3, padding=1)
        self.vae_lora = nn.Conv2d(3, 3, 1)
        self.conv_in = nn.Conv2d(3, 3, 3, padding=1)
        self.sr_lora = nn.Conv2d(3, 3, 3, padding=1)
        self.controlnet = nn.Conv2d(1, 3, 3, padding=1)
        self.bokeh_lora = nn.Conv2d(3, 3, 1)
        self.requires_grad_(False)
        self.calls = 0
        self.fail_at_call: int | None = None

    def forward(self, lq_images: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at_call is not None and self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated kill")
        h = self.base(lq_images) + self.vae_lora(lq_images)
        h = h + self.conv_in(h)
        h = h + self.sr_lora(h) + self.controlnet(defocus)
        h = h + self.bokeh_lora(h)
        # Dropout draws from the global RNG: a resumed run must restore it to reproduce the losses exactly.
        h = nn.functional.dropout(h, 0.1, self.training)
        return torch.sigmoid(h)

    def phase_parameter_names(self, phase: str) -> list[str]:
        return [name for name, _ in self.named_parameters() if name.split(".")[0] in GROUPS[phase]]

    def trainable_parameters(self, phase: str) -> list[nn.Parameter]:
        names = set(self.phase_parameter_names(phase))
        return [param for name, param in self.named_parameters() if name in names]

    def set_phase(self, phase: str) -> None:
        names = set(self.phase_parameter_names(phase))
        for name, param in self.named_parameters():
            param.requires_grad_(name in names)

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_checkpoint_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors)

    def save_pretrained(self, directory) -> None:
        from pathlib import Path

        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(directory) / "model.safetensors"))


class FakePairs(Dataset):
    """Seeded 8×8 samples: ``task="sr"`` (zero defocus, target = a smooth version of lq) or ``task="bokeh"``."""

    def __init__(self, task: str, length: int = 64, seed: int = 0, size: int = 8) -> None:
        self.task, self.length, self.seed, self.size = task, length, seed, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        generator = sample_generator(self.seed, index, self.task)
        target = torch.rand(3, self.size, self.size, generator=generator)
        lq = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
        if self.task == "sr":
            defocus = torch.zeros(1, self.size, self.size)
        else:
            defocus = torch.rand(1, self.size, self.size, generator=generator)
        return {
            "lq": lq,
            "target": target,
            "task": self.task,
            "disparity": torch.rand(1, self.size, self.size, generator=generator),
            "focus_disparity": torch.tensor(0.5),
            "K": torch.tensor(0.0 if self.task == "sr" else 16.0),
            "defocus": defocus,
            "meta": {"index": index},
        }
