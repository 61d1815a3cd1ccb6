"""Click options shared by every command that reads a model: input shapes, normalization."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from evonnx.errors import ConfigError
from evonnx.model.inputs import parse_input_shapes
from evonnx.model.memory import check_fits

F = TypeVar("F", bound=Callable[..., Any])


MAX_DIM = 1 << 31
"""Largest dimension an ``--input-shape`` may give (ONNX stores dimensions as int64)."""


def _parse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict:
    """The shapes, each refused when a dimension is absurd or one float32 tensor of that
    shape would not fit in the memory available."""
    shapes = parse_input_shapes(value)
    for name, shape in shapes.items():
        text = "x".join(map(str, shape))
        if max(shape) >= MAX_DIM:
            raise ConfigError(f"--input-shape {name}={text}: dimensions must be below {MAX_DIM}")
        check_fits(4 * math.prod(shape), f"--input-shape {name}={text} (one float32 tensor)")
    return shapes


def input_shape_option(fn: F) -> F:
    """``--input-shape NAME=1x3x640x640`` (repeatable), parsed to ``{name: shape}``."""
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        callback=_parse,
        metavar="NAME=D1xD2x...",
        help="Static shape of a symbolic model input, e.g. images=1x3x640x640 (repeatable).",
    )(fn)


def normalize_option(fn: F) -> F:
    """``--no-normalize``: skip the load-time normalization of exporter quirks."""
    return click.option(
        "--normalize/--no-normalize",
        default=True,
        show_default=True,
        help="Fold constants, Identity, Constant nodes and bias Adds at load.",
    )(fn)
