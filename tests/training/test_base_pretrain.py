"""The stand-in for SD2.1's pretrained VAE: in-run fitting, the sample pool, save/load, the fitting script and the
file that ships for the smoke run."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.evaluation.metrics import psnr
from magicbokeh.training.base_pretrain import (
    STANDIN_METADATA_KEYS,
    STANDIN_SCRIPT,
    SamplePool,
    fit_autoencoder,
    fit_standin_from_config,
    load_standin_vae,
    save_standin_vae,
)
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.results import read_results


def _tiny(*overrides: str):
    torch.manual_seed(0)
    return instantiate(compose_config("train", ["model=tiny", *overrides]).model)


def _vae_base(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.vae.named_parameters() if ".lora_" not in n}


class _Pairs(torch.utils.data.Dataset):
    """Smooth random images and noisy copies: a learnable reconstruction task in a few steps."""

    def __init__(self, count: int = 32, size: int = 16) -> None:
        generator = torch.Generator().manual_seed(1)
        coarse = torch.rand(count, 3, size // 4, size // 4, generator=generator)
        self.targets = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        self.lqs = (self.targets + 0.05 * torch.randn(self.targets.shape, generator=generator)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        return {"target": self.targets[index], "lq": self.lqs[index]}


def test_fit_autoencoder_trains_only_the_vae_base_on_the_named_images():
    model = _tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stream = BatchStream(_Pairs(), 4, seed=0)
    seen = []
    first = fit_autoencoder(model, [stream], 1, 1e-3, torch.device("cpu"), images=("target", "lq"))
    last = fit_autoencoder(
        model, [stream], 30, 2e-3, torch.device("cpu"), images=("target", "lq"), on_step=lambda s, l: seen.append(s)
    )
    assert seen == list(range(1, 31))
    assert last < first
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("vae.") and ".lora_" not in n for n in changed)
    assert not any(p.requires_grad for p in model.parameters())  # left frozen for the phases to choose from
    with pytest.raises(ConfigError, match="image key"):
        fit_autoencoder(model, [stream], 1, 1e-3, torch.device("cpu"), images=())


def test_sample_pool_draws_flipped_batches_of_its_fixed_samples():
    stream = BatchStream(_Pairs(count=8), 4, seed=0)
    pool = SamplePool(stream, 8, ["target", "lq"], torch.device("cpu"), seed=3)
    assert pool.images["target"].dtype == torch.uint8 and pool.images["target"].shape == (8, 3, 16, 16)
    stored = pool.images["target"].float() / 255
    for _ in range(5):
        batch = next(pool)
        assert batch["target"].shape == (4, 3, 16, 16) and batch["lq"].shape == (4, 3, 16, 16)
        for image in batch["target"]:  # every image is a pooled one, as stored or mirrored
            assert any(torch.equal(image, s) or torch.equal(image, s.flip(-1)) for s in stored)
    first, second = (
        SamplePool(BatchStream(_Pairs(count=8), 4, seed=0), 8, ["target"], torch.device("cpu"), seed=3) for _ in "ab"
    )
    assert torch.equal(next(first)["target"], next(second)["target"])  # same stream and seed: same batches
    with pytest.raises(ConfigError, match="pool_size"):
        SamplePool(stream, 2, ["target"], torch.device("cpu"))


def test_save_and_load_round_trip_the_vae_base_weights_only(tmp_path):
    fitted = _tiny()
    with torch.no_grad():
        for name, param in fitted.vae.named_parameters():
            param.add_(0.01 * (1 + hash(name) % 7))
    path = save_standin_vae(fitted, tmp_path / "vae.safetensors", {"summary": "test", "steps": 3})

    fresh = _tiny()
    lora_before = {n: p.detach().clone() for n, p in fresh.named_parameters() if ".lora_" in n}
    others_before = {n: p.detach().clone() for n, p in fresh.named_parameters() if not n.startswith("vae.")}
    metadata = load_standin_vae(fresh, path)
    assert metadata == {"summary": "test", "steps": 3}
    expected = _vae_base(fitted)
    for name, value in _vae_base(fresh).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    for name, value in {**lora_before, **others_before}.items():
        assert torch.equal(dict(fresh.named_parameters())[name], value), name
    # A file does not depend on the LoRA settings of the model it was saved from.
    load_standin_vae(_tiny("model.vae_lora_rank=2"), path)


def test_load_refuses_missing_foreign_and_mismatched_files(tmp_path):
    model = _tiny()
    with pytest.raises(MissingWeightsError, match=r"trainer.base_pretrain.init_from.*fit_standin_vae"):
        load_standin_vae(model, tmp_path / "absent.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="not a stand-in VAE"):
        load_standin_vae(model, tmp_path / "other.safetensors")
    wider = save_standin_vae(_tiny("model.vae_config.latent_channels=8", "model.unet_config.in_channels=8",
                                   "model.unet_config.out_channels=8"), tmp_path / "wide.safetensors", {})  # fmt: skip
    before = _vae_base(model)
    with pytest.raises(ConfigError, match="fitted for another VAE"):
        load_standin_vae(model, wider)
    assert all(torch.equal(v, before[n]) for n, v in _vae_base(model).items())  # nothing loaded


@pytest.mark.slow
def test_fitting_script_writes_a_file_the_training_run_loads(tmp_path):
    from magicbokeh.training.train import train
    from tests.training.test_train_smoke import _toy_overrides

    out = tmp_path / "standin.safetensors"
    cfg = compose_config(
        "train",
        [
            "experiment=smoke",
            "data.crop_size=16",
            "data.val_sr.length=4",
            "standin_vae.steps=4",
            "standin_vae.batch_size=2",
            "standin_vae.pool_size=4",
            "standin_vae.num_workers=0",
            "standin_vae.num_threads=null",
            "standin_vae.eval_every=2",
            f"standin_vae.out={out}",
        ],
    )
    fit_standin_from_config(cfg)
    loaded = _tiny()
    metadata = load_standin_vae(loaded, out)
    assert [row["step"] for row in metadata["history"]] == [2, 4]
    # Everything needed to fit it again: command, seed, settings, degradation, code commit and versions.
    assert tuple(metadata) == STANDIN_METADATA_KEYS
    assert metadata["seed"] == cfg.seed and metadata["command"]
    assert len(metadata["environment"]["commit"]) == 40 and metadata["environment"]["versions"]["torch"]
    assert metadata["settings"] == OmegaConf.to_container(cfg.standin_vae, resolve=True)
    # ... and its own results file (the tests' results folder, see conftest.py) with the same held-out history.
    document = read_results(cfg.standin_vae.results_name)
    assert [row[0] for row in document["tables"]["history"]["rows"]] == [2, 4]
    assert document["figures"]["history"] == metadata["history"] and document["seed"] == cfg.seed
    # ... recorded as the file records it (checked before the weights were written: writing the shipped file would
    # make the tree look modified)
    assert document["environment"] == metadata["environment"] and document["command"] == metadata["command"]
    assert {"target_reconstruction_psnr", "input_psnr", "input_roundtrip_psnr"} <= set(metadata["history"][-1])
    assert metadata["settings"]["steps"] == 4
    assert metadata["degradation"]["scale"] == cfg.standin_vae.degradation_scale  # the node's pinned recipe
    # the held-out inputs are degraded the same way: their PSNR is that of the pinned-scale val_sr set
    heldout = instantiate(
        cfg.data.val_sr, degradation=instantiate(cfg.degradation, scale=metadata["degradation"]["scale"])
    )
    pairs = [heldout[i] for i in range(len(heldout))]
    expected_input = sum(psnr(p["lq"][None], p["target"][None]).item() for p in pairs) / len(pairs)
    assert metadata["history"][-1]["input_psnr"] == pytest.approx(expected_input)

    run = compose_config(
        "train",
        [
            "experiment=smoke",
            *_toy_overrides(tmp_path, "from_file"),
            f"trainer.base_pretrain.init_from={out}",
            "trainer.base_pretrain.steps=0",
            "trainer.max_steps=1",
            "trainer.val_every=0",
            "trainer.checkpoint_every=0",
        ],
    )
    results = train(run)
    from magicbokeh.models import MagicBokehModel

    final = MagicBokehModel.from_pretrained(tmp_path / "smoke" / "from_file" / "final")
    expected = _vae_base(loaded)
    # The first step is sr_pretrain (encoder LoRA + UNet LoRA): the VAE base weights stay as loaded.
    for name, value in _vae_base(final).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    assert json.loads((tmp_path / "smoke" / "from_file" / "final_eval.json").read_text())
    assert results["steps_per_s"] > 0


def test_the_shipped_smoke_vae_fits_the_smoke_model():
    """data/pretrained/smoke_vae.safetensors is what `make smoke` loads: it must match the smoke model's VAE and
    record how it was fitted and how it does on the held-out photos."""
    cfg = compose_config("train", ["experiment=smoke"])
    model = instantiate(cfg.model)
    metadata = load_standin_vae(model, cfg.trainer.base_pretrain.init_from)
    assert metadata["settings"]["steps"] == cfg.standin_vae.steps
    final = metadata["history"][-1]
    assert final["step"] == cfg.standin_vae.steps
    assert final["target_reconstruction_psnr"] > 25.0


def test_the_shipped_smoke_vae_records_what_the_current_fit_writes():
    """The shipped file's metadata has exactly the keys the fitting code writes, and the recipe of the smoke config's
    standin_vae node: the file was made by the current code and can be made again from what it records."""
    cfg = compose_config("train", ["experiment=smoke"])
    with safe_open(str(cfg.trainer.base_pretrain.init_from), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["fit"])
    assert tuple(metadata) == STANDIN_METADATA_KEYS
    assert metadata["command"] == STANDIN_SCRIPT and metadata["seed"] == cfg.seed
    assert metadata["settings"] == OmegaConf.to_container(cfg.standin_vae, resolve=True)
    pinned = OmegaConf.merge(cfg.degradation, {"scale": cfg.standin_vae.degradation_scale})
    assert metadata["degradation"] == OmegaConf.to_container(pinned, resolve=True)
    assert metadata["environment"]["dirty"] is False and len(metadata["environment"]["commit"]) == 40


@pytest.mark.parametrize("override", ["standin_vae.steps=0", "standin_vae.eval_every=0"])
def test_fitting_script_refuses_a_fit_it_could_not_report(tmp_path, override):
    cfg = compose_config("train", ["experiment=smoke", override, f"standin_vae.out={tmp_path / 'vae.safetensors'}"])
    with pytest.raises(ConfigError, match="must be ≥ 1"):
        fit_standin_from_config(cfg)
    assert not (tmp_path / "vae.safetensors").exists()
