"""Batch augmentation: reproducible under a generator, shape-preserving, and doing what it says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sasg.data.augment import (
    AUGMENTATIONS,
    denormalize,
    make_augmentation,
    normalize,
    random_crop,
    random_flip,
    random_rotation,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_same_seed_same_output_and_shape_kept(name):
    aug = make_augmentation(name)
    x = batch(6, 3, 16, 16)
    a, b = aug(x, gen(1)), aug(x, gen(1))
    assert a.shape == x.shape and torch.equal(a, b)
    if name != "none":
        assert not torch.equal(a, aug(x, gen(2)))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_leading_worker_dimension_is_flattened(name):
    aug = make_augmentation(name)
    x = batch(3, 4, 1, 12, 12)  # (M, B, C, H, W)
    out = aug(x, gen(5))
    assert out.shape == x.shape
    assert torch.equal(out, aug(x.reshape(12, 1, 12, 12), gen(5)).reshape(x.shape))


def test_flip_really_flips():
    x = batch(5, 2, 8, 8)
    assert torch.equal(random_flip(x, gen(0), p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, gen(0), p=0.0), x)
    out = random_flip(batch(200, 1, 4, 4), gen(3))
    flipped = sum(torch.equal(o, i.flip(-1)) for o, i in zip(out, batch(200, 1, 4, 4)))
    assert 60 < flipped < 140  # p = 0.5


def test_crop_with_padding_shifts_content():
    x = batch(50, 3, 10, 10) + 10.0  # no zeros inside the images
    out = random_crop(x, gen(4), padding=4)
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(x.shape[0]):
        found = [
            (t, l) for t in range(9) for l in range(9) if torch.equal(out[i], padded[i, :, t : t + 10, l : l + 10])
        ]
        assert len(found) == 1  # every output is one window of the zero-padded image
        offsets.add(found[0])
    assert len(offsets) > 10  # the windows really move
    shifted = [i for i in range(50) if not torch.equal(out[i], x[i])]
    assert shifted and all((out[i] == 0).any() for i in shifted)  # the padding shows where content moved


def test_crop_fill_value_and_no_padding():
    x = batch(8, 1, 6, 6)
    assert torch.equal(random_crop(x, gen(0), padding=0), x)
    out = random_crop(torch.zeros(30, 1, 6, 6), gen(1), padding=2, fill=-1.0)
    assert set(out.unique().tolist()) == {-1.0, 0.0}


def test_rotation_is_small_and_keeps_the_centre():
    x = torch.ones(10, 1, 17, 17)
    out = random_rotation(x, gen(0), max_degrees=15.0)
    assert torch.allclose(out[:, :, 4:13, 4:13], x[:, :, 4:13, 4:13], atol=1e-5)  # the interior stays
    assert (out[:, :, 0, 0] < 1).any()  # some corner now comes from outside the image
    y = batch(4, 3, 16, 16)
    assert torch.allclose(random_rotation(y, gen(0), max_degrees=0.0), y, atol=1e-5)
    assert not torch.allclose(random_rotation(y, gen(0), max_degrees=15.0), y, atol=1e-2)
    filled = random_rotation(torch.zeros(20, 1, 9, 9), gen(2), max_degrees=15.0, fill=3.0)
    assert filled.max() > 0.5 and filled[:, :, 4, 4].abs().max() < 1e-5


def test_normalize_round_trip():
    x = torch.rand(3, 3, 4, 4, generator=gen(0))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    n = normalize(x, mean, std)
    assert torch.allclose(n[:, 1], (x[:, 1] - 0.4822) / 0.2435)
    assert torch.allclose(denormalize(n, mean, std), x, atol=1e-6)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="--augment"):
        make_augmentation("mixup")
    with pytest.raises(ValueError, match="--augment none"):
        make_augmentation("crop-flip")(batch(4, 12), gen(0))
    assert make_augmentation("none")(batch(4, 12), gen(0)).shape == (4, 12)
    assert make_augmentation("Crop_Flip") is make_augmentation("crop-flip")
