"""The model layer: loading, normalizing and saving ONNX graphs, tensor shapes, batch axes,
atomic writes and external data. Imports nothing above :mod:`evonnx.errors`."""
