"""Frozen results of channel-dependency analysis.

A :class:`ChannelGroup` is a set of channel axes that must be pruned together: the output
filters of every conv/FC layer writing those channels (coupled through residual ``Add``,
squeeze-excite ``Mul``, depthwise convs, ...), the per-channel parameters they pass through
(BatchNormalization, biases, broadcast constants) and the input slices of every layer that
reads them. Channel ``i`` of a group maps, for each member, to the indices
``start + i * block + j`` for ``j in range(block)`` along ``axis`` of the member's tensor
(``block > 1`` after a Flatten/Reshape into an FC layer, ``start > 0`` after a Concat; one
member per piece, at several starts, where a Reshape cut the channel axis into several axes,
as attention heads).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Role(str, enum.Enum):
    """What removing a channel does to a member."""

    PRODUCER = "producer"  # output filters/neurons of a conv/FC weight (the clusters)
    BIAS = "bias"  # bias of a producer
    PARAM = "param"  # per-channel parameter (BN, InstanceNorm, PRelu, broadcast constant)
    CONSUMER = "consumer"  # input slice of a conv/FC weight that reads the channel
    SHAPE = "shape"  # an element of a constant shape vector (Reshape/Resize sizes)
    GROUP_ATTR = "group_attr"  # the ``group`` attribute of a depthwise conv


@dataclass(frozen=True)
class Member:
    """One tensor (or attribute) slice tied to a group's channels.

    Attributes:
        role: What the member is to the group.
        name: Initializer name (``GROUP_ATTR``: the node name).
        node: Name of the node that uses the member.
        axis: Axis of the initializer the channels live on (``SHAPE``: the element index).
        start: First index of channel 0 along ``axis``.
        block: Consecutive indices per channel along ``axis``.
    """

    role: Role
    name: str
    node: str
    axis: int
    start: int = 0
    block: int = 1

    def indices(self, channels: np.ndarray) -> np.ndarray:
        """Indices along ``axis`` that the given channel indices occupy."""
        ch = np.asarray(channels, dtype=np.int64)
        offsets = np.arange(self.block, dtype=np.int64)
        return (self.start + ch[:, None] * self.block + offsets[None, :]).reshape(-1)


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled channels that are kept or removed together.

    Attributes:
        id: Stable group number (order of discovery in topological order).
        size: Number of channels.
        members: Every slice tied to the channels.
        frozen: Why the group must stay intact, or ``None`` when it may be pruned.
        tensors: Names of the activation tensors that carry the group's channels.
        removable: The group may keep no channel at all: it is the inner channels of a
            branch (e.g. a residual block's) whose only exit is a layer feeding an ``Add`` or
            ``Sub`` with a full-shape operand; emptying it replaces that layer's output by its
            bias and drops the whole branch.
    """

    id: int
    size: int
    members: tuple[Member, ...]
    frozen: str | None = None
    tensors: tuple[str, ...] = field(default=())
    removable: bool = False

    @property
    def prunable(self) -> bool:
        """True when channels of this group may be removed."""
        return self.frozen is None

    def by_role(self, role: Role) -> tuple[Member, ...]:
        """Members with the given role."""
        return tuple(m for m in self.members if m.role is role)

    @property
    def producers(self) -> tuple[Member, ...]:
        """Output filters/neurons writing this group's channels (its clusters)."""
        return self.by_role(Role.PRODUCER)

    @property
    def filters(self) -> int:
        """Output filters/neurons the group's channels stand for: its size, or more where a
        Reshape cut a producer's channel axis into several axes and each channel is one
        position in every piece (a fused QKV projection's head dimension: ``3 * heads``
        filters per channel)."""
        per_weight: dict[str, int] = {}
        for m in {(m.name, m.axis, m.start, m.block): m for m in self.producers}.values():
            per_weight[m.name] = per_weight.get(m.name, 0) + self.size * m.block
        return max([self.size, *per_weight.values()])


