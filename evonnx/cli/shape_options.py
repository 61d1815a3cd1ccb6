"""Click options shared by every command that reads a model: input shapes, normalization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from evonnx.inputs import parse_input_shapes

F = TypeVar("F", bound=Callable[..., Any])


def _parse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict:
    return parse_input_shapes(value)


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
