"""Run-folder safety: readable atomic writes, the run lock, kills at every write, data checks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import save_npz
from onnx import numpy_helper
from zoo import helper_convnet

import evonnx
from evonnx.data import Dataset, load_npz
from evonnx.errors import DataError, RunDirectoryError
from evonnx.evolution import loop as evolution
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.rundir import LOCK_NAME, run_folder
from evonnx.model import textio
from evonnx.model.files import save_model

CONFIG = EvolveConfig(
    generations=3,
    epochs=1,
    lr=0.05,
    optimizer="sgd",
    warmup=0.0,
    freeze_bn=False,
    batch_size=16,
    seed=3,
    threads=1,
)
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}


def _data(seed: int = 0, classes: int = 4, name: str = "tiny", n: int = 64) -> Dataset:
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(classes, 2, 8, 8)).astype(np.float32)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % classes
        return templates[y] + 0.5 * rng.normal(size=(k, 2, 8, 8)).astype(np.float32), y

    return Dataset(*split(n), *split(n // 2), name=name)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny ancestor and data set as files (for subprocesses)."""
    model, data = tmp_path / "model.onnx", tmp_path / "tiny.npz"
    save_model(helper_convnet(), model)
    save_npz(_data(), data)
    return model, data


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    code = "from evonnx.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)  # fmt: skip


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_plain_open_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
        textio.write_text_atomic(tmp_path / "atomic.txt", "x")
        save_model(helper_convnet(), tmp_path / "model.onnx")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain") == 0o666 & ~umask
    assert _mode(tmp_path / "atomic.txt") == 0o666 & ~umask
    assert _mode(tmp_path / "model.onnx") == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))


def test_overwrite_keeps_the_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    target.chmod(0o640)
    save_model(helper_convnet(), target)
    assert _mode(target) == 0o640
    assert onnx.load(str(target)).graph.name == "helper_convnet"


