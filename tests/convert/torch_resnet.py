"""A minimal PyTorch ResNet with torchvision's state-dict keys, the reference for the converter's parity tests."""

import torch
from torch import nn


class TorchBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1) residual block, ResNet v1.5."""

    def __init__(self, kind, in_channels, planes, stride, width_per_group):
        super().__init__()
        out_channels = planes * (1 if kind == "basic" else 4)
        if kind == "basic":
            shapes = [(in_channels, planes, 3, stride), (planes, planes, 3, 1)]
        else:
            width = planes * width_per_group // 64
            shapes = [(in_channels, width, 1, 1), (width, width, 3, stride), (width, out_channels, 1, 1)]
        for i, (cin, cout, kernel, s) in enumerate(shapes, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel, s, kernel // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
        self.depth = len(shapes)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = x
        for i in range(1, self.depth + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            if i < self.depth:
                y = torch.relu(y)
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """``forward`` returns the outputs of layer1..layer{num_stages}; ``fc`` exists (unused) when all 4 stages do."""

    def __init__(self, kind, layers, width_per_group=64, num_stages=4, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for stage in range(1, num_stages + 1):
            planes = 64 * 2 ** (stage - 1)
            blocks = []
            for j in range(layers[stage - 1]):
                blocks.append(TorchBlock(kind, channels, planes, 2 if stage > 1 and j == 0 else 1, width_per_group))
                channels = planes * (1 if kind == "basic" else 4)
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = num_stages
        if num_stages == 4:
            self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        features = []
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
            features.append(x)
        return features
