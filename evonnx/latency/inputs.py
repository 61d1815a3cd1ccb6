"""Latency is measured at one input shape: check the model has one and runs at it."""

from __future__ import annotations

import onnx

from evonnx.errors import ConfigError, first_line
from evonnx.model.batch import rebatch
from evonnx.model.graph import graph_inputs
from evonnx.model.memory import check_batch_fits
from evonnx.model.session import make_session
from evonnx.model.shapes import cannot_run, input_dims, random_feed


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
    shapes = input_dims(batched)
    feed = random_feed(batched, shapes)
    try:
        make_session(batched).run(None, feed)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise cannot_run(shapes, first_line(exc)) from exc
