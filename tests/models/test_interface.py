"""The model's range conversions: [0, 1] images ↔ [−1, 1] pixel values, and the defocus condition."""

import torch

from magicbokeh.models.interface import defocus_to_condition, images_to_pixel_values, pixel_values_to_images


def test_pixel_value_conversion_round_trip():
    images = torch.rand(2, 3, 4, 4)
    pixel_values = images_to_pixel_values(images)
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    torch.testing.assert_close(pixel_values_to_images(pixel_values), images)
    assert pixel_values_to_images(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


def test_defocus_condition_is_three_channels_in_minus_one_to_one():
    defocus = torch.tensor([[[[0.0, 0.25, 0.5, 1.0]]]])
    condition = defocus_to_condition(defocus)
    assert condition.shape == (1, 3, 1, 4)
    assert condition[0, :, 0].tolist() == [[-1.0, -0.5, 0.0, 1.0]] * 3
