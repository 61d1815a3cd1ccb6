"""Ctrl-C and SIGTERM: one way to stop, whatever is running.

:func:`handle_signals` (the command line) turns SIGTERM into :class:`Terminated`, a
``KeyboardInterrupt``, so both stop a command the same way: every ``finally`` runs (atomic
writes leave no temporary, the run folder's lock is released) and the command exits with
130 (Ctrl-C) or 143 (SIGTERM) after one line. :class:`InterruptWatch` remembers a signal even
if some library swallowed its exception, so a long loop can stop at its next check.
:func:`ignore_interrupts` keeps worker processes quiet: only their driver handles Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from evonnx.errors import Terminated


def exit_code(exc: KeyboardInterrupt) -> int:
    """Exit status for an interrupt: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(exc, Terminated) else 130


def describe(exc: KeyboardInterrupt) -> str:
    """``terminated (SIGTERM)`` or ``interrupted (Ctrl-C)``."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise Terminated()


def handle_signals() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (call once, at start-up)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def ignore_interrupts() -> None:
    """In a worker process: ignore Ctrl-C (its driver stops it) and die quietly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class InterruptWatch:
    """Records Ctrl-C and SIGTERM while active, besides raising them as usual."""

    def __init__(self) -> None:
        self.caught: KeyboardInterrupt | None = None

    def check(self) -> None:
        """Raise the recorded interrupt again (one that some code swallowed)."""
        if self.caught is not None:
            raise self.caught

    def _on(self, exc_type: type[KeyboardInterrupt]) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            del signum, frame
            self.caught = exc_type()
            raise self.caught

        return handler


@contextlib.contextmanager
def watch_interrupts() -> Iterator[InterruptWatch]:
    """An :class:`InterruptWatch` over the block (main thread only; elsewhere a no-op one)."""
    watch = InterruptWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if saved[0] is signal.default_int_handler:  # not where Ctrl-C is ignored (a background job)
        signal.signal(signal.SIGINT, watch._on(KeyboardInterrupt))
    if saved[1] is _raise_terminated:  # the command line asked for SIGTERM as an exception
        signal.signal(signal.SIGTERM, watch._on(Terminated))
    try:
        yield watch
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
