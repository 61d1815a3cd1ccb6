"""Reliability round 3 (issue 19): links, non-finite numbers, user task code, run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import save_npz
from onnx import numpy_helper
from zoo import helper_convnet

import evonnx
from evonnx import textio
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import ConfigError, RunDirectoryError
from evonnx.graph import save_model
from evonnx.lineage import EvolveConfig
from evonnx.rundir import LOCK_NAME

CONFIG = EvolveConfig(generations=2, epochs=1, lr=0.05, batch_size=16, seed=3, threads=1)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}


def _data(seed: int = 0, n: int = 64) -> Dataset:
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % 4
        return templates[y] + 0.5 * rng.normal(size=(k, 2, 8, 8)).astype(np.float32), y

    return Dataset(*split(n), *split(n // 2), name="tiny")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    model, data = tmp_path / "model.onnx", tmp_path / "tiny.npz"
    save_model(helper_convnet(), model)
    save_npz(_data(), data)
    return model, data


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --------------------------------------------------------------------------- links (High 1)


def test_a_lock_file_that_is_a_link_is_refused_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        evonnx.evolve(helper_convnet(), _data(), out, CONFIG)
    assert victim.read_text() == "keep me"
    assert (out / LOCK_NAME).is_symlink()


def test_an_atomic_write_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    os.chmod(victim, 0o600)
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    textio.write_text_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert victim.read_text() == "keep me"


def test_prune_output_on_a_link_says_what_it_does(tmp_path: Path) -> None:
    model, _ = _files(tmp_path)
    victim = tmp_path / "precious.onnx"
    victim.write_bytes(b"keep me")
    link = tmp_path / "pruned.onnx"
    link.symlink_to(victim)
    code, output = _invoke("prune", str(model), "--method", "magnitude", "--keep", "0.5",
                           "-o", str(link))  # fmt: skip
    assert code == 0, output
    assert "symbolic link" in output and "target is left unchanged" in output
    assert victim.read_bytes() == b"keep me"
    onnx.checker.check_model(onnx.load(link), full_check=True)


# --------------------------------------------------------------------------- folders (5, 6)


def test_a_foreign_folder_is_refused_without_touching_its_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    user_files = {"notes.txt": "mine", ".notes.txt.ab12cd34.tmp": "an editor's backup",
                  ".gen_002.onnx.ab12cd34.tmp": "not evonnx's"}  # fmt: skip
    for name, text in user_files.items():
        (out / name).write_text(text)
    with pytest.raises(RunDirectoryError, match="not empty"):
        evonnx.evolve(helper_convnet(), _data(), out, CONFIG)
    assert {p.name: p.read_text() for p in out.iterdir()} == user_files


def test_only_evonnx_temporaries_of_run_files_are_swept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    ours = out / f".gen_002.onnx.ab12cd34{textio.TMP_SUFFIX}"
    ours.write_bytes(b"left by a kill")
    evonnx.evolve(helper_convnet(), _data(), out, replace(CONFIG, generations=1))
    assert not ours.exists() and (out / "lineage.json").is_file()
    assert not list(out.glob(".*.tmp"))
