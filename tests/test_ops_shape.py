"""Nearest Resize picks the same source pixels as onnxruntime, coordinate mode by mode.

Real detectors resize by non-integer factors (``sizes`` from another feature map, scales
such as 9/5); a single different pixel index shifts a whole row of the output.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from helpers import run
from onnx import numpy_helper

from evonnx.converters import to_torch
from evonnx.converters.ops import RESIZE_COORDINATE_MODES

ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
SIZES = list(itertools.product((3, 5, 7, 10, 13), (2, 4, 6, 9, 11, 14, 20, 26)))


def _exact_coords(coord: str, hin: int, hout: int) -> list[Fraction]:
    """Source coordinates in exact arithmetic (the ONNX formulas with scale = hout / hin)."""
    scale = Fraction(hout, hin)
    out = []
    for i in range(hout):
        if coord == "align_corners":
            out.append(Fraction(i * (hin - 1), hout - 1) if hout > 1 else Fraction(0))
        elif coord == "asymmetric":
            out.append(i / scale)
        elif coord == "tf_half_pixel_for_nn":
            out.append((i + Fraction(1, 2)) / scale)
        elif coord == "half_pixel_symmetric":
            adjustment = hout / (scale * hin)
            offset = Fraction(hin, 2) * (1 - adjustment)
            out.append(offset + (i + Fraction(1, 2)) / scale - Fraction(1, 2))
        else:
            out.append((i + Fraction(1, 2)) / scale - Fraction(1, 2))
    return out


def _on_a_tie(coord: str, rounding: str, hin: int, hout: int) -> bool:
    """True when an exact coordinate sits on a rounding boundary: float32 arithmetic may
    then land on either side, in onnxruntime as here."""
    at = Fraction(0) if rounding in ("floor", "ceil") else Fraction(1, 2)
    return any(
        c != 0 and c - (c.numerator // c.denominator) == at  # 0 is exact in any arithmetic
        for c in _exact_coords(coord, hin, hout)
    )


def _resize_model(coord: str, rounding: str, hin: int, hout: int, by: str) -> onnx.ModelProto:
    operand = "sc" if by == "scales" else ", sz"
    model = onnx.parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 1, {hin}, 1] x) => (float y) {{
            y = Resize <mode = "nearest", coordinate_transformation_mode = "{coord}",
                        nearest_mode = "{rounding}"> (x, , {operand})
        }}"""
    )
    if by == "scales":
        value = np.array([1, 1, hout / hin, 1], np.float32)
    else:
        value = np.array([1, 1, hout, 1], np.int64)
    model.graph.initializer.append(numpy_helper.from_array(value, operand.strip(", ")))
    return model


@pytest.mark.parametrize("coord", RESIZE_COORDINATE_MODES)
@pytest.mark.parametrize("by", ["scales", "sizes"])
def test_nearest_resize_picks_onnxruntime_pixels(coord: str, by: str) -> None:
    checked = 0
    for rounding, (hin, hout) in itertools.product(ROUNDING, SIZES):
        if _on_a_tie(coord, rounding, hin, hout):
            continue
        model = _resize_model(coord, rounding, hin, hout, by)
        x = np.arange(hin, dtype=np.float32).reshape(1, 1, hin, 1)
        expected = run(model, {"x": x})[0]
        with torch.no_grad():
            got = to_torch(model).eval()(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape, (rounding, hin, hout)
        np.testing.assert_array_equal(got, expected, err_msg=f"{rounding} {hin}->{hout}")
        checked += 1
    assert checked >= len(ROUNDING) * len(SIZES) // 3  # ties are the exception
