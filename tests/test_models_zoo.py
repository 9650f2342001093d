"""Paper-scale models: exact parameter counts and forward shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sasg.models import MODELS, build_model, has_batchnorm, init_parameters, num_parameters
from sasg.models.lenet import lenet5
from sasg.models.resnet import resnet18_cifar
from sasg.models.vgg import vgg16_bn


def build(builder, shape, classes: int, seed: int = 0) -> nn.Module:
    """What build_model does: construct on meta (no global RNG), then init from a generator."""
    with torch.device("meta"):
        model = builder(shape, classes)
    return init_parameters(model.to_empty(device="cpu"), torch.Generator().manual_seed(seed))


def count_on_meta(builder, shape, classes: int) -> int:
    with torch.device("meta"):
        return num_parameters(builder(shape, classes))


def test_fc_count():
    assert num_parameters(build_model("fc", (1, 28, 28), 10, 0)) == 407_050


def test_resnet18_cifar_counts():
    assert count_on_meta(resnet18_cifar, (3, 32, 32), 10) == 11_173_962
    assert count_on_meta(resnet18_cifar, (3, 32, 32), 100) == 11_220_132  # + 90 * 513 for the head


def test_vgg16_bn_counts():
    # Conv k*k*cin*cout + cout (bias), BatchNorm 2*cout, head 512*classes + classes:
    #   block 1:  1,792 + 36,928                           =     38,720
    #   block 2:  73,856 + 147,584                         =    221,440
    #   block 3:  295,168 + 2 * 590,080                    =  1,475,328
    #   block 4:  1,180,160 + 2 * 2,359,808                =  5,899,776
    #   block 5:  3 * 2,359,808                            =  7,079,424
    #   convs                                              = 14,714,688
    #   BatchNorm 2 * (2*64 + 2*128 + 3*256 + 6*512)       =      8,448
    #   head 512 * 10 + 10                                 =      5,130
    #   total                                              = 14,728,266
    assert count_on_meta(vgg16_bn, (3, 32, 32), 10) == 14_728_266
    assert count_on_meta(vgg16_bn, (3, 32, 32), 100) == 14_728_266 - 5_130 + 51_300


def test_lenet5_counts():
    # 1x28x28 (padded conv1): 156 + 2,416 + 400*120+120 + 120*84+84 + 84*10+10 = 61,706
    assert count_on_meta(lenet5, (1, 28, 28), 10) == 61_706
    # 3x32x32: conv1 has 3*25*6 + 6 = 456 instead of 156
    assert count_on_meta(lenet5, (3, 32, 32), 10) == 62_006


@pytest.mark.parametrize(
    "builder,shape,classes",
    [
        (lenet5, (1, 28, 28), 10),
        (lenet5, (3, 32, 32), 10),
        (resnet18_cifar, (3, 32, 32), 10),
        (resnet18_cifar, (1, 28, 28), 10),
        (vgg16_bn, (3, 32, 32), 100),
    ],
)
def test_forward_shapes(builder, shape, classes):
    model = build(builder, shape, classes)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    model.eval()
    assert model(x).shape == (2, classes)


def test_init_is_deterministic_and_batchnorm_flagged():
    a, b = build(lenet5, (1, 28, 28), 10, seed=3), build(lenet5, (1, 28, 28), 10, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not has_batchnorm(a)
    with torch.device("meta"):
        assert has_batchnorm(resnet18_cifar((3, 32, 32), 10)) and has_batchnorm(vgg16_bn((3, 32, 32), 10))


def test_shape_errors_name_the_fix():
    with pytest.raises(ValueError, match="--model fc"):
        lenet5((784,), 10)
    with pytest.raises(ValueError, match="at least 32x32"):
        vgg16_bn((1, 28, 28), 10)


@pytest.mark.parametrize(
    "name,shape,classes,count",
    [("lenet5", (1, 28, 28), 10, 61_706), ("resnet18", (3, 32, 32), 10, 11_173_962), ("vgg16", (3, 32, 32), 10, 14_728_266)],
)
def test_registry_entries(name, shape, classes, count):
    if name not in MODELS:
        pytest.skip(f"{name} not registered in sasg.models.MODELS yet")
    assert num_parameters(build_model(name, shape, classes, seed=0)) == count
