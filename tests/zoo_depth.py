"""Look-alikes of residual blocks whose branch ends in BatchNorm and an activation before the
``Add``: YOLOv8's C2f bottleneck (SiLU), YOLOX's CSP block (BN + SiLU), MobileNetV3's block
(HardSwish, squeeze-excite) and a PicoDet-style depthwise block (HardSwish). Exported with the
legacy exporter (optionally with a dynamic batch axis) or dynamo, with trained-like BatchNorm
statistics and non-zero biases so the constants of removed channels matter."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import onnx
import torch
from torch import nn
from zoo import export_torch, randomize_bn

from evonnx.model.normalize import normalize


def _cbs(cin: int, cout: int, k: int = 1, groups: int = 1, act: str = "silu") -> nn.Sequential:
    acts: dict[str, nn.Module] = {
        "silu": nn.SiLU(),
        "hswish": nn.Hardswish(),
        "relu": nn.ReLU(),
        "none": nn.Identity(),
    }
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        acts[act],
    )


class C2fBottleneck(nn.Module):
    """YOLOv8: ``x + cv2(cv1(x))``, each a 3x3 Conv-BN-SiLU."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.cv1 = _cbs(c, hidden, 3)
        self.cv2 = _cbs(hidden, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2fNet(nn.Module):
    """Stem, a C2f block (split, two bottlenecks, concat, fuse), a 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbs(3, 8, 3)
        self.cv1 = _cbs(8, 8)
        self.m = nn.ModuleList([C2fBottleneck(4, 6), C2fBottleneck(4, 4)])
        self.cv2 = _cbs(16, 8)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.head(self.cv2(torch.cat(y, 1)))


class CSPBottleneck(nn.Module):
    """YOLOX: ``x + conv2(conv1(x))`` with a 1x1 then a 3x3 Conv-BN-SiLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = _cbs(c, c)
        self.conv2 = _cbs(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class CSPNet(nn.Module):
    """Stem and a CSP layer: two 1x1 paths, bottlenecks on one, concat, 1x1 fuse; pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbs(3, 8, 3)
        self.conv1 = _cbs(8, 4)
        self.conv2 = _cbs(8, 4)
        self.m = nn.Sequential(CSPBottleneck(4), CSPBottleneck(4))
        self.conv3 = _cbs(8, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], 1))
        return self.fc(y.mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class MobileNetV3Block(nn.Module):
    """Expand (HardSwish), depthwise (HardSwish), squeeze-excite, project (BN) + skip."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.expand = _cbs(c, hidden, act="hswish")
        self.dw = _cbs(hidden, hidden, 3, groups=hidden, act="hswish")
        self.se = SqueezeExcite(hidden, 4)
        self.project = _cbs(hidden, c, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.dw(self.expand(x))))


class MobileNetV3Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbs(3, 8, 3, act="hswish")
        self.blocks = nn.Sequential(MobileNetV3Block(8, 16), MobileNetV3Block(8, 24))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class PicoDetBlock(nn.Module):
    """PicoDet/ESNet style: 1x1 (HardSwish), 5x5 depthwise (BN only), 1x1 (BN, HardSwish),
    added to the input."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = _cbs(c, hidden, act="hswish")
        self.dw = _cbs(hidden, hidden, 5, groups=hidden, act="none")
        self.pw2 = _cbs(hidden, c, act="hswish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.dw(self.pw1(x)))


class PicoDetNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbs(3, 8, 3, act="hswish")
        self.blocks = nn.Sequential(PicoDetBlock(8, 12), PicoDetBlock(8, 12))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# name -> (factory, input shape, removable branches)
DEPTH_ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "c2f": (C2fNet, (1, 3, 12, 12), 2),
    "csp": (CSPNet, (1, 3, 10, 10), 2),
    "mobilenetv3": (MobileNetV3Net, (1, 3, 12, 12), 2),
    "picodet": (PicoDetNet, (1, 3, 12, 12), 2),
}


def _biased(model: nn.Module, seed: int) -> nn.Module:
    """Trained-like BatchNorm statistics and biases that move every channel's constant."""
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model


def build_depth_model(name: str, exporter: str, seed: int = 0) -> onnx.ModelProto:
    """Export a look-alike, normalized as ``evonnx.load`` does: ``exporter`` is ``legacy``,
    ``dynamo`` or ``dynamic`` (legacy with a symbolic batch axis)."""
    factory, shape, _ = DEPTH_ZOO[name]
    torch.manual_seed(seed)
    model = _biased(factory(), seed).eval()
    if exporter != "dynamic":
        return normalize(export_torch(model, shape, exporter))[0]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(*shape),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return normalize(onnx.load_from_string(buf.getvalue()))[0]
