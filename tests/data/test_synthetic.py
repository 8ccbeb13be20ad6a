"""Synthetic layered scenes: seeded, well-formed, and their ground truth keeps the in-focus layer sharp."""

import json

import pytest
import torch

from magicbokeh.data.io import write_image
from magicbokeh.data.synthetic import SyntheticScene, SyntheticSceneGenerator, render_scene
from magicbokeh.errors import DatasetError, MagicBokehError

HEIGHT, WIDTH = 48, 64


def _scene(seed, **kwargs) -> SyntheticScene:
    return SyntheticSceneGenerator(HEIGHT, WIDTH, **kwargs)(torch.Generator().manual_seed(seed))


def test_same_seed_gives_the_same_scene_and_other_seeds_differ():
    first, again, other = _scene(3), _scene(3), _scene(4)
    for name in ("image", "disparity", "subject_mask", "layer_colors", "layer_alphas", "layer_disparity"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    assert first.meta == again.meta
    assert not torch.equal(first.image, other.image)


def test_generation_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _scene(5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("seed", range(6))
def test_shapes_ranges_and_mask(seed):
    scene = _scene(seed)
    layers = 1 + scene.meta["num_objects"]
    assert 2 <= scene.meta["num_objects"] <= 4
    assert scene.image.shape == (3, HEIGHT, WIDTH) and scene.image.dtype == torch.float32
    assert scene.disparity.shape == (1, HEIGHT, WIDTH)
    assert scene.subject_mask.shape == (1, HEIGHT, WIDTH) and scene.subject_mask.dtype == torch.bool
    assert scene.layer_colors.shape == (layers, 3, HEIGHT, WIDTH)
    assert scene.layer_alphas.shape == (layers, 1, HEIGHT, WIDTH)
    assert scene.layer_disparity.shape == (layers, 1, HEIGHT, WIDTH)
    for tensor in (scene.image, scene.layer_colors, scene.layer_alphas):
        assert tensor.min() >= 0 and tensor.max() <= 1
    assert scene.disparity.min() == 0 and scene.disparity.max() == pytest.approx(1.0)
    assert torch.equal(scene.layer_alphas[0], torch.ones(1, HEIGHT, WIDTH))  # opaque background
    assert scene.subject_mask.any()
    # Objects are fronto-parallel, ordered back to front, all nearer than every point of the background.
    object_disparity = [float(scene.layer_disparity[i].mean()) for i in range(1, layers)]
    assert object_disparity == sorted(object_disparity)
    assert min(object_disparity) > float(scene.layer_disparity[0].max())
    subject = scene.meta["subject_index"]
    assert scene.meta["subject_disparity"] == pytest.approx(object_disparity[subject - 1])
    json.dumps(scene.meta)  # plain Python values only


def test_all_in_focus_image_is_the_ground_truth_at_blur_zero():
    scene = _scene(7)
    assert (render_scene(scene, 0.5, 0.0) - scene.image).abs().max() < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_keeps_the_in_focus_layer_sharp_and_blurs_the_rest(seed):
    scene = _scene(seed)
    front = scene.layer_alphas.shape[0] - 1
    focus = float(scene.layer_disparity[front].mean())
    bokeh = render_scene(scene, focus, 12.0)
    assert bokeh.shape == scene.image.shape and bokeh.min() >= 0 and bokeh.max() <= 1
    opaque = scene.layer_alphas[front] == 1  # the in-focus front object, nothing in front of it
    assert opaque.sum() > 20
    assert (bokeh - scene.image).abs().amax(dim=0, keepdim=True)[opaque].max() < 1e-4
    background = scene.layer_alphas[1:].amax(dim=0) == 0
    assert (bokeh - scene.image).abs().mean(dim=0, keepdim=True)[background].mean() > 0.005


def test_texture_folder_supplies_photo_textures(tmp_path):
    generator = torch.Generator().manual_seed(0)
    for index in range(2):
        write_image(tmp_path / f"photo_{index}.png", torch.rand(3, 40, 50, generator=generator))
    scene = _scene(1, texture_dir=tmp_path, photo_probability=1.0)
    assert all(kind.startswith("photo") for kind in scene.meta["textures"])
    assert scene.image.shape == (3, HEIGHT, WIDTH)


def test_bad_texture_folder_raises_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        SyntheticSceneGenerator(HEIGHT, WIDTH, texture_dir=tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images"):
        SyntheticSceneGenerator(HEIGHT, WIDTH, texture_dir=tmp_path)
    assert issubclass(DatasetError, MagicBokehError)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_objects": (3, 2)}, {"num_objects": (0, 2)}, {"background_disparity": (0.0, 0.6)}, {"height": 8}],
)
def test_bad_settings_raise(kwargs):
    arguments = {"height": HEIGHT, "width": WIDTH, **kwargs}
    with pytest.raises(MagicBokehError):
        SyntheticSceneGenerator(arguments.pop("height"), arguments.pop("width"), **arguments)


def test_a_generator_is_required():
    with pytest.raises(MagicBokehError, match="torch.Generator"):
        SyntheticSceneGenerator(HEIGHT, WIDTH)(0)