def test_failed_write_leaves_nothing_and_stale_temporaries_are_removed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), textio.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".gen_002.onnx.ab12cd34.evonnx.tmp").write_bytes(b"left by a kill")
    (tmp_path / ".report.md.0123abcd.evonnx.tmp").write_bytes(b"left by a kill")
    (tmp_path / ".gen_002.onnx.x_9lkq0z.tmp").write_bytes(b"not evonnx's")
    (tmp_path / "notes.tmp").write_text("the user's")
    removed = textio.remove_temporaries(tmp_path, lambda name: name.endswith(".onnx"))
    assert [p.name for p in removed] == [".gen_002.onnx.ab12cd34.evonnx.tmp"]
    assert len(textio.remove_temporaries(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gen_002.onnx.x_9lkq0z.tmp", "notes.tmp"]


def test_run_files_are_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        evonnx.evolve(helper_convnet(), _data(), tmp_path, replace(CONFIG, generations=2))
    finally:
        os.umask(old)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["efficiency.png", "gen_001.onnx", "gen_002.onnx", "lineage.csv",
                     "lineage.json", "report.md"]  # fmt: skip
    assert {_mode(tmp_path / n) for n in names} == {0o644}


# --------------------------------------------------------------------------- data checks


def test_labels_beyond_the_outputs_are_refused_before_writing(tmp_path: Path) -> None:
    good = _data()
    y_test = good.y_test.copy()
    y_test[3] = 13  # only the test split: accuracy would silently be capped
    bad = replace(good, y_test=y_test)
    with pytest.raises(DataError, match="y_test holds label 13 but the model only outputs 4"):
        evonnx.evolve(helper_convnet(), bad, tmp_path / "run", CONFIG)
    assert not (tmp_path / "run").exists()
    y_train = good.y_train.copy()
    y_train[0] = 4
    with pytest.raises(DataError, match="y_train holds label 4"):
        evonnx.evolve(helper_convnet(), replace(good, y_train=y_train), tmp_path / "run", CONFIG)
    assert not (tmp_path / "run").exists()


def test_resume_checks_the_data_by_content(tmp_path: Path) -> None:
    config = replace(CONFIG, generations=2)
    evonnx.evolve(helper_convnet(), _data(), tmp_path, config)
    lineage = json.loads((tmp_path / "lineage.json").read_text())
    assert (
        lineage["data_sha256"]
        == evolution.split_data(_data(), config.selection, config.seed).task.fingerprint()
    )
    assert (
        lineage["data_sha256"]
        != evolution.split_data(_data(seed=1), config.selection, config.seed).task.fingerprint()
    )
    more = replace(config, generations=3)
    with pytest.raises(RunDirectoryError, match=r"other data .*'tiny', sha256"):
        evonnx.evolve(helper_convnet(), _data(seed=1), tmp_path, more, resume=True)
    moved = _data(name="tiny-copy")  # same arrays, another name: the same data
    assert len(evonnx.evolve(helper_convnet(), moved, tmp_path, more, resume=True).records) == 3


def test_dataset_fingerprint_covers_every_array() -> None:
    d = _data()
    prints = {d.fingerprint()}
    for key in ("x_train", "y_train", "x_test", "y_test"):
        arr = getattr(d, key).copy()
        arr.flat[0] += 1
        prints.add(replace(d, **{key: arr}).fingerprint())
    assert len(prints) == 5 and d.fingerprint() == _data(name="other").fingerprint()


# --------------------------------------------------------------------------- the run lock

HOLD_LOCK = """
import sys
from evonnx.evolution.rundir import run_folder
with run_folder(sys.argv[1], False):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_process_is_refused_while_a_run_holds_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert (out / LOCK_NAME).read_text() == f"{holder.pid}\n"
        with pytest.raises(RunDirectoryError, match=f"in use by another evonnx run .*{holder.pid}"):
            evonnx.evolve(helper_convnet(), _data(), out, CONFIG)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0 and not (out / LOCK_NAME).exists()
    evonnx.evolve(helper_convnet(), _data(), out, replace(CONFIG, generations=2))


def test_two_cli_runs_started_together_one_is_refused(tmp_path: Path) -> None:
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    args = ["evolve", str(model), "--data", str(data), "--out", str(out), "--generations", "3",
            "--epochs", "1", "--batch-size", "16", "--threads", "1"]  # fmt: skip
    code = "from evonnx.cli.main import main; main()"
    runs = [subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=180), *p.communicate()) for p in runs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    refused = next(r for r in results if r[0] == 1)[2]
    assert refused.count("\n") == 1 and refused.startswith("error: ")
    assert "in use by another evonnx run" in refused or "already holds an evolution run" in refused
    lineage = json.loads((out / "lineage.json").read_text())
    assert [g["generation"] for g in lineage["generations"]] == [1, 2, 3]


def test_a_dead_owners_lock_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    tmp_path.joinpath(LOCK_NAME).write_text(dead.stdout)
    with run_folder(tmp_path, resume=True):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK_NAME).exists()


# --------------------------------------------------------------------------- kills and resume


def _key(lineage: evonnx.Lineage) -> list[tuple[object, ...]]:
    return [(r.generation, r.seed, r.accuracy, r.nonzero_synapses) for r in lineage.records]


KILLER = """
import os, sys
from pathlib import Path
import evonnx.evolution.loop as evolution
import evonnx.model.textio as textio
from evonnx.data import load_npz
from evonnx.evolution.loop import evolve
from evonnx.evolution.lineage import EvolveConfig

model, data, root, config = sys.argv[1], load_npz(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
config = EvolveConfig(**__import__("json").loads(config))
real = textio._commit
evolution._plot = lambda path, rows: textio.write_bytes_atomic(path, b"%d" % len(rows.records))
evolve(model, data, root / "warm", config, progress=False)  # imports everything lazy, 1 thread
for k in map(int, sys.argv[5:]):
    pid = os.fork()  # each child dies at write k
    if pid == 0:
        count = [0]

        def commit(tmp, target):
            count[0] += target.parent.name == f"kill_{k:02d}"  # writes into the run folder
            if count[0] == k:
                os._exit(17)  # killed: the temporary is written, the rename never happens
            real(tmp, target)

        textio._commit = commit
        evolve(model, data, root / f"kill_{k:02d}", config, progress=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(k, os.waitstatus_to_exitcode(status), flush=True)
"""


def test_resume_recovers_from_a_kill_at_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data_file = _files(tmp_path)
    data = load_npz(data_file)
    commits: list[str] = []
    real = textio._commit

    def counting(tmp: Path, target: Path) -> None:
        if target.parent == tmp_path / "full":  # not the scoring scratch files
            commits.append(target.name)
        real(tmp, target)

    def plot(path: Path, lineage: evonnx.Lineage) -> None:  # a cheap stand-in, still one write
        textio.write_bytes_atomic(path, b"%d" % len(lineage.records))

    monkeypatch.setattr(evolution, "_plot", plot)
    monkeypatch.setattr(textio, "_commit", counting)
    full = evonnx.evolve(model, data, tmp_path / "full", CONFIG, progress=False)
    monkeypatch.setattr(textio, "_commit", real)
    assert commits.count("lineage.json") == 3 and len(commits) == 15
    config = json.dumps({"generations": 3, "epochs": 1, "lr": 0.05, "optimizer": "sgd",
                         "warmup": 0.0, "freeze_bn": False, "batch_size": 16, "seed": 3,
                         "threads": 1})  # fmt: skip
    assert EvolveConfig(**json.loads(config)) == CONFIG  # the subprocess runs CONFIG's recipe
    steps = [str(k) for k in range(1, len(commits) + 1)]
    killer = subprocess.run([sys.executable, "-c", KILLER, str(model), str(data_file),
                             str(tmp_path), config, *steps],
                            capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert killer.returncode == 0, killer.stderr
    assert [line.split() for line in killer.stdout.splitlines()] == [[k, "17"] for k in steps]
    reference = {p.name: p.read_bytes() for p in (tmp_path / "full").glob("gen_*.onnx")}
    assert {p.name: p.read_bytes() for p in (tmp_path / "warm").glob("gen_*.onnx")} == reference
    for k in range(1, len(commits) + 1):
        out = tmp_path / f"kill_{k:02d}"
        assert list(out.glob(".*.tmp")), f"kill {k} left no temporary"  # the killed write
        assert (out / LOCK_NAME).exists()  # the dead run's lock file stays behind
        resumed = evonnx.evolve(model, data, out, CONFIG, resume=True, progress=False)
        assert _key(resumed) == _key(full), f"kill at write {k} ({commits[k - 1]})"
        assert {p.name: p.read_bytes() for p in out.glob("gen_*.onnx")} == reference
        names = sorted(p.name for p in out.iterdir())
        assert names == sorted(p.name for p in (tmp_path / "full").iterdir()), names
        on_disk = json.loads((out / "lineage.json").read_text())
        assert len(on_disk["generations"]) == 3 and on_disk["data_sha256"]
        assert "| 3 |" in (out / "report.md").read_text()
        assert len((out / "lineage.csv").read_text().splitlines()) == 4


def test_a_run_killed_before_generation_1_is_recorded_needs_resume(tmp_path: Path) -> None:
    save_model(helper_convnet(), tmp_path / "gen_001.onnx")  # written, lineage.json not yet
    with pytest.raises(RunDirectoryError, match=r"stopped before generation 1 .*--resume"):
        evonnx.evolve(helper_convnet(), _data(), tmp_path, CONFIG)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"not empty .*notes.txt"):
        evonnx.evolve(helper_convnet(), _data(), tmp_path, CONFIG, resume=True)


def test_resume_of_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match=r"nothing to resume: .* does not exist"):
        evonnx.evolve(helper_convnet(), _data(), tmp_path / "nope", CONFIG, resume=True)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "text", ["[]", '{"version": 1, "generations": []}', "{", '{"version": 1}', "null", "EDITED"]
)
def test_malformed_lineage_is_one_line(tmp_path: Path, text: str) -> None:
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    if text == "EDITED":  # a real lineage whose model file points outside the folder
        evonnx.evolve(model, load_npz(data), out, replace(CONFIG, generations=2))
        lineage = json.loads((out / "lineage.json").read_text())
        lineage["generations"][1]["file"] = "../model.onnx"
        text = json.dumps(lineage)
    out.mkdir(exist_ok=True)
    (out / "lineage.json").write_text(text)
    with pytest.raises(RunDirectoryError, match="not a readable evonnx lineage"):
        evonnx.evolve(model, load_npz(data), out, CONFIG, resume=True)


# --------------------------------------------------------------------------- lineage versions

V1_RUN = Path(__file__).parent / "data" / "lineage_v1"
"""A run folder (2 generations, ``lineage.json`` version 1: flat settings) written by the code
before the settings were split into sections; made with ``CONFIG`` at ``generations=2`` and
``measure=False`` on ``helper_convnet()`` and ``_data()``."""


def test_a_version_1_run_folder_resumes(tmp_path: Path) -> None:
    import shutil

    old = json.loads((V1_RUN / "lineage.json").read_text())
    assert old["version"] == 1 and old["config"]["epochs"] == 1  # flat settings
    run = tmp_path / "v1"
    shutil.copytree(V1_RUN, run)
    config = replace(CONFIG, measure=False)
    lineage = evonnx.evolve(helper_convnet(), _data(), run, config, resume=True, progress=False)
    assert len(lineage.records) == 3
    assert [r.accuracy for r in lineage.records[:2]] == [g["accuracy"] for g in old["generations"]]
    new = json.loads((run / "lineage.json").read_text())
    assert new["version"] == 2 and new["config"]["training"]["epochs"] == 1
    assert new["config"]["selection"]["max_drop"] == old["config"]["max_drop"]
    # the same run from scratch makes the same files: the settings' split changed no decision
    # (same tensors, shapes and zeros; values equal up to the float rounding of another CPU:
    # the folder was written on an Intel Xeon, training rounds differently on an AMD EPYC)
    fresh = evonnx.evolve(helper_convnet(), _data(), tmp_path / "fresh", config, progress=False)
    assert [r.accuracy for r in fresh.records] == [r.accuracy for r in lineage.records]
    for r in fresh.records:
        a, b = (weights_of(onnx.load(d / r.file)) for d in (tmp_path / "fresh", run))
        assert sorted(a) == sorted(b), r.file
        for name, value in a.items():
            assert value.shape == b[name].shape and ((value == 0) == (b[name] == 0)).all(), name
            np.testing.assert_allclose(value, b[name], rtol=0, atol=1e-5, err_msg=name)


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer of ``model`` by name."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_settings_round_trip_by_section_and_flat() -> None:
    from evonnx.evolution.settings import OWNER, SECTIONS

    config = replace(CONFIG, keep=0.5, runtime="ort-cpu", executor="process")
    assert EvolveConfig.from_dict(config.to_dict()) == config
    assert EvolveConfig.from_dict(config.options()) == config  # version 1: flat
    assert config.encoding.keep == config.keep == 0.5 and config.latency.runtime == "ort-cpu"
    assert set(OWNER) == {f for s in SECTIONS.values() for f in s.__dataclass_fields__}
    with pytest.raises(TypeError, match="unexpected options"):
        EvolveConfig(not_an_option=1)