@dataclass(frozen=True)
class Layer:
    """A conv/FC layer with a constant weight (a prunable layer).

    Attributes:
        node: Node name.
        op_type: ``Conv``, ``ConvTranspose``, ``Gemm`` or ``MatMul``.
        weight: Weight initializer name.
        out_axis: Weight axis of output filters/neurons.
        in_axis: Weight axis of input channels.
        out_group: Group of the output channels (``None`` if the weight is not analysable or
            a channel-axis ``Split`` cut its outputs into several groups).
        in_groups: Groups whose channels this layer reads.
        macs: Multiply-accumulates for one inference at the inferred input shape.
    """

    node: str
    op_type: str
    weight: str
    out_axis: int
    in_axis: int
    out_group: int | None
    in_groups: tuple[int, ...]
    macs: int


@dataclass(frozen=True)
class Geometry:
    """A conv's window along its spatial axes and its input's spatial sizes."""

    pads: tuple[int, ...]  # begins then ends, as ONNX ``pads`` (``auto_pad`` resolved)
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    spatial: tuple[int | None, ...]  # input sizes (None: symbolic)


@dataclass(frozen=True)
class ChannelConstant:
    """The constant each channel position of a layer's input carries when its producers are
    zeroed (None: not exactly evaluable), with what folding it needs to know of the layer.

    Attributes:
        node: The reading layer (Conv, ConvTranspose, Gemm or MatMul).
        values: One value per position along the input's channel (feature) axis.
        geometry: Conv and ConvTranspose: the window.
        alpha: Gemm's ``alpha`` (1 for the others).
        op: The reading layer's op type (``LSTM``, ``GRU``, ``RNN`` fold into their ``W``
            bias).
    """

    node: str
    values: tuple[float | None, ...]
    geometry: Geometry | None = None
    alpha: float = 1.0
    op: str = ""

    def array(self) -> np.ndarray:
        """The values as a float64 array (``nan`` where unknown)."""
        return np.array([np.nan if v is None else v for v in self.values], dtype=np.float64)


@dataclass(frozen=True)
class Analysis:
    """Channel groups and prunable layers of one graph."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    constants: tuple[ChannelConstant, ...] = ()

    def constant(self, node: str) -> ChannelConstant | None:
        """What the channels read by layer ``node`` carry once their producers are zeroed."""
        for c in self.constants:
            if c.node == node:
                return c
        return None

    def group(self, gid: int) -> ChannelGroup:
        """The group with id ``gid``."""
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    @property
    def frozen_layers(self) -> tuple[Layer, ...]:
        """Layers whose weight touches no prunable group (neither its outputs nor its inputs):
        evonnx cannot prune them, so an offspring keeps them byte-identical, through
        retraining too."""
        touched = {
            m.name
            for g in self.prunable_groups
            for m in g.members
            if m.role in (Role.PRODUCER, Role.CONSUMER)
        }
        return tuple(lay for lay in self.layers if lay.weight not in touched)

    def frozen_initializers(self) -> frozenset[str]:
        """Weights and biases of the :attr:`frozen_layers` (initializer names)."""
        nodes = {lay.node for lay in self.frozen_layers}
        biases = {
            m.name
            for g in self.groups
            if not g.prunable
            for m in g.by_role(Role.BIAS)
            if m.node in nodes
        }
        return frozenset({lay.weight for lay in self.frozen_layers} | biases)

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        """Groups whose channels may be removed and that have at least one producer."""
        return tuple(g for g in self.groups if g.prunable and g.producers)

    @property
    def channels(self) -> int:
        """Channels in all groups, counted as output filters (:attr:`ChannelGroup.filters`)."""
        return sum(g.filters for g in self.groups)

    @property
    def coverage(self) -> float:
        """Channels in prunable groups / all channels in groups (0 when there are none), each
        group counted by the output filters it stands for (:attr:`ChannelGroup.filters`)."""
        total = self.channels
        return sum(g.filters for g in self.prunable_groups) / total if total else 0.0
