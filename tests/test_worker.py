"""The measurement worker process: one interpreter for many calls, crashes reported, stopped."""

from __future__ import annotations

import os
import pickle

import pytest
from zoo import helper_convnet

from evonnx.errors import DeployError
from evonnx.runtimes import RuntimeSettings, make_runtime
from evonnx.runtimes.worker import Worker, call_in_fresh_process


def test_worker_runs_calls_in_one_other_process() -> None:
    w = Worker()
    try:
        first = w.call(os.getpid)  # (the child imports what a call names: stdlib here)
        assert first != os.getpid()
        assert w.call(print, "a stray print must not corrupt the results") is None
        assert w.call(os.getpid) == first  # the same interpreter
        with pytest.raises(ValueError, match="bad input"):
            w.call(int, "bad input")
        assert w.call(os.getpid) == first
    finally:
        w.close()


def test_worker_that_dies_is_reported_and_replaced() -> None:
    w = Worker()
    try:
        before = w.call(os.getpid)
        with pytest.raises(DeployError, match=r"worker process died \(exit code 3\)"):
            w.call(os._exit, 3)
        after = w.call(os.getpid)
        assert after not in (before, os.getpid())
    finally:
        w.close()


def test_closed_worker_stops_its_process() -> None:
    w = Worker()
    pid = w.call(os.getpid)
    proc = w._proc
    w.close()
    assert proc is not None and proc.poll() is not None  # it exited
    assert w.call(os.getpid) != pid  # a new one on demand
    w.close()


def test_fresh_process_call_still_isolated() -> None:
    assert call_in_fresh_process(os.getpid) != os.getpid()


def test_ort_runtime_measures_in_its_worker_and_pickles_without_it() -> None:
    model = helper_convnet()
    rt = make_runtime(RuntimeSettings(threads=1, warmup=0, runs=2))
    try:
        assert len(rt.latencies([model, model], 1)) == 2
        worker = rt._worker  # type: ignore[attr-defined]
        proc = worker._proc
        assert proc is not None and proc.poll() is None  # kept for the next measurement
        rt.latencies([model], 1)
        assert worker._proc is proc
        copy = pickle.loads(pickle.dumps(rt))
        assert copy._worker._proc is None  # type: ignore[attr-defined]
        assert len(copy.latencies([model], 1)) == 1
        copy.close()  # type: ignore[attr-defined]
    finally:
        rt.close()  # type: ignore[attr-defined]
