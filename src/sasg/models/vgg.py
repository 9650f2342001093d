"""VGG-16 with BatchNorm, CIFAR variant (32x32 inputs).

Thirteen 3x3 conv-BN-ReLU layers in five blocks, each block closed by 2x2 max pooling, so a
32x32 image reaches the classifier as 512x1x1; the classifier is a single Linear(512, classes)
instead of ImageNet VGG's three large fully connected layers. Convolutions keep their bias, as in
the common CIFAR implementations whose parameter count is quoted in papers.

Parameters: 14,728,266 for 10 classes, 14,774,436 for 100 (worked out in tests/test_models_zoo.py).
"""

from __future__ import annotations

from torch import nn

from .lenet import _check_image_shape

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def vgg16_bn(sample_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """VGG-16-BN for image inputs of ``sample_shape`` (C, H, W) with H, W >= 32.

    Larger images are reduced to 1x1 by adaptive average pooling after the last block (a no-op,
    and parameter-free, at 32x32).
    """
    c, h, w = _check_image_shape(sample_shape, "vgg16")
    if h < 32 or w < 32:
        raise ValueError(
            f"vgg16 needs images of at least 32x32 (five 2x2 poolings), got {h}x{w}; "
            f"use --model lenet5 or resnet18 for 28x28 data"
        )
    layers: list[nn.Module] = []
    cin = c
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            cin = int(v)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
