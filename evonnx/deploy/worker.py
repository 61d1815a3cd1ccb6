"""Run one function in a fresh Python process that never imports the caller's script.

``multiprocessing``'s ``spawn`` and ``forkserver`` children re-import the parent's
``__main__`` module, which fails (or runs the script again) when a script calls evonnx without
an ``if __name__ == "__main__":`` guard. :func:`call_in_fresh_process` instead starts
``python -m evonnx.deploy.worker JOB RESULT``: the child imports only the function's own
module, runs ``fn(*args)`` and pickles the return value or the exception back.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from evonnx.errors import DeployError

logger = logging.getLogger(__name__)
T = TypeVar("T")


def call_in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new interpreter; its exceptions are re-raised here.

    ``fn`` must be a module-level function and ``args`` picklable.

    Raises:
        DeployError: The child died without a result (crash, kill, out of memory).
    """
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the evonnx package
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="evonnx-worker-") as tmp:
        job, result = Path(tmp) / "job.pickle", Path(tmp) / "result.pickle"
        job.write_bytes(pickle.dumps((fn, args)))
        proc = subprocess.run(
            [sys.executable, "-m", "evonnx.deploy.worker", str(job), str(result)],
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


def main(argv: list[str]) -> int:
    """Worker entry: run the pickled ``(fn, args)`` of ``argv[0]``, pickle the outcome."""
    job, result = Path(argv[0]), Path(argv[1])
    fn, args = pickle.loads(job.read_bytes())
    try:
        outcome: tuple[bool, Any] = (True, fn(*args))
    except Exception as exc:  # handed back to the caller, which re-raises it
        outcome = (False, exc)
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # an unpicklable exception or value
        data = pickle.dumps((False, DeployError(f"{type(exc).__name__}: {exc}")))
    result.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
