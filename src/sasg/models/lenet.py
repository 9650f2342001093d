"""LeNet-5, the classic small convolutional net, for 1x28x28 (MNIST) or 3x32x32 (CIFAR) inputs.

Two 5x5 convolutions (6 and 16 channels), each followed by ReLU and 2x2 max pooling, then fully
connected layers 120-84-classes. The original network expects 32x32 inputs; 28x28 MNIST digits
get a 2-pixel zero padding in the first convolution (as LeCun padded them to 32x32), so both
input sizes reach the classifier with 16x5x5 = 400 features. ReLU and max pooling replace the
original tanh and trainable subsampling, as in most modern re-implementations.

Parameters: 61,706 for 1x28x28 with 10 classes; 62,006 for 3x32x32 with 10 classes.
"""

from __future__ import annotations

from torch import nn


def _check_image_shape(sample_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(sample_shape) != 3:
        raise ValueError(
            f"{model} needs image inputs shaped (C, H, W), got sample shape {tuple(sample_shape)}; "
            f"use --model fc or logreg for flat data"
        )
    c, h, w = (int(v) for v in sample_shape)
    return c, h, w


def lenet5(sample_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """LeNet-5 for ``sample_shape`` (C, H, W) with H, W >= 28 (28 is padded to 32)."""
    c, h, w = _check_image_shape(sample_shape, "lenet5")
    pad = 2 if (h, w) == (28, 28) else 0
    # conv 5x5 -> pool 2 -> conv 5x5 -> pool 2, with floor division as the layers do.
    fh = ((h + 2 * pad - 4) // 2 - 4) // 2
    fw = ((w + 2 * pad - 4) // 2 - 4) // 2
    if fh < 1 or fw < 1:
        raise ValueError(f"lenet5 needs images of at least 16x16 (28x28 MNIST or 32x32 CIFAR), got {h}x{w}")
    return nn.Sequential(
        nn.Conv2d(c, 6, kernel_size=5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * fh * fw, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
