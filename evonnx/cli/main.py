"""The ``evonnx`` command line: a thin click layer over :mod:`evonnx.api`.

Each command turns its options into arguments, calls one :mod:`evonnx.api` function and
prints the result; options that would do nothing are refused.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from evonnx.cli.bench import bench
from evonnx.cli.demo import demo
from evonnx.cli.evolve import evolve
from evonnx.cli.export import export
from evonnx.cli.inspect import inspect
from evonnx.cli.prune import prune
from evonnx.errors import EvonnxError
from evonnx.execute.signals import describe, exit_code, handle_signals

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class EvonnxGroup(click.Group):
    """Every error a user causes becomes one line on stderr and exit code 1.

    That covers :class:`EvonnxError`, operating-system errors (a full disk, a read-only
    folder) and bad options or arguments (click's usage errors, exit 2 by default). With
    ``--verbose``, evonnx and OS errors propagate with their traceback.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_error(exc)
        except (EvonnxError, OSError) as exc:
            if ctx.meta.get("evonnx.verbose"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM anywhere: one line, not "Aborted!"
            click.echo(f"\n{describe(exc)}", err=True)
            sys.exit(exit_code(exc))


def _one_line(exc: BaseException) -> str:
    """An error's message on one line; an OS error names its file."""
    if isinstance(exc, OSError) and not isinstance(exc, EvonnxError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return (
        " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        or type(exc).__name__
    )


def _usage_error(exc: click.UsageError) -> NoReturn:
    """One line naming the bad option and where help is, exit code 1 (bare ``evonnx``: help)."""
    if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    click.echo(f"error: {exc.format_message()}{where}", err=True)
    sys.exit(1)


@click.group(cls=EvonnxGroup)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="evonnx")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Evolve smaller, faster neural networks from ONNX graphs."""
    ctx.meta["evonnx.verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for command in (inspect, prune, evolve, demo, bench, export):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    handle_signals()
    cli(prog_name="evonnx")
