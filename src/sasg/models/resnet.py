"""ResNet-18, CIFAR variant: the model of the paper's CIFAR experiments.

Unlike the ImageNet ResNet, the stem is a single 3x3 convolution (stride 1) without max pooling,
so 32x32 images keep enough resolution through the four stages (64, 128, 256, 512 channels, two
BasicBlocks each, stride 2 at the start of stages 2-4). Convolutions carry no bias because a
BatchNorm follows each one; a block whose shape changes uses a 1x1 convolution + BatchNorm
shortcut. Global average pooling feeds one linear layer.

Parameters: exactly 11,173,962 for 10 classes and 11,220,132 for 100 classes (pinned in tests).
"""

from __future__ import annotations

from torch import Tensor, nn

from .lenet import _check_image_shape


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut: out = relu(F(x) + x)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """3x3 stem -> four stages of BasicBlocks -> global average pool -> linear head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ):
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.stages(self.stem(x))).flatten(1))


def resnet18_cifar(sample_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """ResNet-18 (CIFAR variant) for image inputs of ``sample_shape`` (C, H, W)."""
    c, h, w = _check_image_shape(sample_shape, "resnet18")
    if h < 8 or w < 8:
        raise ValueError(f"resnet18 needs images of at least 8x8 (three stride-2 stages), got {h}x{w}")
    return ResNetCifar(in_channels=c, num_classes=num_classes)
