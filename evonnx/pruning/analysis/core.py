"""Core of the channel analysis: layouts, the mutable builder and the rule registry.

Every activation tensor carries a *layout*: its channel axis and the group segments along
it. Rules (one per op type, registered with :func:`rule` into :data:`RULES`) read their
inputs' layouts from the :class:`Builder`, record members and set their outputs' layouts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import constant_array, node_name
from evonnx.pruning.groups import Layer, Member, Role

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """Channels of group ``gid`` occupy ``start + i * block + j`` along a tensor's axis."""

    gid: int
    start: int
    block: int


@dataclass(frozen=True)
class Layout:
    """Channel axis of a tensor and the group segments along it."""

    axis: int
    segments: tuple[Segment, ...]

    def with_axis(self, axis: int) -> Layout:
        return Layout(axis, self.segments)

    def scaled(self, factor: int, axis: int | None = None) -> Layout:
        """Layout after each index expands into ``factor`` consecutive indices."""
        segs = tuple(Segment(s.gid, s.start * factor, s.block * factor) for s in self.segments)
        return Layout(self.axis if axis is None else axis, segs)


class Builder:
    """Mutable state of one analysis run (private; results are frozen)."""

    def __init__(self, graph: gs.Graph, hint: str = "") -> None:
        self.graph = graph
        self.hint = hint
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.members: list[list[Member]] = []
        self.tensors: list[list[str]] = []
        self.layouts: dict[str, Layout] = {}
        self.layers: list[Layer] = []
        self.halves: dict[int, tuple[int, int]] = {}

    # ---- groups
    def new_group(self, size: int, frozen: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(size)
        self.members.append([])
        self.tensors.append([])
        if frozen:
            self.frozen[gid] = frozen
        return gid

    def root(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, "coupled with a group of another size")
            self.freeze(rb, "coupled with a group of another size")
            return
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.members[lo].extend(self.members[hi])
        self.tensors[lo].extend(self.tensors[hi])
        if hi in self.frozen:
            self.frozen.setdefault(lo, self.frozen.pop(hi))

    def cut(self, gid: int, k: int) -> tuple[int, int]:
        """Cut a group into channels ``[0, k)`` and ``[k, size)`` (the inverse of a union).

        Every member and every layout segment of the group is re-expressed on the two new
        groups, which inherit its frozen reason; the old root is retired.
        """
        r = self.root(gid)
        n = self.size[r]
        lo, hi = self.new_group(k, self.frozen.get(r)), self.new_group(n - k, self.frozen.get(r))
        for m in self.members[r]:
            self.members[lo].append(m)
            whole = m.role in (Role.SHAPE, Role.GROUP_ATTR)
            start = m.start if whole else m.start + k * m.block
            self.members[hi].append(Member(m.role, m.name, m.node, m.axis, start, m.block))
        for half in (lo, hi):
            self.tensors[half].extend(self.tensors[r])
        self.members[r], self.tensors[r] = [], []
        self.halves[r] = (lo, hi)
        for name, lay in self.layouts.items():
            if any(self.root(s.gid) == r for s in lay.segments):
                self.layouts[name] = Layout(lay.axis, tuple(self._cut(lay.segments, r, k)))
        return lo, hi

    def _cut(self, segs: tuple[Segment, ...], r: int, k: int) -> list[Segment]:
        lo, hi = self.halves[r]
        out = []
        for s in segs:
            if self.root(s.gid) == r:
                out += [Segment(lo, s.start, s.block), Segment(hi, s.start + k * s.block, s.block)]
            else:
                out.append(s)
        return out

    def leaves(self, gid: int) -> list[int]:
        """Live groups that ``gid`` now is (several after :meth:`cut`)."""
        r = self.root(gid)
        if r not in self.halves:
            return [r]
        lo, hi = self.halves[r]
        return self.leaves(lo) + self.leaves(hi)

    def freeze(self, gid: int, reason: str) -> None:
        r = self.root(gid)
        if r not in self.frozen:
            logger.debug("group %d frozen: %s", r, reason)
            self.frozen[r] = reason

    def unknown(self, reason: str) -> str:
        """``reason`` (a shape is unknown) with what the user can give to resolve it."""
        return f"{reason}; {self.hint}" if self.hint else reason

    def freeze_layout(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for s in layout.segments:
                self.freeze(s.gid, reason)

    def add(self, seg: Segment, role: Role, name: str, node: str, axis: int) -> None:
        self.members[self.root(seg.gid)].append(
            Member(role, name, node, axis, seg.start, seg.block)
        )

    # ---- layouts
    def set_layout(self, tensor: gs.Tensor, layout: Layout) -> None:
        self.layouts[tensor.name] = layout
        for s in layout.segments:
            self.tensors[self.root(s.gid)].append(tensor.name)

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if tensor.name else None

    def group_size(self, gid: int) -> int:
        return self.size[self.root(gid)]


# --------------------------------------------------------------------------- tensor helpers


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """Value of a constant tensor, or None for activations and empty (omitted) inputs."""
    if isinstance(t, gs.Constant):
        return constant_array(t)
    return None


def static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    """Fully static shape of ``t`` or None."""
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    if t.shape is None or any(not isinstance(d, int) or d < 0 for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def rank(t: gs.Tensor) -> int | None:
    if t.shape is None:
        return None
    return len(t.shape)


def dim(t: gs.Tensor, axis: int) -> int | None:
    if t.shape is None or axis >= len(t.shape):
        return None
    d = t.shape[axis]
    return int(d) if isinstance(d, int) and d >= 0 else None


def prod(xs: tuple[int, ...] | list[int]) -> int:
    return int(math.prod(xs))


def batch1(t: gs.Tensor) -> tuple[int, ...] | None:
    """Shape with a symbolic leading batch dimension read as 1."""
    if t.shape is None or not t.shape:
        return None
    dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(t.shape)]
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return tuple(int(d) for d in dims)


def known_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    """Static shape of ``t``, a symbolic leading batch dimension read as 1, or None."""
    return static_shape(t) or batch1(t)


@dataclass(frozen=True)
class ReshapeMap:
    """Where a Reshape puts input channel axis ``C``.

    ``outer > 1``: the output axis ``axis`` also holds the ``outer`` input positions of the
    axes before the channel axis (e.g. attention heads merged back: ``[.., heads, C]`` to
    ``[.., heads * C]``); ``inner``: each channel expands into ``inner`` consecutive positions
    (the axes after it merged in, as a Flatten into an FC layer); ``cut``: the channel axis
    is cut into several output axes, the last one (``axis``) of ``cut`` positions holding the
    fastest-varying part (a fused QKV projection reshaped to ``[.., 3, heads, head_dim]``).
    """

    axis: int
    inner: int = 1
    outer: int = 1
    cut: int = 0


def map_reshape(ish: tuple[int, ...], osh: tuple[int, ...], axis: int) -> ReshapeMap | None:
    """How the output of a Reshape carries input channel ``axis``, or None."""
    lead = prod(list(ish[:axis]))
    inner = prod(list(ish[axis + 1 :]))
    c = ish[axis]
    for p in range(axis, -1, -1):  # output axis oax merges input axes p..axis (and on)
        outer = prod(list(ish[p:axis]))
        for oax in range(len(osh)):
            if prod(list(osh[:oax])) != prod(list(ish[:p])):
                continue
            tail = prod(list(osh[oax + 1 :]))
            if osh[oax] == outer * c and tail == inner:
                return ReshapeMap(oax, 1, outer)
            if osh[oax] == outer * c * inner and tail == 1:
                return ReshapeMap(oax, inner, outer)
    for first in range(len(osh)):  # the channel axis cut into output axes first..last
        if prod(list(osh[:first])) != lead:
            continue
        for last in range(first + 1, len(osh)):
            fits = prod(list(osh[first : last + 1])) == c and osh[last] < c
            if fits and prod(list(osh[last + 1 :])) == inner:
                return ReshapeMap(last, cut=osh[last])
    return None


def int_list(node: gs.Node, attr: str, input_index: int) -> list[int] | None:
    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    t = optional_input(node, input_index)
    if t is None:
        return []
    v = const_value(t)
    return None if v is None else [int(x) for x in v.reshape(-1)]


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``, or None when absent or omitted (empty name)."""
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def inputs_with_layout(b: Builder, node: gs.Node) -> list[tuple[int, Layout]]:
    out = []
    for i, t in enumerate(node.inputs):
        lay = b.layout(t)
        if lay is not None:
            out.append((i, lay))
    return out


def freeze_inputs(b: Builder, node: gs.Node, reason: str) -> None:
    for _, lay in inputs_with_layout(b, node):
        b.freeze_layout(lay, reason)


def ranked_layout(b: Builder, node: gs.Node) -> tuple[Layout, int] | None:
    """Layout and rank of ``node``'s first input.

    None when the input carries no channels, or when its rank is unknown (its groups are
    then frozen).
    """
    lay = b.layout(node.inputs[0])
    if lay is None:
        return None
    r = rank(node.inputs[0])
    if r is None:
        b.freeze_layout(lay, b.unknown(f"{node_name(node)}: input rank unknown"))
        return None
    return lay, r


def new_output_group(
    b: Builder, node: gs.Node, size: int, axis: int, frozen: str | None = None
) -> int:
    gid = b.new_group(size, frozen)
    b.set_layout(node.outputs[0], Layout(axis, (Segment(gid, 0, 1),)))
    return gid


Rule = Callable[[Builder, gs.Node], None]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register a channel rule for the given op types."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco
