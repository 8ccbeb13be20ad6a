"""A stand-in for SD2.1's pretrained VAE when the network is randomly initialised (the tiny smoke model).

MagicBokeh keeps the VAE decoder frozen and only adds LoRA to the encoder, so it relies on a VAE that already
reconstructs images. A random tiny VAE does not: with its decoder frozen, no latent the encoder could produce would
decode back to the input. Before the alternating training starts, :func:`fit_autoencoder` therefore fits the
tiny VAE's *base* weights (encoder + decoder, not the LoRA) as a plain autoencoder on the training targets,

    min  MSE(decode(encode(x)), x)

which plays the role of SD2.1's VAE pre-training. It never runs for a model loaded from ``paths.sd21``. The result
is the "initialisation" the smoke run's final table compares against (the network MagicBokeh training starts from).

A few hundred steps inside a short run give a VAE that reconstructs what it was fitted on rather than new content.
Like SD2.1's VAE, the stand-in can instead be fitted once, long and on many images (``scripts/fit_standin_vae.py``),
saved with :func:`save_standin_vae` and loaded by the training run (``trainer.base_pretrain.init_from``) with
:func:`load_standin_vae`. The file holds only the VAE's base weights and the ``vae_config`` they belong to (loading
checks that config against the model's), and, as JSON metadata, everything needed to fit it again
(:data:`STANDIN_METADATA_KEYS`: the command, seed, settings, degradation, code commit and versions) with its held-out
scores; the same scores go to ``results/standin_vae.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.evaluation.metrics import psnr
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.optim import build_lr_scheduler
from magicbokeh.utils.files import atomic_path
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

logger = get_logger(__name__)

STANDIN_FORMAT = "magicbokeh-standin-vae/1"
STANDIN_SCRIPT = "python scripts/fit_standin_vae.py experiment=smoke"
STANDIN_METADATA_KEYS = (
    "summary",  # one line: steps, device, held-out scores
    "command",  # the command line that fitted it
    "seed",  # the run seed (cfg.seed); streams and the sample pool derive theirs from it
    "environment",  # code commit + dirty flag, hardware, library versions (magicbokeh.utils.results.environment)
    "seconds",  # wall time of the fit
    "device",
    "settings",  # the resolved standin_vae node
    "degradation",  # the resolved degradation of its lq and held-out inputs
    "heldout",  # the held-out set it is scored on (data.val_sr)
    "history",  # held-out scores every eval_every steps
)
"""What :func:`fit_standin_from_config` records in a stand-in VAE file's metadata (``fit``)."""


def _check_random_base(model: torch.nn.Module) -> None:
    if model.has_pretrained_base:
        raise ConfigError("trainer.base_pretrain is for randomly initialised models; this one loads paths.sd21")


def _base_name(name: str) -> str:
    """A VAE parameter's name without peft's LoRA wrapping, so files do not depend on the LoRA settings."""
    return name.replace(".base_layer", "")


def fit_autoencoder(
    model: torch.nn.Module,
    streams: Sequence[BatchStream],
    steps: int,
    lr: float,
    device: torch.device,
    images: Sequence[str] = ("target",),
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``model.vae``'s base weights to reconstruct the streams' ``images`` (round-robin over the streams, all
    listed keys of a batch together, e.g. ``("target", "lq")``); returns the last loss. ``on_step(step, loss)`` is
    called after every update (the fitting script's held-out evaluation)."""
    _check_random_base(model)
    if not streams:
        raise ConfigError("trainer.base_pretrain needs at least one data stream")
    if not images:
        raise ConfigError("trainer.base_pretrain.images must name at least one image key (target, lq)")
    base = [param for name, param in model.vae.named_parameters() if ".lora_" not in name]
    for param in model.parameters():
        param.requires_grad_(False)
    for param in base:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(base, lr=lr)
    # Cosine decay to zero: the last, small steps are what bring the reconstruction error down.
    scheduler = build_lr_scheduler(optimizer, warmup_steps=0, schedule="cosine", total_steps=steps)
    loss = torch.tensor(float("nan"))
    progress = progress_bar(range(steps), desc="vae pretrain (stand-in for SD2.1)", dynamic_ncols=True)
    for step in progress:
        batch = next(streams[step % len(streams)])
        pixels = torch.cat([batch[key] for key in images]).to(device)
        loss = F.mse_loss(model.decode(model.encode(pixels)), pixels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1, loss.item())
    for param in base:
        param.requires_grad_(False)
        param.grad = None
    logger.info("tiny VAE fitted as an autoencoder for %d steps (final MSE %.4g)", steps, loss.item())
    return float(loss.item())


def _vae_config_text(model: torch.nn.Module) -> str:
    return json.dumps(model.config["vae_config"], sort_keys=True)


def save_standin_vae(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write the VAE's base weights (no LoRA) and its ``vae_config`` atomically; ``metadata`` (how it was fitted,
    held-out scores) is stored alongside as JSON."""
    _check_random_base(model)
    tensors = {
        _base_name(name): tensor.detach().float().contiguous().cpu()
        for name, tensor in model.vae.state_dict().items()
        if ".lora_" not in name
    }
    header = {"format": STANDIN_FORMAT, "vae_config": _vae_config_text(model), "fit": json.dumps(metadata)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=header)
    return path


def load_standin_vae(model: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by :func:`save_standin_vae` into ``model.vae``'s base weights; returns its fit metadata.

    Raises :class:`MissingWeightsError` when the file is absent and :class:`ConfigError` when it was fitted for
    another ``vae_config`` or does not hold exactly this VAE's base weights.
    """
    _check_random_base(model)
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"missing stand-in VAE '{path}' (trainer.base_pretrain.init_from). It ships with the repository for the "
            f"smoke model; re-create it with `{STANDIN_SCRIPT}`, or set trainer.base_pretrain.init_from=null and "
            "trainer.base_pretrain.steps>0 to fit one inside the run"
        )
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        if header.get("format") != STANDIN_FORMAT:
            raise ConfigError(f"{path} is not a stand-in VAE file (format {header.get('format')!r})")
        if header.get("vae_config") != _vae_config_text(model):
            raise ConfigError(
                f"{path} was fitted for another VAE: its vae_config is {header.get('vae_config')}, the model's is "
                f"{_vae_config_text(model)}; re-fit it with `{STANDIN_SCRIPT}` (and your overrides)"
            )
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    names = {_base_name(name): name for name in model.vae.state_dict() if ".lora_" not in name}
    missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not match this VAE: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.vae.load_state_dict({names[name]: tensor for name, tensor in tensors.items()}, strict=False)
    metadata = json.loads(header.get("fit", "{}"))
    logger.info("loaded the stand-in VAE %s (%s)", path, metadata.get("summary", "no summary"))
    return metadata


class SamplePool:
    """A fixed pool of ``size`` samples drawn once from a stream, kept on ``device`` as 8-bit images; ``next(pool)``
    gives a random batch of them with random horizontal flips (the stream's batch size).

    A long fit is otherwise bound by data synthesis (a Real-ESRGAN pair costs ~5 ms of CPU, a GPU step of the tiny
    VAE far less); an autoencoder needs varied content more than fresh degradations for every step.
    """

    def __init__(
        self, stream: BatchStream, size: int, keys: Sequence[str], device: torch.device, seed: int = 0
    ) -> None:
        if size < stream.batch_size:
            raise ConfigError(f"pool_size must be at least the batch size ({stream.batch_size}), got {size}")
        chunks: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        drawn = 0
        with progress_bar(total=size, desc="sample pool", dynamic_ncols=True) as progress:
            while drawn < size:
                batch = next(stream)
                for key in keys:
                    chunks[key].append((batch[key] * 255).round().to(torch.uint8))
                drawn += batch[keys[0]].shape[0]
                progress.update(batch[keys[0]].shape[0])
        self.images = {key: torch.cat(chunks[key])[:size].to(device) for key in keys}
        self.batch_size, self.size = stream.batch_size, size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        device = self.generator.device
        index = torch.randint(self.size, (self.batch_size,), generator=self.generator, device=device)
        flip = torch.rand(self.batch_size, generator=self.generator, device=device) < 0.5
        batch = {}
        for key, images in self.images.items():
            chosen = images[index].float() / 255
            batch[key] = torch.where(flip[:, None, None, None], chosen.flip(-1), chosen)
        return batch


@torch.no_grad()
def heldout_reconstruction(model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 16) -> dict:
    """How the VAE treats images it never saw (a validation set of ``lq``/``target`` pairs): mean PSNR of the
    targets' reconstruction, of the inputs' reconstruction against their targets, and of the inputs themselves. The
    last two differ by what a round trip through the VAE costs MagicBokeh before its UNet does anything."""
    totals = {"target_reconstruction_psnr": 0.0, "input_psnr": 0.0, "input_roundtrip_psnr": 0.0}
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        lq = torch.stack([s["lq"] for s in samples]).to(device)
        target = torch.stack([s["target"] for s in samples]).to(device)
        totals["target_reconstruction_psnr"] += psnr(model.decode(model.encode(target)), target).sum().item()
        totals["input_roundtrip_psnr"] += psnr(model.decode(model.encode(lq)), target).sum().item()
        totals["input_psnr"] += psnr(lq, target).sum().item()
    return {name: total / len(dataset) for name, total in totals.items()}


def write_standin_results(metadata: dict[str, Any], file: str | os.PathLike, name: str) -> Path:
    """``results/<name>.json`` of a stand-in VAE fit, from the fit's ``metadata`` (what :func:`save_standin_vae`
    stores): its held-out history as a table, with the fit's own command, seed and environment. The environment is
    the one recorded before the weights were written: the new weights file itself makes the tree dirty."""
    from magicbokeh.utils.results import Table, write_results

    columns = ["step", "train MSE", "held-out targets (dB)", "inputs (dB)", "inputs after a round trip (dB)"]
    keys = ["step", "train_mse", "target_reconstruction_psnr", "input_psnr", "input_roundtrip_psnr"]
    history = metadata["history"]
    table = Table(columns, [[row[key] for key in keys] for row in history], ["d", ".5f", ".2f", ".2f", ".2f"])
    figures = {key: value for key, value in metadata.items() if key not in ("command", "environment")}
    return write_results(
        name,
        {**figures, "file": str(file)},
        title="stand-in VAE fit: held-out reconstruction PSNR during the fit",
        tables={"history": table},
        command=metadata["command"],
        seed=int(metadata["seed"]),
        recorded_environment=metadata["environment"],
    )


def fit_standin_from_config(cfg) -> Path:
    """``scripts/fit_standin_vae.py``: fit the tiny model's VAE as set in ``cfg.standin_vae``, report it on the
    held-out SR set (``cfg.data.val_sr``) as it goes, and write it to ``cfg.standin_vae.out``."""
    import time

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from magicbokeh.utils.distributed import build_accelerator
    from magicbokeh.utils.results import current_command, environment
    from magicbokeh.utils.seeding import seed_everything

    settings = cfg.get("standin_vae")
    if settings is None:
        raise ConfigError("no standin_vae node in this config: pick an experiment that has one (experiment=smoke)")
    if int(settings.steps) < 1 or int(settings.eval_every) < 1:
        raise ConfigError(
            f"standin_vae.steps and standin_vae.eval_every must be ≥ 1, got {settings.steps} and {settings.eval_every}"
        )
    device = build_accelerator("no").device
    if settings.num_threads is not None:
        torch.set_num_threads(int(settings.num_threads))
    seed_everything(int(cfg.seed))
    model = instantiate(cfg.model).to(device)
    # The lq images the VAE sees come from the run's degradation, or from the scale the node pins (the shipped
    # file keeps its own recipe when the smoke's degradation changes).
    degradation_cfg = cfg.degradation
    if settings.get("degradation_scale") is not None:
        degradation_cfg = OmegaConf.merge(cfg.degradation, {"scale": int(settings.degradation_scale)})
    degradation = instantiate(degradation_cfg)
    datasets = {
        "sr": instantiate(cfg.data.sr_train, root=list(settings.sr_roots), degradation=degradation),
        "bokeh": instantiate(cfg.data.bokeh_train, degradation=degradation),
    }
    unknown = set(settings.data) - set(datasets)
    if unknown:
        raise ConfigError(f"standin_vae.data must name sr and/or bokeh, got {sorted(unknown)}")
    streams: list = [
        BatchStream(
            datasets[name], int(settings.batch_size), seed=int(cfg.seed) + 1, num_workers=int(settings.num_workers)
        )
        for name in settings.data
    ]
    if settings.pool_size:
        streams = [
            SamplePool(stream, int(settings.pool_size), list(settings.images), device, seed=int(cfg.seed) + 2)
            for stream in streams
        ]
    heldout = instantiate(cfg.data.val_sr, degradation=degradation)  # scored on the lq images it was fitted on
    history: list[dict[str, float]] = []

    def evaluate(step: int, loss: float) -> None:
        if step % int(settings.eval_every) and step != int(settings.steps):
            return
        model.eval()
        scores = {"step": step, "train_mse": loss, **heldout_reconstruction(model, heldout, device)}
        model.train()
        history.append(scores)
        tqdm.write(
            f"step {step:6d}: held-out targets reconstructed at {scores['target_reconstruction_psnr']:.2f} dB; "
            f"inputs {scores['input_psnr']:.2f} dB, after a VAE round trip {scores['input_roundtrip_psnr']:.2f} dB"
        )

    started = time.perf_counter()
    fit_autoencoder(
        model, streams, int(settings.steps), float(settings.lr), device, images=list(settings.images), on_step=evaluate
    )
    seconds = time.perf_counter() - started
    final = history[-1]
    summary = (
        f"{int(settings.steps)} steps on {device.type}; held-out targets {final['target_reconstruction_psnr']:.2f} dB, "
        f"input round trip costs {final['input_psnr'] - final['input_roundtrip_psnr']:.2f} dB"
    )
    metadata = {
        "summary": summary,
        "command": current_command(),
        "seed": int(cfg.seed),
        "environment": environment(),
        "seconds": round(seconds, 1),
        "device": str(device),
        "settings": OmegaConf.to_container(settings, resolve=True),
        "degradation": OmegaConf.to_container(degradation_cfg, resolve=True),  # of its lq and held-out inputs
        "heldout": {**OmegaConf.to_container(cfg.data.val_sr, resolve=True), "degradation": "see 'degradation'"},
        "history": history,
    }
    out = save_standin_vae(model, settings.out, metadata)
    print(f"stand-in VAE written to {out} ({summary}; {seconds:.0f} s)")
    if settings.get("results_name"):
        path = write_standin_results(metadata, out, str(settings.results_name))
        print(f"results file {path}")
    return out
