"""Image transforms: CLIP normalisation, ALBEF's RandomAugment magnitudes, switchable flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from albef_struct.data import transforms as T
from tests.data_fixtures import make_asymmetric_image


def _normalised(color):
    return [(c / 255 - m) / s for c, m, s in zip(color, T.CLIP_MEAN, T.CLIP_STD)]


def test_clip_constants():
    assert T.CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert T.CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_test_transform_constant_image_is_exactly_normalised():
    color = (100, 150, 200)
    out = T.test_transform(8)(Image.new("RGB", (20, 13), color))
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    expected = torch.tensor(_normalised(color)).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("builder", [T.pretrain_transform, T.train_transform])
def test_training_transforms_output_normalised_float(builder):
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = builder(16)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    lo = torch.tensor(_normalised((0, 0, 0))).view(3, 1, 1)
    hi = torch.tensor(_normalised((255, 255, 255))).view(3, 1, 1)
    assert bool(((out >= lo - 1e-5) & (out <= hi + 1e-5)).all())


def test_random_augment_magnitudes_at_m7():
    assert T.op_argument("Brightness", 7) == pytest.approx(1.36)
    assert T.op_argument("Sharpness", 7) == pytest.approx(1.36)
    assert T.op_argument("Brightness", 7, negate=True) == pytest.approx(1.36)  # enhance factors are never negated
    assert T.op_argument("ShearX", 7) == pytest.approx(0.21)
    assert T.op_argument("TranslateY", 7, negate=True) == pytest.approx(-7.0)
    assert T.op_argument("Rotate", 7) == pytest.approx(21.0)
    assert T.op_argument("Equalize", 7) is None
    with pytest.raises(ValueError, match="Unknown RandomAugment op"):
        T.op_argument("Solarize", 7)


def test_brightness_op_scales_pixels():
    out = T.apply_op(Image.new("RGB", (4, 4), (100, 50, 200)), "Brightness", T.op_argument("Brightness", 7))
    assert out.getpixel((0, 0)) == (136, 68, 255)  # 1.36x, clipped at 255


def test_translate_moves_by_seven_pixels_and_fills_grey():
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, 10] = 255
    out = np.asarray(T.apply_op(Image.fromarray(arr), "TranslateX", T.op_argument("TranslateX", 7)))
    assert out[:, 17].min() == 255 and out[:, 10].max() == 0
    assert (out[:, :7] == 128).all()  # uncovered strip filled with (128, 128, 128)


def test_shear_is_about_the_top_left_corner():
    arr = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = np.asarray(T.apply_op(Image.fromarray(arr), "ShearX", 0.21))
    np.testing.assert_array_equal(out[0], arr[0])  # row 0 does not move
    assert not np.array_equal(out[-1], arr[-1])


def test_random_augment_samples_rotate_21_degrees_with_random_sign():
    aug = T.RandomAugment(2, 7, ops=("Rotate",), p=1.0, generator=torch.Generator().manual_seed(0))
    angles = {arg for _ in range(20) for _, arg in aug.make_params([])["steps"]}
    assert angles == {21.0, -21.0}
    out = np.asarray(aug(Image.new("RGB", (32, 32), (0, 0, 0))))
    assert tuple(out[0, 0]) == (128, 128, 128)  # rotated corners take the grey fill


def test_random_augment_applies_each_op_with_probability_half():
    aug = T.RandomAugment(2, 7, generator=torch.Generator().manual_seed(0))
    n_steps = [len(aug.make_params([])["steps"]) for _ in range(2000)]
    assert np.mean(n_steps) == pytest.approx(1.0, abs=0.06)  # 2 ops x p=0.5
    assert set(n_steps) == {0, 1, 2}


def test_random_augment_is_a_module_reproducible_and_handles_tensors():
    assert isinstance(T.RandomAugment(), nn.Module)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    runs = []
    for _ in range(2):
        aug = T.RandomAugment(2, 7, generator=torch.Generator().manual_seed(5))
        runs.append([np.asarray(aug(img)) for _ in range(6)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    tensor_out = v2.Compose([v2.PILToTensor(), T.RandomAugment(2, 7)])(img)
    assert tensor_out.shape == (3, 24, 24) and tensor_out.dtype == torch.uint8


def test_random_augment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="subset"):
        T.RandomAugment(ops=("Identity", "Posterize"))


def _left_darker(out: torch.Tensor) -> bool:
    half = out.shape[-1] // 2
    return bool(out[..., :half].mean() < out[..., half:].mean())


def test_hflip_false_never_flips():
    torch.manual_seed(0)
    img = make_asymmetric_image()
    for builder in (T.pretrain_transform, T.train_transform):
        tf = builder(16, crop_scale=(1.0, 1.0), hflip=False, randaugment=False)
        assert all(_left_darker(tf(img)) for _ in range(30))


def test_hflip_true_flips_sometimes():
    torch.manual_seed(0)
    tf = T.train_transform(16, crop_scale=(1.0, 1.0), hflip=True, randaugment=False)
    flags = [_left_darker(tf(make_asymmetric_image())) for _ in range(30)]
    assert any(flags) and not all(flags)
