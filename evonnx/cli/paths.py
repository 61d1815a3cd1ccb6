"""Checks made before a command starts work: output paths it will write, unused options."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from evonnx.errors import ConfigError
from evonnx.model.textio import remove_temporaries

F = TypeVar("F", bound=Callable[..., Any])


def output_option(what: str) -> Callable[[F], F]:
    """``-o/--output FILE`` (required): where the command writes ``what``."""
    return click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        required=True,
        help=f"Where to write the {what}.",
    )


def prepare_output(path: Path) -> None:
    """Ready ``path`` for writing: :func:`check_output_file`, then :func:`sweep_temporaries`."""
    check_output_file(path)
    sweep_temporaries(path)


def check_output_file(path: Path, option: str = "-o") -> None:
    """Refuse an output file path that cannot be written; say so when it is a link.

    A symbolic link at ``path`` is replaced by the written file (never followed): a note on
    stderr says so, naming the link's target, which is left unchanged.

    Raises:
        ConfigError: ``path`` is a folder, lies under a file, or its nearest existing folder
            is not writable.
    """
    if path.is_symlink() and not path.is_dir():
        click.echo(
            f"note: {option} {path} is a symbolic link (to {os.readlink(path)}); the link is "
            "replaced by the written file and its target is left unchanged",
            err=True,
        )
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name such as {path}/out.onnx")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path} lies under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied)")


def sweep_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries a killed earlier write of ``path`` left beside it (only
    evonnx's marked ones for exactly this file and its ``.data`` file, never one in use)."""
    names = {path.name, f"{path.name}.data"}
    folder = path.absolute().parent
    return remove_temporaries(folder, names.__contains__) if folder.is_dir() else []


def refuse_unused(names: list[str], why: str) -> None:
    """Refuse options of the current command that the user gave but that would do nothing.

    Args:
        names: Parameter names (``"cluster_keep"``) to check.
        why: Completes ``"--cluster-keep: <why>"``.

    Raises:
        click.UsageError: One of them was given on the command line or in the environment.
    """
    ctx = click.get_current_context()
    given = [
        p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0]
        for p in ctx.command.params
        if p.name in names
        and ctx.get_parameter_source(p.name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    ]
    if given:
        raise click.UsageError(f"{', '.join(given)}: {why}", ctx)
