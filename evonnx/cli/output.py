"""Output helpers shared by the CLI commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from evonnx.pruning.metrics import ModelMetrics

F = TypeVar("F", bound=Callable[..., Any])


def json_option(what: str) -> Callable[[F], F]:
    """``--json``: print ``what`` as machine-readable JSON instead of text."""
    return click.option("--json", "as_json", is_flag=True, help=f"Machine-readable {what}.")


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON (non-JSON values as strings)."""
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned text table with a dashed rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(lines)


def human(n: int) -> str:
    """``n`` with a k/M/G suffix (``1.23M``)."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def macs_text(m: ModelMetrics) -> str:
    """A model's MACs as text, or why they are unknown."""
    if m.macs_known:
        return human(m.macs)
    return "unknown (symbolic input shape: give --input-shape NAME=1x3xHxW)"
