"""Run functions in another Python process that never imports the caller's script.

``multiprocessing``'s ``spawn`` and ``forkserver`` children re-import the parent's
``__main__`` module, which fails (or runs the script again) when a script calls evonnx without
an ``if __name__ == "__main__":`` guard. :func:`call_in_fresh_process` instead starts
``python -m evonnx.runtimes.worker JOB RESULT``: the child imports only the function's own
module, runs ``fn(*args)`` and pickles the return value or the exception back.

Starting an interpreter and importing onnx costs about 2 s, more than timing a small model, so
a caller that measures again and again (a latency runtime fitting offspring) keeps one
:class:`Worker`: ``python -m evonnx.runtimes.worker --serve`` runs the calls one at a time,
pickled over its standard input and output.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from evonnx.errors import DeployError

logger = logging.getLogger(__name__)
T = TypeVar("T")


def call_in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new interpreter; its exceptions are re-raised here.

    ``fn`` must be a module-level function and ``args`` picklable.

    Raises:
        DeployError: The child died without a result (crash, kill, out of memory).
    """
    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="evonnx-worker-") as tmp:
        job, result = Path(tmp) / "job.pickle", Path(tmp) / "result.pickle"
        job.write_bytes(pickle.dumps((fn, args)))
        proc = subprocess.run(
            [sys.executable, "-m", "evonnx.runtimes.worker", str(job), str(result)],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if not result.is_file():
            tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
            raise DeployError(f"the worker process died (exit code {proc.returncode}): {tail[0]}")
        try:
            ok, value = pickle.loads(result.read_bytes())
        except Exception as exc:  # e.g. an exception type that cannot be rebuilt here
            raise DeployError(f"unreadable result from the worker process: {exc}") from exc
    if proc.stderr.strip():
        logger.debug("worker process stderr:\n%s", proc.stderr.rstrip())
    if ok:
        return value
    raise value


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the evonnx package
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


_HEAD = struct.Struct("<Q")


class Worker:
    """A long-lived child process running pickled calls one at a time (see the module doc).

    It starts on the first :meth:`call` and stops with :meth:`close`, when the object is
    collected, or when this interpreter exits. A call that kills it (a crash, out of memory)
    raises :class:`~evonnx.errors.DeployError`; the next call starts a new one.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Worker] | None = None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker; its exceptions are re-raised here.

        Raises:
            DeployError: The worker died without a result.
        """
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        payload = pickle.dumps((fn, args))
        try:
            proc.stdin.write(_HEAD.pack(len(payload)) + payload)
            proc.stdin.flush()
            (size,) = _HEAD.unpack(_read_exact(proc.stdout, _HEAD.size))
            data = _read_exact(proc.stdout, size)
        except (OSError, EOFError) as exc:
            raise self._died() from exc
        try:
            ok, value = pickle.loads(data)
        except Exception as exc:  # e.g. an exception type that cannot be rebuilt here
            raise DeployError(f"unreadable result from the worker process: {exc}") from exc
        if ok:
            return value
        raise value

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        if self._finalizer is not None:
            self._finalizer()
        self._proc = self._stderr = self._finalizer = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self.close()
        self._stderr = tempfile.TemporaryFile(prefix="evonnx-worker-")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "evonnx.runtimes.worker", "--serve"],
            env=_child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)
        return self._proc

    def _died(self) -> DeployError:
        proc, err = self._proc, self._stderr
        code = proc.wait() if proc is not None else None
        tail = ["no message"]
        if err is not None:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or tail
        self.close()
        return DeployError(f"the worker process died (exit code {code}): {tail[0]}")


def _stop(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    """End a worker: closing its input ends its loop; kill it if it does not stop."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        stderr.close()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) < n:
        raise EOFError("the worker's output ended")
    return data


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """``(True, fn(*args))`` or ``(False, exception)``, pickled for the caller (an
    unpicklable value or exception becomes a :class:`~evonnx.errors.DeployError`)."""
    try:
        outcome: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:  # handed back to the caller, which re-raises it
        outcome = (False, exc)
    try:
        return pickle.dumps(outcome)
    except Exception as exc:  # an unpicklable exception or value
        return pickle.dumps((False, DeployError(f"{type(exc).__name__}: {exc}")))


def serve() -> int:
    """Worker loop: run each pickled ``(fn, args)`` from standard input, write the outcome to
    standard output; stop at the end of the input. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt results
    while True:
        head = inp.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return 0
        fn, args = pickle.loads(_read_exact(inp, _HEAD.unpack(head)[0]))
        data = _outcome(fn, args)
        out.write(_HEAD.pack(len(data)) + data)
        out.flush()


def main(argv: list[str]) -> int:
    """Worker entry: run the pickled ``(fn, args)`` of ``argv[0]``, pickle the outcome
    (``--serve``: :func:`serve`)."""
    if argv == ["--serve"]:
        return serve()
    job, result = Path(argv[0]), Path(argv[1])
    fn, args = pickle.loads(job.read_bytes())
    result.write_bytes(_outcome(fn, args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
