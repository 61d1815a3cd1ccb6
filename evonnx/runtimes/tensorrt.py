"""``tensorrt``: TensorRT engines built and timed by NVIDIA's ``trtexec``.

Every model is written to a temporary file, built into an engine at the measured batch
(``--fp16`` with ``fp16=True``) and timed by ``trtexec``; the median *GPU compute time* it
reports (or its min, with ``statistic="min"``) is the latency. Models are measured one after
another (an engine per process), in ``runs``-long ``trtexec`` sessions.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from evonnx.errors import DeployError, RuntimeUnavailableError
from evonnx.model.batch import rebatch
from evonnx.runtimes.base import Runtime, RuntimeSettings

logger = logging.getLogger(__name__)

_TIME = r"GPU Compute Time:.*?{} = ([0-9.eE+-]+) ms"


class TrtexecRuntime(Runtime):
    """Latency of a TensorRT engine, as ``trtexec`` measures it.

    Raises:
        RuntimeUnavailableError: ``trtexec`` is not on ``PATH``.
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        exe = shutil.which("trtexec")
        if exe is None:
            raise RuntimeUnavailableError(
                "the tensorrt runtime needs NVIDIA's trtexec on PATH (TensorRT is not installed "
                "here); use --runtime ort-trt or torch-cuda on a GPU machine, ort-cpu otherwise"
            )
        self.exe = exe

    def device(self) -> str:
        """``trtexec``'s version banner and the GPU it reports."""
        out = subprocess.run(
            [self.exe, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        banner = next((ln for ln in out.stdout.splitlines() if "TensorRT" in ln), "TensorRT")
        return f"{banner.strip()}|{'fp16' if self.settings.fp16 else 'fp32'}"

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        """Median GPU compute time (ms) of each model's engine at ``batch``."""
        if not models:
            raise DeployError("no model to measure")
        out = []
        with tempfile.TemporaryDirectory(prefix="evonnx-trt-") as tmp:
            for i, m in enumerate(models):
                path = Path(tmp) / f"model{i}.onnx"
                onnx.save(rebatch(m, batch), path)
                out.append(self._time(path))
        return out

    def _time(self, path: Path) -> float:
        s = self.settings
        cmd = [
            self.exe,
            f"--onnx={path}",
            f"--warmUp={max(1, s.warmup) * 20}",
            f"--iterations={s.runs}",
            "--useCudaGraph",
            "--noDataTransfers",
        ]
        if s.fp16:
            cmd.append("--fp16")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        found = re.search(_TIME.format(s.statistic), proc.stdout)
        if proc.returncode != 0 or found is None:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise DeployError(f"trtexec failed on {path.name}: {' | '.join(tail)}")
        return float(found.group(1))
