"""Torchvision-free CIFAR networks for benchmarks: ResNet-56, VGG-16-BN, MobileNetV2 (32x32)."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2): three stages of ``n`` basic blocks with 16/32/64 channels."""

    def __init__(self, n: int = 9, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        ]  # fmt: skip
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs (13 convs, one 512->classes linear head)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so folded weights are not all alike."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def to_onnx(model: nn.Module, seed: int = 0) -> onnx.ModelProto:
    """Export ``model`` (random weights, eval mode) at 1x3x32x32 with the legacy exporter."""
    torch.manual_seed(seed)
    randomize_bn(model, seed)
    model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = (torch.randn(1, 3, 32, 32),)
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return onnx.load_from_string(buf.getvalue())


def resnet56_onnx(seed: int = 0) -> onnx.ModelProto:
    """CIFAR ResNet-56 (3 stages x 9 basic blocks, 16/32/64 channels), random weights."""
    torch.manual_seed(seed)
    return to_onnx(ResNetCifar(9), seed)


def vgg16_bn_onnx(seed: int = 0) -> onnx.ModelProto:
    """CIFAR VGG-16-BN (13 convs, 32x32 input), random weights."""
    torch.manual_seed(seed)
    return to_onnx(VGGCifar(), seed)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; identity skip when shapes
    match (the expanded channels of such a block are a removable branch)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.skip else y


MOBILENET_V2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                    (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip
"""(expansion, channels, blocks, first stride) per stage; CIFAR strides (32x32 input)."""


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 inputs (stem stride 1, 17 inverted residual blocks, 1280 head)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()
        ]  # fmt: skip
        cin = 32
        for t, c, n, s in MOBILENET_V2_CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mobilenet_v2_onnx(seed: int = 0) -> onnx.ModelProto:
    """CIFAR MobileNetV2 (32x32 input), random weights."""
    torch.manual_seed(seed)
    return to_onnx(MobileNetV2Cifar(), seed)
