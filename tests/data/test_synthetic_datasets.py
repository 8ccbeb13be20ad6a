"""Synthetic-scene datasets and the data configs: contract, determinism, instantiation from YAML."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from magicbokeh.data.datasets import DepthDistillDataset, SyntheticBokehDataset
from magicbokeh.data.degradations import RealESRGANDegradation
from magicbokeh.optics.defocus import defocus_map
from magicbokeh.utils.config import CONFIG_DIR, compose_config

KEYS = {"lq", "hq", "target", "task", "disparity", "focus_disparity", "K", "defocus", "meta"}


def test_synthetic_bokeh_contract_and_reproducibility():
    dataset = SyntheticBokehDataset(
        32, length=5, seed=0, degradation=RealESRGANDegradation(), max_coc_px=3, K_range=(16, 32), focus="subject"
    )
    sample = dataset[2]
    assert set(sample) == KEYS and sample["task"] == "bokeh" and len(dataset) == 5
    assert sample["lq"].shape == sample["target"].shape == sample["hq"].shape == (3, 32, 32)
    assert sample["disparity"].shape == sample["defocus"].shape == (1, 32, 32)
    assert 16 <= float(sample["K"]) <= 32 and sample["meta"]["focus_rule"] == "subject"
    expected = defocus_map(sample["disparity"][None], sample["focus_disparity"], sample["K"])[0]
    assert torch.allclose(sample["defocus"], expected)
    again = dataset[2]
    assert all(torch.equal(sample[k], again[k]) for k in ("lq", "target", "disparity", "K"))
    assert not torch.equal(dataset[3]["target"], sample["target"])


def test_depth_distill_synthetic_without_files():
    dataset = DepthDistillDataset(None, degradation=RealESRGANDegradation(), crop_size=32, length=3, seed=1)
    sample = dataset[0]
    assert sample["clean"].shape == sample["degraded"].shape == (3, 32, 32)
    assert torch.equal(dataset[0]["degraded"], sample["degraded"])
    assert sample["disparity"].shape == (1, 32, 32) and 0 <= sample["disparity"].min() <= sample["disparity"].max() <= 1


def test_smoke_data_config_instantiates_every_node(monkeypatch):
    monkeypatch.chdir(CONFIG_DIR.parent)  # paths.data_dir is relative to the repository root
    cfg = compose_config("train", ["data=synthetic", "data.crop_size=32", "data.max_coc_px=2"])
    assert cfg.data.batch_size >= 1 and cfg.data.num_workers >= 0
    for node, task in (("bokeh_train", "bokeh"), ("sr_train", "sr"), ("val_bokeh", "bokeh"), ("val_sr", "sr")):
        dataset = instantiate(cfg.data[node])
        assert isinstance(dataset.degradation, RealESRGANDegradation)
        if task == "bokeh":  # the run's renderer settings, with the data config's CoC radius for its crop size
            assert dataset.renderer.method == cfg.renderer.method and dataset.renderer.max_coc_px == 2
        sample = dataset[0]
        assert sample["task"] == task and sample["lq"].shape == (3, 32, 32), node


def test_paper_data_config_points_at_the_documented_layout():
    cfg = compose_config("train", ["data=paper", "paths.data_dir=/datasets"])
    assert cfg.data.bokeh_train.root == "/datasets/bokeh_train"
    assert list(cfg.data.sr_train.root) == ["/datasets/LSDIR/HR/train", "/datasets/FFHQ/images1024x1024"]
    assert list(cfg.data.sr_train.limit) == [None, 10000] and cfg.data.crop_size == 512
