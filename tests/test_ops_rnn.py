"""LSTM and GRU in the converter: onnxruntime equivalence, exporter styles, training, write-back."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_converters import assert_matches_ort, run_ort, run_torch
from torch import nn

from evonnx.converters import to_torch, write_back
from evonnx.errors import ConversionError

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6


def rnn_model(
    op: str,
    direction: str = "forward",
    layout: int = 0,
    bias: bool = True,
    initial: bool = False,
    lens: list[int] | None = None,
    peepholes: bool = False,
    outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"),
    seed: int = 0,
    **attrs: object,
) -> onnx.ModelProto:
    """A one-node LSTM/GRU graph with its weights as initializers (ONNX gate order)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = 4 if op == "LSTM" else 3

    def init(name: str, *shape: int) -> str:
        arr = (0.5 * rng.normal(size=shape)).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    inits: list[onnx.TensorProto] = []
    state = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    names = [
        "X",
        init("W", dirs, gates * HIDDEN, INPUT),
        init("R", dirs, gates * HIDDEN, HIDDEN),
        init("B", dirs, 2 * gates * HIDDEN) if bias else "",
        "",
        init("h0", *state) if initial else "",
    ]
    if lens is not None:
        inits.append(numpy_helper.from_array(np.array(lens, np.int32), "lens"))
        names[4] = "lens"
    if op == "LSTM":
        names += [
            init("c0", *state) if initial else "",
            init("P", dirs, 3 * HIDDEN) if peepholes else "",
        ]
    while names[-1] == "":
        names.pop()
    outs = [
        o if o in outputs else "" for o in (["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"])
    ]
    while outs[-1] == "":
        outs.pop()
    node = helper.make_node(op, names, outs, direction=direction, hidden_size=HIDDEN, **attrs)
    if layout:
        node.attribute.append(helper.make_attribute("layout", 1))
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    y_shape = [BATCH, SEQ, dirs, HIDDEN] if layout else [SEQ, dirs, BATCH, HIDDEN]
    shapes = {"Y": y_shape, "Y_h": state, "Y_c": state}
    graph = helper.make_graph(
        [node],
        "rnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs if o],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def feed(layout: int = 0, seed: int = 1) -> dict[str, np.ndarray]:
    shape = (BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT)
    return {"X": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("initial", [False, True])
def test_matches_onnxruntime(op: str, direction: str, bias: bool, initial: bool) -> None:
    model = rnn_model(op, direction, bias=bias, initial=initial)
    assert_matches_ort(model, feed())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_step_loop_paths_match_onnxruntime(op: str, direction: str) -> None:
    """Shorter sequence_lens, clip, peepholes and GRU linear_before_reset=0 run the loop."""
    lens = [SEQ, 2, 4]
    assert_matches_ort(rnn_model(op, direction, lens=lens, initial=True), feed())
    assert_matches_ort(rnn_model(op, direction, clip=0.7), feed())
    if op == "LSTM":
        assert_matches_ort(rnn_model(op, direction, peepholes=True, initial=True), feed())
    else:
        for lbr in (0, 1):
            model = rnn_model(op, direction, linear_before_reset=lbr, initial=True, lens=lens)
            assert_matches_ort(model, feed())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_full_sequence_lens_and_lbr_take_the_fused_path(op: str) -> None:
    """sequence_lens all equal to the length, and GRU linear_before_reset=1 (torch's)."""
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    assert_matches_ort(rnn_model(op, "bidirectional", lens=[SEQ] * BATCH, **extra), feed())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1_is_layout_0_transposed(op: str, direction: str) -> None:
    """``layout=1`` (batch first; onnxruntime's CPU kernels refuse it) equals layout 0 with
    inputs, initial states and outputs transposed, on both the fused and the loop path."""
    x = feed(0)["X"]
    for extra in ({}, {"clip": 0.5}):
        model1 = rnn_model(op, direction, layout=1, initial=True, **extra)
        first = run_torch(to_torch(model1), {"X": x.transpose(1, 0, 2).copy()})
        seq_first = run_torch(to_torch(as_layout_0(model1)), {"X": x})
        np.testing.assert_allclose(first[0], seq_first[0].transpose(2, 0, 1, 3), atol=1e-6)
        for a, b in zip(first[1:], seq_first[1:], strict=True):
            np.testing.assert_allclose(a, b.transpose(1, 0, 2), atol=1e-6)


def as_layout_0(model1: onnx.ModelProto) -> onnx.ModelProto:
    """The layout-1 ``model1`` in layout 0 (initial states transposed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model1)
    node = out.graph.node[0]
    for attr in [a for a in node.attribute if a.name == "layout"]:
        node.attribute.remove(attr)
    for t in out.graph.initializer:
        if t.name in ("h0", "c0"):
            flipped = numpy_helper.to_array(t).transpose(1, 0, 2).copy()
            t.CopyFrom(numpy_helper.from_array(flipped, t.name))
    out.graph.input[0].CopyFrom(
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [SEQ, BATCH, INPUT])
    )
    return out


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y_h", "Y_c")])
def test_optional_outputs(outputs: tuple[str, ...]) -> None:
    assert_matches_ort(rnn_model("LSTM", "bidirectional", outputs=outputs), feed())


@pytest.mark.parametrize(
    ("op", "attrs", "reason"),
    [
        ("LSTM", {"activations": ["Relu", "Tanh", "Tanh"]}, "activations"),
        ("GRU", {"activations": ["Sigmoid", "Relu"]}, "activations"),
        ("LSTM", {"activation_alpha": [1.0]}, "activation_alpha"),
        ("LSTM", {"input_forget": 1}, "input_forget"),
    ],
)
def test_unsupported_attributes_are_refused(op: str, attrs: dict[str, object], reason: str) -> None:
    with pytest.raises(ConversionError, match=reason):
        to_torch(rnn_model(op, **attrs))


def test_default_activations_spelled_out_are_accepted() -> None:
    acts = ["Sigmoid", "Tanh", "Tanh"] * 2
    model = rnn_model("LSTM", "bidirectional", activations=acts)
    assert_matches_ort(model, feed())


# --------------------------------------------------------------------- exported networks


class Recurrent(nn.Module):
    def __init__(self, kind: str, batch_first: bool, layers: int = 2) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(
            INPUT, HIDDEN, num_layers=layers, bidirectional=True, batch_first=batch_first
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def export(module: nn.Module, x: torch.Tensor, dynamo: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module.eval(), (x,), dynamo=True, verbose=False)
            assert program is not None
            return program.model_proto
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_legacy_export(kind: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    module = Recurrent(kind, batch_first)
    x = torch.randn(BATCH, SEQ, INPUT) if batch_first else torch.randn(SEQ, BATCH, INPUT)
    model = export(module, x, dynamo=False)
    assert kind.upper() in {n.op_type for n in model.graph.node}
    assert_matches_ort(model, {model.graph.input[0].name: x.numpy()})
    (out,) = run_torch(to_torch(model), {model.graph.input[0].name: x.numpy()})
    np.testing.assert_allclose(out, module(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(("kind", "batch_first"), [("lstm", True), ("gru", False)])
def test_torch_dynamo_export(kind: str, batch_first: bool) -> None:
    """The dynamo exporter (torch's default) emits LSTM/GRU nodes with a ``layout`` attribute."""
    torch.manual_seed(1)
    module = Recurrent(kind, batch_first=batch_first, layers=1)
    x = torch.randn(BATCH, SEQ, INPUT) if batch_first else torch.randn(SEQ, BATCH, INPUT)
    model = export(module, x, dynamo=True)
    assert kind.upper() in {n.op_type for n in model.graph.node}
    feed_ = {model.graph.input[0].name: x.numpy()}
    assert_matches_ort(model, feed_)
    (out,) = run_torch(to_torch(model), feed_)[:1]
    np.testing.assert_allclose(out, module(x).detach().numpy(), atol=1e-5)


class CRNN(nn.Module):
    """conv -> BN -> ReLU -> pool -> (N, W, C·H) -> bidirectional LSTM -> Linear -> LogSoftmax."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.rnn = nn.LSTM(8 * 4, 12, bidirectional=True)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)  # N, 8, 4, W/2
        n, c, h, w = f.shape
        seq = f.reshape(n, c * h, w).permute(2, 0, 1)  # W/2, N, 32
        y, _ = self.rnn(seq)
        return torch.log_softmax(self.fc(y), dim=-1)  # T, N, classes


def crnn_model() -> tuple[onnx.ModelProto, torch.Tensor]:
    torch.manual_seed(0)
    net = CRNN()
    with torch.no_grad():
        net.conv[1].running_mean.uniform_(-0.2, 0.2)
        net.conv[1].running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 1, 8, 16)
    return export(net, x, dynamo=False), x


def test_crnn_matches_onnxruntime() -> None:
    model, x = crnn_model()
    assert {"Conv", "LSTM", "LogSoftmax"} <= {n.op_type for n in model.graph.node}
    assert_matches_ort(model, {model.graph.input[0].name: x.numpy()})


def test_write_back_round_trips_rnn_weights_exactly() -> None:
    model, _ = crnn_model()
    module = to_torch(model)
    params = module.onnx_parameters()
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    assert {lstm.input[1], lstm.input[2], lstm.input[3]} <= set(params)  # W, R, B train
    out = write_back(model, module)
    for a, b in zip(model.graph.initializer, out.graph.initializer, strict=True):
        assert (a.name, a.data_type, list(a.dims)) == (b.name, b.data_type, list(b.dims))
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes()


def test_crnn_trains_and_onnxruntime_reproduces_it() -> None:
    model, x = crnn_model()
    module = to_torch(model)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    before = {k: v.detach().clone() for k, v in module.onnx_parameters().items()}
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    targets = torch.randint(0, 7, (8, 2))
    module.train()
    for _ in range(3):
        optimizer.zero_grad()
        out = module(x)
        loss = nn.functional.nll_loss(out.reshape(-1, 7), targets.reshape(-1))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    after = module.onnx_parameters()
    for name in lstm.input[1:4]:
        assert not torch.equal(before[name], after[name]), name
    trained = write_back(model, module)
    onnx.checker.check_model(trained, full_check=True)
    feed_ = {model.graph.input[0].name: x.numpy()}
    np.testing.assert_allclose(run_ort(trained, feed_)[0], run_torch(module, feed_)[0], atol=1e-5)
    assert not np.allclose(run_ort(trained, feed_)[0], run_ort(model, feed_)[0], atol=1e-3)


def test_initial_state_initializers_stay_buffers() -> None:
    module = to_torch(rnn_model("LSTM", "bidirectional", initial=True, peepholes=True))
    assert set(module.onnx_parameters()) == {"W", "R", "B", "P"}
    assert {"h0", "c0"} <= set(module.onnx_buffers())
