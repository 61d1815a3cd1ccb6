"""Reliability round 3 (issue 19), low-severity items: external data, task batches, MACs,
unrunnable shapes, accurate messages, temporaries of killed writes, memory at --batch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from zoo import helper_convnet

from evonnx.cli.main import cli
from evonnx.errors import ModelLoadError
from evonnx.graph import load_model


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# ------------------------------------------------------------------- external data locations


def _external_model(folder: Path, location: str | None) -> Path:
    """``helper_convnet`` with its weights in ``m.onnx.data``, every location then set to
    ``location`` (``None``: the location entry removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(
        helper_convnet(), str(path), save_as_external_data=True,
        location="m.onnx.data", size_threshold=0,
    )  # fmt: skip
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        kept = [(e.key, e.value) for e in t.external_data if e.key != "location"]
        del t.external_data[:]
        if location is not None:
            t.external_data.add(key="location", value=location)
        for key, value in kept:
            t.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("command", ["inspect", "prune", "export"])
def test_an_external_location_outside_the_folder_is_one_line_without_an_oracle(
    tmp_path: Path, command: str
) -> None:
    outside = tmp_path / "outside.data"
    model = _external_model(tmp_path / "model", "../outside.data")
    extra = [] if command == "inspect" else ["-o", str(tmp_path / "out.onnx")]
    extra += ["--keep", "0.5"] if command == "prune" else []
    code_missing, out_missing = _invoke(command, str(model), *extra)
    outside.write_bytes((tmp_path / "model" / "m.onnx.data").read_bytes())
    code_present, out_present = _invoke(command, str(model), *extra)
    assert code_missing == code_present == 1
    line = _one_error_line(out_missing)
    assert line == _one_error_line(out_present)
    assert "outside the model's folder" in line and "../outside.data" in line
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(
    ("location", "says"),
    [
        (None, "no location"),
        ("", "no location"),
        ("/etc/passwd", "outside the model's folder"),
        ("sub/../../outside.data", "outside the model's folder"),
        ("missing.data", "is missing next to the model"),
        ("bad\x00name", "malformed location"),
    ],
)
def test_malformed_external_locations_are_model_load_errors(
    tmp_path: Path, location: str | None, says: str
) -> None:
    model = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match=says):
        load_model(model)


def test_a_link_to_outside_the_folder_reads_as_outside_whether_or_not_it_resolves(
    tmp_path: Path,
) -> None:
    messages = []
    for name, target in (("a", tmp_path / "real.data"), ("b", tmp_path / "none.data")):
        model = _external_model(tmp_path / name, "link.data")
        (tmp_path / "real.data").write_bytes((tmp_path / name / "m.onnx.data").read_bytes())
        (tmp_path / name / "link.data").symlink_to(target)
        with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
            load_model(model)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
