"""Look-alikes of real detectors, classifiers and text recognizers (see ``tests/zoo_real.py``).

YOLOX-style (CSP + decoupled head), PicoDet-style (LCNet-like depthwise backbone + GFL head
with a computed-shape Reshape), PP-LCNet classifier (HardSwish, SE, flatten + FC), SVTR/CTC
recognizer (conv backbone, attention neck, CTC head) and a CNN+LSTM (CRNN) recognizer. Each
is exported like the real thing: torch legacy exporter, opset 17, IR 8, symbolic batch and
symbolic spatial (detectors) or width (recognizers) axes. Channel widths are scaled down so
tests stay fast; the graphs run at any input size.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

IR_VERSION = 8


def export(model: nn.Module, shape: tuple[int, ...], axes: dict[int, str]) -> onnx.ModelProto:
    """Legacy TorchScript export at opset 17, IR 8, input ``x`` with the given symbolic axes."""
    model.eval()
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
            dynamic_axes={"x": axes},
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = IR_VERSION
    return proto


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Weights and BatchNorm statistics drawn from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def cba(cin: int, cout: int, k: int = 1, s: int | tuple[int, int] = 1, groups: int = 1,
        act: type[nn.Module] = nn.SiLU) -> nn.Sequential:  # fmt: skip
    """Conv (no bias) + BatchNorm + activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act()
    )


# --------------------------------------------------------------------------- YOLOX


class YoloxBottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = cba(c, c, 1), cba(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class CSPLayer(nn.Module):
    """YOLOX CSP: two 1x1 branches, bottlenecks on one, Concat, 1x1."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        hid = cout // 2
        self.cv1, self.cv2, self.cv3 = cba(cin, hid), cba(cin, hid), cba(2 * hid, cout)
        self.m = nn.Sequential(*(YoloxBottleneck(hid) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class DecoupledHead(nn.Module):
    """One YOLOX head level: stem, cls and reg towers, cls/reg/obj predictions."""

    def __init__(self, cin: int, width: int, nc: int) -> None:
        super().__init__()
        self.stem = cba(cin, width)
        self.cls = nn.Sequential(cba(width, width, 3), cba(width, width, 3))
        self.reg = nn.Sequential(cba(width, width, 3), cba(width, width, 3))
        self.cls_pred = nn.Conv2d(width, nc, 1)
        self.reg_pred, self.obj_pred = nn.Conv2d(width, 4, 1), nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        r = self.reg(x)
        cls = self.cls_pred(self.cls(x)).sigmoid()
        return torch.cat((self.reg_pred(r), self.obj_pred(r).sigmoid(), cls), 1)


class YoloxTiny(nn.Module):
    """Focus stem, three CSP stages, a top-down PAN step and two decoupled head levels."""

    def __init__(self, nc: int = 3, w: int = 16) -> None:
        super().__init__()
        self.stem = cba(12, w, 3)
        self.dark2 = nn.Sequential(cba(w, 2 * w, 3, 2), CSPLayer(2 * w, 2 * w))
        self.dark3 = nn.Sequential(cba(2 * w, 4 * w, 3, 2), CSPLayer(4 * w, 4 * w, 2))
        self.dark4 = nn.Sequential(cba(4 * w, 8 * w, 3, 2), CSPLayer(8 * w, 8 * w))
        self.lateral = cba(8 * w, 4 * w)
        self.fuse = CSPLayer(8 * w, 4 * w)
        self.heads = nn.ModuleList(
            (DecoupledHead(4 * w, 2 * w, nc), DecoupledHead(4 * w, 2 * w, nc))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1
        )
        p3 = self.dark3(self.dark2(self.stem(x)))
        top = self.lateral(self.dark4(p3))
        p3 = self.fuse(torch.cat((nn.functional.interpolate(top, scale_factor=2.0), p3), 1))
        outs = [h(f).flatten(2) for h, f in zip(self.heads, (p3, top), strict=True)]
        return torch.cat(outs, 2).permute(0, 2, 1)


def yolox() -> onnx.ModelProto:
    """YOLOX-style detector, symbolic batch, height and width."""
    torch.manual_seed(10)
    return export(randomize(YoloxTiny(), 10), (1, 3, 64, 64), {0: "batch", 2: "height", 3: "width"})


# --------------------------------------------------------------------------- PicoDet / LCNet


class SE(nn.Module):
    """Squeeze-excite as PP-LCNet writes it: pool, 1x1 ReLU, 1x1 HardSigmoid, Mul."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class DepthSep(nn.Module):
    """PP-LCNet DepthwiseSeparable: dw kxk + BN + HardSwish, [SE], pw 1x1 + BN + HardSwish."""

    def __init__(self, cin: int, cout: int, s: int = 1, k: int = 3, se: bool = False) -> None:
        super().__init__()
        self.dw = cba(cin, cin, k, s, cin, nn.Hardswish)
        self.se: nn.Module = SE(cin) if se else nn.Identity()
        self.pw = cba(cin, cout, 1, act=nn.Hardswish)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


def lcnet_blocks(scale: int) -> nn.Sequential:
    """PP-LCNet's stage layout at 1/``scale`` of its x1.0 widths (stem to stage 5)."""
    c = [32 // scale, 64 // scale, 128 // scale, 256 // scale, 512 // scale]
    return nn.Sequential(
        cba(3, c[0], 3, 2, act=nn.Hardswish),
        DepthSep(c[0], c[1]),
        DepthSep(c[1], c[2], 2),
        DepthSep(c[2], c[2]),
        DepthSep(c[2], c[3], 2),
        DepthSep(c[3], c[3]),
        DepthSep(c[3], c[4], 2, 5),
        DepthSep(c[4], c[4], 1, 5),
        DepthSep(c[4], c[4], 1, 5, se=True),
    )


class PPLCNet(nn.Module):
    """PP-LCNet classifier: LCNet stages, GAP, 1x1 last conv + HardSwish, flatten, FC."""

    def __init__(self, scale: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.blocks = lcnet_blocks(scale)
        self.last = nn.Conv2d(512 // scale, 1280 // scale, 1)
        self.fc = nn.Linear(1280 // scale, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.blocks(x), 1)
        return self.fc(nn.functional.hardswish(self.last(x)).flatten(1))


def pplcnet() -> onnx.ModelProto:
    """PP-LCNet-style classifier, symbolic batch, height and width."""
    torch.manual_seed(11)
    return export(randomize(PPLCNet(), 11), (1, 3, 64, 64), {0: "batch", 2: "height", 3: "width"})


class GFLHead(nn.Module):
    """PicoDet GFL head level: dw+pw tower, one conv for class scores and box distributions."""

    def __init__(self, c: int, nc: int, reg_max: int = 7) -> None:
        super().__init__()
        self.tower = nn.Sequential(DepthSep(c, c, k=5), DepthSep(c, c, k=5))
        self.pred = nn.Conv2d(c, nc + 4 * (reg_max + 1), 1)
        self.nc, self.reg_max = nc, reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pred(self.tower(x))
        n, _, h, w = out.shape
        cls, reg = out.split((self.nc, 4 * (self.reg_max + 1)), 1)
        reg = reg.reshape(n, 4, self.reg_max + 1, h * w).softmax(2)
        box = (reg * self.project.view(1, 1, -1, 1)).sum(2)  # the GFL integral
        return torch.cat((cls.sigmoid().reshape(n, self.nc, h * w), box), 1)


class PicoDetTiny(nn.Module):
    """LCNet backbone, a lite PAN (1x1 to a common width, upsample + Add), two GFL levels."""

    def __init__(self, nc: int = 3, scale: int = 4) -> None:
        super().__init__()
        self.blocks = lcnet_blocks(scale)
        width = 96 // scale * 2
        self.lat3, self.lat4 = (
            cba(256 // scale, width, act=nn.Hardswish),
            cba(512 // scale, width, act=nn.Hardswish),
        )
        self.down = DepthSep(width, width, 2, 5)
        self.heads = nn.ModuleList((GFLHead(width, nc), GFLHead(width, nc)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.blocks[:6](x)
        c4 = self.blocks[6:](c3)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + nn.functional.interpolate(p4, scale_factor=2.0)
        p4 = p4 + self.down(p3)
        return torch.cat([h(p) for h, p in zip(self.heads, (p3, p4), strict=True)], 2)


def picodet(scale: int = 4) -> onnx.ModelProto:
    """PicoDet-style detector, symbolic batch, height and width (``scale`` 4: 80 M MACs at
    320x320, for tests; 2: 0.3 G, the size of PicoDet-XS)."""
    torch.manual_seed(12)
    return export(
        randomize(PicoDetTiny(scale=scale), 12),
        (1, 3, 64, 64),
        {0: "batch", 2: "height", 3: "width"},
    )


# --------------------------------------------------------------------------- recognizers


def recognizer_backbone(scale: int) -> nn.Sequential:
    """MobileNetV1-Enhance-like: height 32 -> 1 with (2, 1) strides, width / 4."""
    c = [32 // scale, 64 // scale, 128 // scale, 256 // scale, 512 // scale]
    return nn.Sequential(
        cba(3, c[0], 3, 2, act=nn.Hardswish),
        DepthSep(c[0], c[1]),
        DepthSep(c[1], c[2], 1),
        DepthSep(c[2], c[2], 1),
        DepthSep(c[2], c[3], (2, 1)),  # type: ignore[arg-type]
        DepthSep(c[3], c[3]),
        DepthSep(c[3], c[4], (2, 1)),  # type: ignore[arg-type]
        DepthSep(c[4], c[4], 1, 5),
        DepthSep(c[4], c[4], 1, 5, se=True),
        DepthSep(c[4], c[4], (2, 1), 5, se=True),  # type: ignore[arg-type]
        nn.MaxPool2d(2, 2),
    )


class SVTRBlock(nn.Module):
    """Pre-norm transformer block: fused QKV attention and a Swish MLP."""

    def __init__(self, dim: int, heads: int = 2, mlp: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp * dim), nn.Linear(mlp * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, length, d))
        return x + self.fc2(nn.functional.silu(self.fc1(self.norm2(x))))


class SVTRRecognizer(nn.Module):
    """PP-OCRv3-style: conv backbone, SVTR neck (conv, flatten, attention, back to conv), CTC."""

    def __init__(self, scale: int = 4, dims: int = 32, classes: int = 37) -> None:
        super().__init__()
        self.backbone = recognizer_backbone(scale)
        c = 512 // scale
        self.conv1 = cba(c, c // 8, 3, act=nn.SiLU)
        self.conv2 = cba(c // 8, dims, 1, act=nn.SiLU)
        self.blocks = nn.Sequential(SVTRBlock(dims), SVTRBlock(dims))
        self.norm = nn.LayerNorm(dims)
        self.conv3 = cba(dims, c, 1, act=nn.SiLU)
        self.conv4 = cba(2 * c, c // 8, 3, act=nn.SiLU)
        self.conv5 = cba(c // 8, dims, 1, act=nn.SiLU)
        self.fc = nn.Linear(dims, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        z = self.conv2(self.conv1(h))
        n, c, hh, ww = z.shape
        z = self.norm(self.blocks(z.flatten(2).permute(0, 2, 1)))
        z = z.reshape(n, hh, ww, c).permute(0, 3, 1, 2)
        z = self.conv5(self.conv4(torch.cat((h, self.conv3(z)), 1)))
        return self.fc(z.squeeze(2).permute(0, 2, 1)).softmax(2)


def svtr() -> onnx.ModelProto:
    """SVTR/CTC recognizer (PP-OCRv3 style), symbolic batch and width, input height 48."""
    torch.manual_seed(13)
    return export(randomize(SVTRRecognizer(), 13), (1, 3, 48, 64), {0: "batch", 3: "width"})


class CRNN(nn.Module):
    """CNN + bidirectional LSTM + linear CTC head."""

    def __init__(self, scale: int = 4, hidden: int = 24, classes: int = 37) -> None:
        super().__init__()
        self.backbone = recognizer_backbone(scale)
        self.lstm = nn.LSTM(512 // scale, hidden, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.backbone(x).squeeze(2).permute(2, 0, 1)  # [W, N, C]
        y, _ = self.lstm(seq)
        return self.fc(y)


def crnn() -> onnx.ModelProto:
    """CNN+LSTM recognizer (LSTM op), symbolic batch and width, input height 32."""
    torch.manual_seed(14)
    return export(randomize(CRNN(), 14), (1, 3, 32, 64), {0: "batch", 3: "width"})
