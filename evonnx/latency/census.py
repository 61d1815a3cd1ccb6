"""Censuses of offspring widths: what each layer keeps when each channel group keeps some of
its channels (the input of the latency model and of the environments)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from evonnx.genetic.environments import LayerCensus

if TYPE_CHECKING:
    from evonnx.pruning.groups import Analysis, Layer


def group_census(analysis: Analysis, widths: Mapping[int, int]) -> list[LayerCensus]:
    """Census of an offspring keeping ``widths[g]`` channels of each listed group (others
    keep all); layers with several input groups scale by their mean kept fraction. The rest of
    a removed branch is gone too: a group whose producing layers all lost every input channel,
    or whose reading layers all lost every output channel."""
    sizes = {g.id: g.size for g in analysis.groups}
    dead = _dead_groups(analysis, {gid for gid, w in widths.items() if w == 0})

    def frac(gid: int | None) -> float:
        if gid in dead:
            return 0.0
        if gid is None or gid not in widths:
            return 1.0
        return widths[gid] / sizes[gid] if sizes[gid] else 1.0

    out = []
    for lay in analysis.layers:
        fin = [frac(g) for g in lay.in_groups] or [1.0]
        out.append(LayerCensus(lay, 0.0, frac(lay.out_group), float(np.mean(fin))))
    return out


def _dead_groups(analysis: Analysis, dead: set[int]) -> set[int]:
    producers: dict[int, list[Layer]] = {}
    readers: dict[int, list[Layer]] = {}
    for lay in analysis.layers:
        if lay.out_group is not None:
            producers.setdefault(lay.out_group, []).append(lay)
        for g in lay.in_groups:
            readers.setdefault(g, []).append(lay)
    dead = set(dead)
    grew = bool(dead)
    while grew:
        grew = False
        for gid in producers.keys() | readers.keys():
            if gid in dead:
                continue
            made = producers.get(gid, [])
            read = readers.get(gid, [])
            if (made and all(lay.in_groups and set(lay.in_groups) <= dead for lay in made)) or (
                read and all(lay.out_group in dead for lay in read)
            ):
                dead.add(gid)
                grew = True
    return dead
