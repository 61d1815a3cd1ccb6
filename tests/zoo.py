"""A zoo of tiny models for tests: torch modules (exported two ways) and hand-built ONNX graphs."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from helpers import make_model
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from evonnx.retrain.demo import LeNet5, LeNet5Caffe


class VGGish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 2 * 2, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class BasicBlock(nn.Module):
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


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


class ResNetTiny(nn.Module):
    """Stem, two basic blocks (one with downsample), a bottleneck block, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.b1 = BasicBlock(8, 8, 1)
        self.b2 = BasicBlock(8, 16, 2)
        self.b3 = Bottleneck(16, 8, 16, 1)
        self.b4 = Bottleneck(16, 8, 24, 2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b4(self.b3(self.b2(self.b1(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        hidden = c * expand
        self.body = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MobileNetV2Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish()
        )
        self.block = InvertedResidual(8, 3)
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.block(self.stem(x)))
        return x.mean(dim=(2, 3))


class InceptionTiny(nn.Module):
    """Inception/DenseNet-style block: branches concatenated on the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 2, 1))
        self.mix = nn.Conv2d(8 + 4 + 6 + 2, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([x, self.b1(x), self.b2(x), self.b3(x)], dim=1)  # dense-style: keeps x
        x = torch.relu(self.mix(x))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))


class SEBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 4)
        self.fc2 = nn.Linear(4, 16)
        self.conv_se = nn.Conv2d(16, 16, 3, padding=1)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        s = x.mean(dim=(2, 3))  # FC-style squeeze-excite
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        x = x * s.view(s.size(0), 16, 1, 1)
        y = torch.relu(self.conv_se(x))
        t = nn.functional.adaptive_avg_pool2d(y, 1)  # 1x1-conv squeeze-excite
        t = nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(t))))
        y = y * t
        return self.out(y).mean(dim=(2, 3))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# name -> (factory, input shape)
TORCH_ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet5": (LeNet5, (1, 1, 28, 28)),
    "lenet5caffe": (LeNet5Caffe, (1, 1, 28, 28)),  # no ReLU between conv and max-pool
    "vgg": (VGGish, (2, 3, 8, 8)),
    "resnet": (ResNetTiny, (1, 3, 16, 16)),
    "mobilenetv2": (MobileNetV2Tiny, (1, 3, 16, 16)),
    "inception": (InceptionTiny, (1, 3, 8, 8)),
    "se": (SEBlock, (1, 3, 8, 8)),
    "mlp": (MLP, (3, 20)),
}
EXPORTERS = ("dynamo", "legacy")


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics so they matter numerically."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def export_torch(model: nn.Module, shape: tuple[int, ...], exporter: str) -> onnx.ModelProto:
    """Export ``model`` with the dynamo (optimize=True) or legacy TorchScript exporter."""
    model.eval()
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(model, (x,), dynamo=True, optimize=True, verbose=False)
            assert prog is not None
            model = prog.model_proto
            # the lowest IR version for its opsets (9 for opset 20), as onnxruntime 1.18 needs
            model.ir_version = helper.find_min_ir_version_for(model.opset_import, True)
            return model
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
        return onnx.load_from_string(buf.getvalue())


def build_torch_zoo_model(name: str, exporter: str, seed: int = 0) -> onnx.ModelProto:
    factory, shape = TORCH_ZOO[name]
    torch.manual_seed(seed)
    model = factory()
    randomize_bn(model, seed)
    return export_torch(model, shape, exporter)


# --------------------------------------------------------------------------- hand-built graphs


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def helper_convnet(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Conv -> Flatten -> Gemm, built with onnx.helper (no torch)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(size=(6, 2, 3, 3))),
        _init("b1", rng.normal(size=6)),
        _init("s", rng.uniform(0.5, 1.5, 6)),
        _init("bb", rng.normal(size=6)),
        _init("m", rng.normal(size=6) * 0.1),
        _init("v", rng.uniform(0.5, 1.5, 6)),
        _init("w2", rng.normal(size=(5, 6, 3, 3))),
        _init("wf", rng.normal(size=(4, 5 * 4 * 4))),
        _init("bf", rng.normal(size=4)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv2"
        ),
        helper.make_node("LeakyRelu", ["c2"], ["r2"], alpha=0.1, name="lrelu"),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "helper_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return make_model(graph)


def helper_residual_concat(seed: int = 0) -> onnx.ModelProto:
    """Residual Add of two convs, per-channel Mul constant, Concat, Resize, Pad, MatMul head."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("wa", rng.normal(size=(4, 3, 3, 3))),
        _init("wb", rng.normal(size=(4, 3, 1, 1))),
        _init("scale", rng.uniform(0.5, 2.0, (1, 4, 1, 1))),
        _init("wc", rng.normal(size=(3, 4, 3, 3))),
        _init("bc", rng.normal(size=3)),
        _init("wd", rng.normal(size=(5, 7, 1, 1))),
        _init("wm", rng.normal(size=(5 * 2 * 2, 3))),
        numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "rscales"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 20], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="conva"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convb"),
        helper.make_node("Add", ["a", "b"], ["ab"], name="add"),
        helper.make_node("Mul", ["ab", "scale"], ["abs"], name="mulc"),
        helper.make_node("Relu", ["abs"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wc", "bc"], ["c"], pads=[1, 1, 1, 1], name="convc"),
        helper.make_node("Sigmoid", ["c"], ["cs"], name="sig"),
        helper.make_node("Concat", ["r", "cs"], ["cat"], axis=1, name="concat"),
        helper.make_node("Conv", ["cat", "wd"], ["d"], name="convd"),
        helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Resize", ["p", "", "rscales"], ["up"], mode="nearest", name="resize"),
        helper.make_node("Pad", ["up", "pads"], ["pad"], name="pad"),
        helper.make_node(
            "AveragePool", ["pad"], ["q"], kernel_shape=[3, 3], strides=[3, 3], name="avg"
        ),
        helper.make_node("Reshape", ["q", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "wm"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "helper_residual_concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return make_model(graph)


def parser_depthwise_convtranspose(seed: int = 0) -> onnx.ModelProto:
    """Built with onnx.parser: depthwise conv, InstanceNorm, ConvTranspose, Clip, GAP, MatMul."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    agraph (float[1, 3, 6, 6] x) => (float[1, 2] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1)
        n1 = InstanceNormalization (c1, s1, b1)
        r1 = Clip (n1, lo, hi)
        dw = Conv <group = 8, pads = [1, 1, 1, 1]> (r1, wdw, bdw)
        h = HardSigmoid (dw)
        t = ConvTranspose <strides = [2, 2]> (h, wt, bt)
        g = GlobalAveragePool (t)
        f = Flatten <axis = 1> (g)
        y = MatMul (f, wm)
    }
    """
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(seed)
    model.graph.initializer.extend(
        [
            _init("w1", rng.normal(size=(8, 3, 3, 3))),
            _init("s1", rng.uniform(0.5, 1.5, 8)),
            _init("b1", rng.normal(size=8)),
            _init("lo", np.array(0.0)),
            _init("hi", np.array(6.0)),
            _init("wdw", rng.normal(size=(8, 1, 3, 3))),
            _init("bdw", rng.normal(size=8)),
            _init("wt", rng.normal(size=(8, 5, 2, 2))),
            _init("bt", rng.normal(size=5)),
            _init("wm", rng.normal(size=(5, 2))),
        ]
    )
    return model


HELPER_ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "helper_convnet": helper_convnet,
    "helper_residual_concat": helper_residual_concat,
    "parser_depthwise_convtranspose": parser_depthwise_convtranspose,
}

ALL_CASES: list[str] = [f"{n}@{e}" for n in TORCH_ZOO for e in EXPORTERS] + list(HELPER_ZOO)


def build_case(case: str) -> onnx.ModelProto:
    """Build a zoo case named ``model@exporter`` or a hand-built graph name."""
    if "@" in case:
        name, exporter = case.split("@")
        return build_torch_zoo_model(name, exporter)
    return HELPER_ZOO[case]()


def cached_case(case: str, cache_dir: Path) -> onnx.ModelProto:
    """Build ``case`` once per cache directory (exports are slow)."""
    path = cache_dir / f"{case.replace('@', '__')}.onnx"
    if not path.exists():
        model = build_case(case)
        tmp = path.with_suffix(".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return onnx.load(str(path))


def input_feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the graph's (static) input shapes."""
    rng = np.random.default_rng(seed)
    init_names = {i.name for i in model.graph.initializer}
    feed = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rng.normal(size=dims).astype(np.float32)
    return feed
