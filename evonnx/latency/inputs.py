"""Latency is measured at one input shape: check the model has one and runs at it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.errors import ConfigError
from evonnx.model.batch import rebatch
from evonnx.model.graph import graph_inputs
from evonnx.model.memory import check_batch_fits


def check_inputs(model: onnx.ModelProto, batch: int) -> None:
    """Refuse, in one line naming the input, a model without a static shape at ``batch``
    beyond the batch axis, or one onnxruntime cannot run at that shape.

    Raises:
        ConfigError: A symbolic dimension besides the batch, or the model fails to run.
    """
    inputs = graph_inputs(model)
    for vi in inputs:
        dims = [
            d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
        ]
        if any(d is None for d in dims[1:]):
            shown = "x".join(str(d) if d else "?" for d in [batch, *dims[1:]])
            raise ConfigError(
                f"input {vi.name} has symbolic dimensions ({shown}); latency is measured at "
                f"one shape: give it with --input-shape {vi.name}=..."
            )
    check_batch_fits(model, batch)
    batched = rebatch(model, batch)
    rng = np.random.default_rng(0)
    feed = {}
    for vi in graph_inputs(batched):
        tt = vi.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feed[vi.name] = (
            rng.standard_normal(shape).astype(dtype)
            if np.issubdtype(dtype, np.floating)
            else np.zeros(shape, dtype)
        )
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # errors come back as exceptions
        sess = ort.InferenceSession(
            batched.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        sess.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feed.items())
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"onnxruntime cannot run the model with input {shapes} (give another shape with "
            f"--input-shape): {why}"
        ) from exc
