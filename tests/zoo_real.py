"""Real-world-style graphs: exporter quirks of YOLOv8, paddle2onnx, DB text detectors, ViT.

Each builder returns a small model at IR version 8 / opset 17 (accepted by onnxruntime 1.18).
The YOLOX-, PicoDet-, PP-LCNet-, SVTR- and CRNN-style look-alikes live in
``tests/zoo_lookalikes.py``. :data:`INPUT_SHAPES` are the small shapes tests use,
:data:`REAL_SHAPES` the real deployment sizes benchmarks use.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from zoo import BasicBlock, randomize_bn
from zoo_lookalikes import crnn, picodet, pplcnet, svtr, yolox

IR_VERSION = 8


def _export(
    model: nn.Module,
    shape: tuple[int, ...],
    fold: bool = True,
    training: bool = False,
    dynamic_hw: bool = False,
) -> onnx.ModelProto:
    """Legacy TorchScript export at opset 17, IR version 8."""
    model.train(training)
    x = torch.randn(*shape)
    buf = io.BytesIO()
    axes = {"x": {0: "batch", 2: "height", 3: "width"}} if dynamic_hw else None
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=17,
            do_constant_folding=fold,
            training=mode,
            input_names=["x"],
            dynamic_axes=axes,
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = IR_VERSION
    return proto


def _cbs(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    """Conv + BN + SiLU, the YOLOv8 ``Conv`` block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class C2fBottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _cbs(c, c, 3), _cbs(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = _cbs(cin, 2 * self.c)
        self.m = nn.ModuleList(C2fBottleneck(self.c) for _ in range(n))
        self.cv2 = _cbs((2 + n) * self.c, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _cbs(c, c // 2), _cbs(c * 2, c)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class YoloV8Tiny(nn.Module):
    """Stem, two C2f stages, SPPF, and a two-level detect head with Reshape/Concat outputs."""

    def __init__(self, nc: int = 3) -> None:
        super().__init__()
        self.no = nc + 4
        self.stem = _cbs(3, 16, 3, 2)
        self.s1 = nn.Sequential(_cbs(16, 32, 3, 2), C2f(32, 32))
        self.s2 = nn.Sequential(_cbs(32, 64, 3, 2), C2f(64, 64), SPPF(64))
        self.h1 = nn.Sequential(_cbs(32, 32, 3), nn.Conv2d(32, self.no, 1))
        self.h2 = nn.Sequential(_cbs(64, 32, 3), nn.Conv2d(32, self.no, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = self.s1(self.stem(x))
        p2 = self.s2(p1)
        n = x.shape[0]
        outs = [self.h1(p1).view(n, self.no, -1), self.h2(p2).view(n, self.no, -1)]
        return torch.cat(outs, 2)


def yolov8() -> onnx.ModelProto:
    """YOLOv8-style detector, torch legacy export, symbolic height and width."""
    torch.manual_seed(0)
    model = YoloV8Tiny()
    randomize_bn(model)
    return _export(model, (1, 3, 64, 64), dynamic_hw=True)


def _hswish(x: torch.Tensor) -> torch.Tensor:
    """HardSwish as paddle2onnx decomposes it: ``x * Clip(x + 3, 0, 6) / 6``."""
    return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * (s * 2.0) / 2.0


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, k: int, s: int, se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid)
        )
        self.se: nn.Module = SqueezeExcite(mid) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(_hswish(self.dw(_hswish(self.expand(x))))))
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        self.blocks = nn.Sequential(
            InvertedResidual(16, 32, 16, 3, 2, True),
            InvertedResidual(16, 48, 24, 3, 2, False),
            InvertedResidual(24, 64, 24, 3, 1, False),
            InvertedResidual(24, 96, 40, 5, 2, True),
            InvertedResidual(40, 120, 40, 5, 1, True),
        )
        self.last = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96))
        self.head = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _hswish(self.last(self.blocks(_hswish(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def mobilenetv3_torch() -> onnx.ModelProto:
    """MobileNetV3-small, torch legacy export (BN folded into conv biases)."""
    torch.manual_seed(1)
    model = MobileNetV3Small()
    randomize_bn(model, 1)
    return _export(model, (1, 3, 32, 32))


def paddle_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model`` the way paddle2onnx writes it.

    Conv biases become ``Add(conv, Reshape(Constant[C], Constant[1, C, 1, 1]))`` and every
    initializer becomes a ``Constant`` node.
    """
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    for t in graph.initializer:
        nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3:
            nodes.append(node)
            continue
        bias, out = node.input[2], node.output[0]
        del node.input[2]
        node.output[0] = f"{out}_nobias"
        shape = numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), f"{out}_bshape")
        nodes += [
            node,
            helper.make_node("Constant", [], [shape.name], value=shape),
            helper.make_node("Reshape", [bias, shape.name], [f"{out}_b"]),
            helper.make_node("Add", [node.output[0], f"{out}_b"], [out]),
        ]
    new_graph = helper.make_graph(nodes, graph.name, graph.input, graph.output)
    out = helper.make_model(new_graph, opset_imports=model.opset_import, ir_version=IR_VERSION)
    onnx.checker.check_model(out, full_check=True)
    return out


def mobilenetv3_paddle() -> onnx.ModelProto:
    """MobileNetV3-small in paddle2onnx style (Constant weights, bias Add, decomposed HardSwish)."""
    return paddle_style(mobilenetv3_torch())


class DBNet(nn.Module):
    """DB-style text detector: backbone, FPN with Resize + Add, Concat, ConvTranspose head."""

    def __init__(self) -> None:
        super().__init__()
        chans = [16, 24, 32, 48]
        self.stages = nn.ModuleList()
        cin = 3
        for c in chans:
            self.stages.append(
                nn.Sequential(nn.Conv2d(cin, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            )
            cin = c
        self.lateral = nn.ModuleList(nn.Conv2d(c, 32, 1, bias=False) for c in chans)
        self.smooth = nn.ModuleList(nn.Conv2d(32, 8, 3, padding=1, bias=False) for _ in chans)
        self.head = nn.Sequential(
            nn.Conv2d(32, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 2, 2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        lat = [f(c) for f, c in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], scale_factor=2.0)
        outs = [
            nn.functional.interpolate(s(p), scale_factor=2.0**i) if i else s(p)
            for i, (s, p) in enumerate(zip(self.smooth, lat, strict=True))
        ]
        return self.head(torch.cat(outs, 1))


def dbnet() -> onnx.ModelProto:
    """DB text detector, torch legacy export, symbolic height and width."""
    torch.manual_seed(2)
    model = DBNet()
    randomize_bn(model, 2)
    return _export(model, (1, 3, 64, 64), dynamic_hw=True)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1)
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def identity_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """Route every initializer use through an ``Identity`` node, one initializer per value.

    This is what torch's legacy exporter writes with ``do_constant_folding=False`` once it
    deduplicates initializers: equal BatchNorm statistics end up shared behind Identity nodes.
    """
    graph = model.graph
    by_value: dict[bytes, onnx.TensorProto] = {}
    alias: dict[str, str] = {}
    for t in graph.initializer:
        key = t.SerializeToString().replace(t.name.encode(), b"")
        alias[t.name] = by_value.setdefault(key, t).name
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                via = f"{name}__id{len(nodes)}"
                nodes.append(helper.make_node("Identity", [alias[name]], [via]))
                node.input[i] = via
        nodes.append(node)
    inits = [t for t in graph.initializer if alias[t.name] == t.name]
    new_graph = helper.make_graph(nodes, graph.name, graph.input, graph.output, inits)
    out = helper.make_model(new_graph, opset_imports=model.opset_import, ir_version=IR_VERSION)
    onnx.checker.check_model(out, full_check=True)
    return out


def resnet_nofold() -> onnx.ModelProto:
    """ResNet exported without constant folding.

    BatchNorm parameters keep their initial values, so the exporter deduplicates them into
    one initializer per value, routed to each use through ``Identity`` nodes.
    """
    torch.manual_seed(3)
    return identity_style(_export(TinyResNet(), (2, 3, 16, 16), fold=False))


class ViTBlock(nn.Module):
    """Patch embedding, one pre-norm transformer block (attention + GELU MLP), linear head."""

    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        n, s, d = t.shape
        h = self.ln1(t)
        q, k, v = (
            f(h).view(n, s, self.heads, d // self.heads).transpose(1, 2)
            for f in (self.q, self.k, self.v)
        )
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        t = t + self.proj((att @ v).transpose(1, 2).reshape(n, s, d))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.ln2(t))))
        return self.head(t.mean(1))


def vit_block() -> onnx.ModelProto:
    """ViT-tiny-style block, torch legacy export."""
    torch.manual_seed(4)
    return _export(ViTBlock(), (1, 3, 16, 16))


REAL_ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "yolov8": yolov8,
    "mobilenetv3_paddle": mobilenetv3_paddle,
    "mobilenetv3_torch": mobilenetv3_torch,
    "dbnet": dbnet,
    "resnet_nofold": resnet_nofold,
    "vit_block": vit_block,
    "yolox": yolox,
    "picodet": picodet,
    "pplcnet": pplcnet,
    "svtr": svtr,
    "crnn": crnn,
}
CNNS = (
    "yolov8",
    "mobilenetv3_paddle",
    "mobilenetv3_torch",
    "dbnet",
    "resnet_nofold",
    "yolox",
    "picodet",
    "pplcnet",
    "svtr",
)
"""CNN-style graphs; coverage goal >= 0.9 of channels prunable at their input shape."""
COVERAGE_FLOOR = {"svtr": 0.75}
"""Graphs below the 0.9 goal, and what they reach: the SVTR neck's fused QKV projection is
reshaped into (3, heads, dims) and feeds the attention, so its channels stay frozen."""
NEEDS_OP = {"crnn": "LSTM"}
"""Graphs whose op the ONNX->torch converter may lack (the converter tests skip them until)."""
INPUT_SHAPES = {
    "yolov8": (1, 3, 64, 64),
    "dbnet": (1, 3, 64, 64),
    "yolox": (1, 3, 64, 64),
    "picodet": (1, 3, 64, 64),
    "pplcnet": (1, 3, 64, 64),
    "svtr": (1, 3, 48, 64),
    "crnn": (1, 3, 32, 64),
}
"""Small input shapes of the graphs with symbolic axes, for tests."""
REAL_SHAPES = {
    "yolov8": (1, 3, 320, 320),
    "dbnet": (1, 3, 640, 640),
    "yolox": (1, 3, 416, 416),
    "picodet": (1, 3, 320, 320),
    "pplcnet": (1, 3, 224, 224),
    "svtr": (1, 3, 48, 320),
    "crnn": (1, 3, 32, 320),
    "mobilenetv3_paddle": (1, 3, 32, 32),
    "mobilenetv3_torch": (1, 3, 32, 32),
    "resnet_nofold": (2, 3, 16, 16),
    "vit_block": (1, 3, 16, 16),
}
"""Deployment-size input shapes (what real exports run at), for benchmarks."""
