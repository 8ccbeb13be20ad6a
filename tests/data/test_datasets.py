"""File-backed datasets on folders built in the test: the sample contract, reproducibility, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from magicbokeh.data.datasets import (
    DepthDistillDataset,
    EBBDataset,
    RenderedBokehDataset,
    SRFolderDataset,
    focus_mask_from_pair,
)
from magicbokeh.data.degradations import RealESRGANDegradation
from magicbokeh.data.io import read_image, write_disparity, write_image
from magicbokeh.errors import DatasetError, ImageReadError, MagicBokehError
from magicbokeh.optics.defocus import defocus_map
from magicbokeh.utils.config import compose_config

SIZE = 40
CROP = 32


def _photo(seed: int, height: int = SIZE, width: int = SIZE + 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(3, height // 8, width // 8, generator=generator)
    return torch.nn.functional.interpolate(base[None], size=(height, width), mode="bilinear")[0].clamp(0, 1)


def _ramp(height: int = SIZE, width: int = SIZE + 8) -> torch.Tensor:
    return torch.linspace(0, 1, width).expand(1, height, width).clone()


@pytest.fixture
def photo_folder(tmp_path):
    """image/ (PNG+JPEG), disparity/ (.npy and 16-bit PNG), mask/ for one of them."""
    for i, name in enumerate(("a", "b", "c")):
        write_image(tmp_path / "image" / f"{name}.{'jpg' if i == 2 else 'png'}", _photo(i))
        disparity = _ramp()
        write_disparity(tmp_path / "disparity" / f"{name}.{'png' if i == 1 else 'npy'}", disparity)
    mask = torch.zeros(1, SIZE, SIZE + 8)
    mask[:, 10:30, 10:20] = 1
    write_image(tmp_path / "mask" / "a.png", mask)
    return tmp_path


def _check_contract(sample: dict, task: str, size: int) -> None:
    assert set(sample) == {"lq", "hq", "target", "task", "disparity", "focus_disparity", "K", "defocus", "meta"}
    assert sample["task"] == task
    if task == "sr":
        assert torch.equal(sample["hq"], sample["target"])  # the clean image of an SR sample is its target
    for key, channels in (("lq", 3), ("hq", 3), ("target", 3), ("disparity", 1), ("defocus", 1)):
        value = sample[key]
        assert value.shape == (channels, size, size) and value.dtype == torch.float32, key
        assert value.min() >= 0 and value.max() <= 1, key
    for key in ("focus_disparity", "K"):
        assert sample[key].ndim == 0 and sample[key].dtype == torch.float32
    assert 0 <= float(sample["K"]) <= 32
    assert isinstance(sample["meta"]["index"], int) and "source" in sample["meta"]


# -- RenderedBokehDataset ---------------------------------------------------------------------------------------------
def test_rendered_bokeh_contract_and_defocus_formula(photo_folder):
    dataset = RenderedBokehDataset(
        root=photo_folder,
        crop_size=CROP,
        degradation=RealESRGANDegradation(),
        seed=3,
        max_coc_px=6,
        K_range=(8, 32),
        renderer={"num_layers": 8},
    )
    assert len(dataset) == 3
    for index in range(3):
        sample = dataset[index]
        _check_contract(sample, "bokeh", CROP)
        expected = defocus_map(sample["disparity"][None], sample["focus_disparity"], sample["K"])[0]
        assert torch.allclose(sample["defocus"], expected)
        assert 8 <= float(sample["K"]) <= 32
        assert not torch.equal(sample["lq"], sample["target"])


def test_rendered_bokeh_is_reproducible_per_index_and_subject_focus_uses_the_mask(photo_folder):
    dataset = RenderedBokehDataset(
        root=photo_folder,
        crop_size=None,
        seed=1,
        focus="subject",
        flip=False,
        length=7,
        max_coc_px=4,
        renderer={"num_layers": 6},
    )
    first, again = dataset[4], dataset[4]
    for key in ("lq", "target", "defocus"):
        assert torch.equal(first[key], again[key])
    assert len(dataset) == 7 and dataset[3]["meta"]["source"].endswith("a.png")
    sample = dataset[0]  # a.png has a mask over columns 10..19 of a left-to-right ramp
    assert torch.equal(sample["hq"], read_image(photo_folder / "image" / "a.png"))  # the clean photo, uncropped
    assert sample["meta"]["focus_rule"] == "subject"
    assert float(sample["focus_disparity"]) == pytest.approx(float(_ramp()[0, 0, 10:20].median()), abs=1e-3)
    assert dataset[1]["meta"]["focus_rule"] == "random"  # no mask for b → random pixel


def test_dataloader_with_workers_gives_the_same_samples(photo_folder):
    dataset = RenderedBokehDataset(
        root=photo_folder, crop_size=CROP, seed=5, max_coc_px=4, degradation=RealESRGANDegradation()
    )
    direct = [dataset[i] for i in range(3)]
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=1)))
    assert torch.equal(batch["lq"], torch.stack([s["lq"] for s in direct]))
    assert torch.equal(batch["K"], torch.stack([s["K"] for s in direct]))
    # The renderer's FFTs may round differently with the worker's thread count; the draws themselves are identical.
    assert torch.allclose(batch["target"], torch.stack([s["target"] for s in direct]), atol=1e-5)
    assert batch["task"] == ["bokeh"] * 3 and batch["K"].shape == (3,)


def test_missing_pair_names_the_photo(photo_folder):
    (photo_folder / "disparity" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"image/b\.png' has no disparity map"):
        RenderedBokehDataset(root=photo_folder)


def test_corrupt_image_names_the_file(photo_folder):
    (photo_folder / "image" / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    dataset = RenderedBokehDataset(root=photo_folder, crop_size=CROP)
    with pytest.raises(ImageReadError, match=r"c\.jpg"):
        dataset[2]


def test_size_mismatch_names_both_files(photo_folder):
    write_disparity(photo_folder / "disparity" / "a.npy", _ramp(SIZE, SIZE))
    dataset = RenderedBokehDataset(root=photo_folder, crop_size=CROP)
    with pytest.raises(DatasetError, match=r"disparity/a\.npy' is 40×40 but photo '.*image/a\.png' is 40×48"):
        dataset[0]


def test_bad_disparity_values_are_a_user_error(photo_folder):
    np.save(photo_folder / "disparity" / "a.npy", np.full((SIZE, SIZE + 8), 3.0, dtype=np.float32))
    with pytest.raises(MagicBokehError, match=r"a\.npy"):
        RenderedBokehDataset(root=photo_folder, crop_size=CROP)[0]


# -- EBB! -------------------------------------------------------------------------------------------------------------
@pytest.fixture
def ebb_folder(tmp_path):
    for n in (0, 1, 4400, 4401):
        wide = _photo(n)
        write_image(tmp_path / "original" / f"{n}.jpg", wide)
        bokeh = wide.clone()
        bokeh[:, :, 24:] = 0.5  # the right part "out of focus"
        write_image(tmp_path / "bokeh" / f"{n}.jpg", bokeh)
        write_disparity(tmp_path / "disparity" / f"{n}.npy", _ramp())
    return tmp_path


def test_ebb_splits_contract_and_pair_agreement_focus(ebb_folder):
    train = EBBDataset(ebb_folder, split="train", crop_size=None, flip=False, disparity_dir=ebb_folder / "disparity")
    val = EBBDataset(ebb_folder, split="val294", crop_size=None)
    assert [p[0].name for p in train.pairs] == ["0.jpg", "1.jpg"]
    assert len(val) == 2 and len(EBBDataset(ebb_folder, "all")) == 4
    sample = train[0]
    assert sample["lq"].shape == sample["target"].shape == (3, SIZE, SIZE + 8)  # full photo without crop_size
    assert torch.equal(sample["hq"], read_image(ebb_folder / "original" / "0.jpg"))  # the wide photo
    assert sample["meta"]["has_disparity"]
    assert float(sample["K"]) == 16.0 and sample["meta"]["focus_rule"] == "pair_agreement"
    assert float(sample["focus_disparity"]) < 0.5  # the unchanged (in-focus) part is on the left, low disparity
    without = val[0]
    assert not without["meta"]["has_disparity"] and float(without["defocus"].abs().sum()) == 0


def test_ebb_missing_partner_is_named(ebb_folder):
    (ebb_folder / "bokeh" / "1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"original/1\.jpg' has no shallow-DoF partner"):
        EBBDataset(ebb_folder, split="train")


def test_focus_mask_from_pair_marks_the_unchanged_region():
    wide = _photo(0)
    bokeh = wide.clone()
    bokeh[:, :, 24:] = torch.nn.functional.avg_pool2d(wide[None, :, :, 24:], 9, 1, 4)[0] * 0.7
    mask = focus_mask_from_pair(wide, bokeh)
    assert mask[:, :, :12].all() and not mask[:, :, 36:].any()


# -- SR and depth distillation ----------------------------------------------------------------------------------------
def test_sr_folder_nested_list_file_limit_and_contract(tmp_path):
    for i, sub in enumerate(("0001", "0001", "0002")):
        write_image(tmp_path / "lsdir" / sub / f"{i:04d}.png", _photo(i, 24, 24))  # smaller than the crop: upscaled
    (tmp_path / "list.txt").write_text("lsdir/0001/0000.png\n# comment\nlsdir/0002/0002.png\n")
    dataset = SRFolderDataset(tmp_path / "lsdir", crop_size=CROP, degradation=RealESRGANDegradation(), seed=0)
    assert len(dataset) == 3
    sample = dataset[1]
    _check_contract(sample, "sr", CROP)
    assert float(sample["defocus"].abs().sum()) == 0 and float(sample["K"]) == 0
    assert torch.equal(dataset[1]["lq"], sample["lq"])
    assert len(SRFolderDataset(tmp_path / "list.txt", crop_size=CROP)) == 2
    assert len(SRFolderDataset([tmp_path / "lsdir", tmp_path / "list.txt"], limit=[1, None], crop_size=CROP)) == 3
    with pytest.raises(DatasetError, match="does not exist"):
        SRFolderDataset(tmp_path / "nowhere")
    (tmp_path / "bad.txt").write_text("lsdir/missing.png\n")
    with pytest.raises(DatasetError, match="missing.png"):
        SRFolderDataset(tmp_path / "bad.txt")


def test_depth_distill_pairs_from_folder(tmp_path):
    write_image(tmp_path / "sa1b" / "x.jpg", _photo(0))
    dataset = DepthDistillDataset(tmp_path / "sa1b", degradation=RealESRGANDegradation(), crop_size=CROP, length=2)
    sample = dataset[0]
    assert set(sample) == {"clean", "degraded", "meta"}
    assert sample["clean"].shape == sample["degraded"].shape == (3, CROP, CROP)
    assert not torch.equal(sample["clean"], sample["degraded"])
    assert torch.equal(dataset[1]["degraded"], dataset[1]["degraded"])


def test_ebb_data_config_instantiates_on_an_ebb_folder(ebb_folder):
    cfg = compose_config("train", ["data=ebb", f"data.ebb_root={ebb_folder}", "data.crop_size=32"])
    train, val = instantiate(cfg.data.bokeh_train), instantiate(cfg.data.val_bokeh)
    assert len(train.pairs) == 2 and len(val.pairs) == 2
    sample = train[5]
    _check_contract(sample, "bokeh", 32)
    assert sample["meta"]["has_disparity"] and sample["meta"]["source"].endswith(("0.jpg", "1.jpg"))
