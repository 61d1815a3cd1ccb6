"""Stepping an offspring's channel counts down (trim) or up (grow) by predicted latency.

:func:`trim` removes clusters with the least strength per predicted millisecond saved
(strength as :meth:`Widths.changed` counts it: the squared share of a group's strength
removed): a group steps down to its next allowed width, dropping its weakest kept channels,
or a removable branch goes entirely. Allowed widths are the latency steps first; when no
group can step on them (a runtime's blocked layout makes most widths cost the same, or a
noisy table flattened a curve), finer widths are allowed: every width the table timed (and,
below that, any width), priced by the predictor, or by the share of MACs saved where the
predictor sees no gain (the measurement decides). :func:`grow` is the reverse: it gives
back the strongest removed channels (or a removed branch) with the most strength per
predicted millisecond added, for an offspring that overshot its target.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from evonnx.errors import PlanError
from evonnx.latency.census import group_census
from evonnx.pruning.plan import allowed_channels

if TYPE_CHECKING:
    from evonnx.latency.model import LatencyModel
    from evonnx.pruning.groups import Analysis, ChannelGroup


@dataclass
class Widths:
    """The channels each prunable group of an offspring keeps, and how to step them.

    Attributes:
        analysis: The parent's analysis.
        groups: Prunable groups by id.
        kept: Kept channel indices per group id (ascending).
        strength: Per group id, every channel's strength (what removing it loses).
        lm: The predictor (and its latency steps).
        round_to: Channel counts multiples of this.
        min_channels: Fewest channels a group keeps (a removable branch may still go).
        least: Per group id, its own floor (overrides ``min_channels``).
    """

    analysis: Analysis
    groups: Mapping[int, ChannelGroup]
    kept: dict[int, np.ndarray]
    strength: Mapping[int, np.ndarray]
    lm: LatencyModel
    round_to: int | None = None
    min_channels: int = 1
    least: Mapping[int, int] = field(default_factory=dict)

    def floor(self, gid: int) -> int:
        """Fewest channels group ``gid`` keeps (``least``, else ``min_channels``)."""
        return self.least.get(gid, self.min_channels)

    def counts(self) -> dict[int, int]:
        """Kept channel count per group id."""
        return {gid: int(k.size) for gid, k in self.kept.items()}

    def predict(self, counts: Mapping[int, int] | None = None) -> float:
        """Predicted latency (ms) of the offspring (or of other ``counts``)."""
        return self.lm.predict(group_census(self.analysis, counts or self.counts()))

    def set(self, gid: int, n: int) -> None:
        """Keep the ``n`` strongest channels of group ``gid`` among its kept ones (stepping
        down) or add its strongest removed ones (stepping up)."""
        k, s = self.kept[gid], self.strength[gid]
        if n <= k.size:
            self.kept[gid] = np.sort(k[np.argsort(-s[k], kind="stable")[:n]])
            return
        gone = np.setdiff1d(np.arange(s.size), k)
        add = gone[np.argsort(-s[gone], kind="stable")[: n - k.size]]
        self.kept[gid] = np.sort(np.concatenate([k, add]))

    def changed(self, gid: int, n: int) -> float:
        """What stepping group ``gid`` down to ``n`` loses (or up to ``n`` regains): the
        change of the square of the share of the group's strength removed.

        Shares, because strengths (L1 sums over filters of different fan-in) are not
        comparable across layers; squared, because cutting deep into one layer costs a
        pretrained network far more than the same cut spread over many (a 2-class text-line
        classifier trimmed by raw strength per millisecond lost its 8-channel stem layers and
        stayed at 67.5% top-1 after 600 retraining steps; by squared shares 97.5%, ancestor
        99%: ``docs/benchmarks.md``, *Real pretrained models*).
        """
        k, s = self.kept[gid], self.strength[gid]
        total = float(s.sum())
        if total <= 0:
            return 0.0
        removed = 1.0 - float(s[k].sum()) / total
        if n <= k.size:
            after = removed + float(np.sort(s[k])[: k.size - n].sum()) / total
            return after**2 - removed**2
        gone = np.setdiff1d(np.arange(s.size), k)
        after = removed - float(-np.sort(-s[gone])[: n - k.size].sum()) / total
        return removed**2 - max(after, 0.0) ** 2


def _down(w: Widths, gid: int, fine: bool) -> Iterator[int]:
    """Smaller counts group ``gid`` may step down to (0: a removable branch removed)."""
    g, n = w.groups[gid], int(w.kept[gid].size)
    if not fine:
        for k in range(n - 1, 0, -1):
            if allowed_channels(k, g.size, w.round_to, w.floor(gid), w.lm.widths(gid)):
                yield k
                break
    else:  # the nearest finer width, and an eighth, a quarter and a half fewer
        seen: set[int] = set()
        for want in (n - 1, n - n // 8, n - n // 4, n - n // 2):
            for k in range(min(want, n - 1), 0, -1):
                if allowed_channels(k, g.size, w.round_to, w.floor(gid), None):
                    if k not in seen:
                        seen.add(k)
                        yield k
                    break
    if g.removable and n > 0:
        yield 0


def _up(w: Widths, gid: int, fine: bool) -> Iterator[int]:
    """Larger counts group ``gid`` may step up to: the next allowed one on the steps, or
    (``fine``) the nearest finer width and an eighth, a quarter and a half more."""
    g, n = w.groups[gid], int(w.kept[gid].size)
    wants = (n + 1, n + n // 8, n + n // 4, n + n // 2) if fine else (n + 1,)
    steps = None if fine else w.lm.widths(gid)
    seen: set[int] = set()
    for want in wants:
        for k in range(max(want, n + 1, 1), g.size + 1):
            if allowed_channels(k, g.size, w.round_to, w.floor(gid), steps):
                if k not in seen:
                    seen.add(k)
                    yield k
                break


def _macs_share(w: Widths, counts: Mapping[int, int], now: float) -> float:
    """``now`` times the share of the MACs that ``counts`` saves (a prior where the predictor
    sees no gain)."""
    before = w.lm.features(group_census(w.analysis, w.counts()))[3]
    after = w.lm.features(group_census(w.analysis, counts))[3]
    return now * (before - after) / before if before > 0 else 0.0


def _best_down(w: Widths, fine: bool) -> tuple[int, int, float] | None:
    """The step down with the least strength lost per predicted ms saved: ``(group, count,
    predicted saving)``."""
    counts = w.counts()
    now = w.predict(counts)
    best: tuple[float, int, int, float] | None = None
    flat: tuple[float, int, int, float] | None = None
    for gid in w.groups:
        for k in _down(w, gid, fine):
            other = {**counts, gid: k}
            gain = now - w.predict(other)
            lost = w.changed(gid, k)
            if gain > 0:
                if best is None or lost / gain < best[0]:
                    best = (lost / gain, gid, k, gain)
            elif fine and best is None:
                share = _macs_share(w, other, now)
                if share > 0 and (flat is None or lost / share < flat[0]):
                    flat = (lost / share, gid, k, share)
    pick = best or flat
    return None if pick is None else pick[1:]


def trim(w: Widths, need: float) -> int:
    """Step groups down until ``need`` predicted ms are saved; returns the steps taken.

    Raises:
        PlanError: No group can step down (every one at ``min_channels``, no branch left).
    """
    saved, steps = 0.0, 0
    while saved < need:
        step = _best_down(w, fine=False) or _best_down(w, fine=True)
        if step is None:
            if steps:
                return steps
            raise PlanError("over the latency budget with nothing left to remove")
        gid, k, gain = step
        w.set(gid, k)
        saved += gain
        steps += 1
    return steps


def _best_up(w: Widths, ceiling: float, fine: bool) -> tuple[int, int, float] | None:
    """The step up with the most strength regained per predicted ms added, not past a
    predicted ``ceiling`` ms: ``(group, count, predicted cost)``. Finer widths are priced at
    least at the share of MACs they add (the predictor may see them as free)."""
    counts = w.counts()
    now = w.predict(counts)
    best: tuple[float, int, int, float] | None = None
    for gid in w.groups:
        for k in _up(w, gid, fine):
            other = {**counts, gid: k}
            cost = w.predict(other) - now
            if fine:
                cost = max(cost, -_macs_share(w, other, now))
            if now + cost > ceiling:
                continue
            score = w.changed(gid, k) / max(cost, 1e-9)
            if best is None or score > best[0]:
                best = (score, gid, k, cost)
    return None if best is None else best[1:]


def grow(w: Widths, add: float, ceiling: float) -> int:
    """Step groups up, most strength regained per predicted ms first, until ``add`` predicted
    ms are added, never past a predicted ``ceiling`` ms; returns the steps taken. Latency steps
    first; where the next step of every group would pass the ceiling, finer widths."""
    added, steps = 0.0, 0
    while added < add:
        step = _best_up(w, ceiling, fine=False) or _best_up(w, ceiling, fine=True)
        if step is None:
            break
        gid, k, cost = step
        w.set(gid, k)
        added += max(cost, 0.0)
        steps += 1
    return steps


def at_floor(w: Widths) -> bool:
    """Whether no group can step down any more (all at ``min_channels``, no branch left)."""
    return all(next(_down(w, gid, fine=True), None) is None for gid in w.groups)


def removed_everything(analysis: Analysis, lm: LatencyModel, min_channels: int) -> float:
    """Predicted latency (ms) of the smallest offspring: every removable branch gone and every
    other group at ``min_channels``."""
    counts = {
        g.id: 0 if g.removable else min(g.size, min_channels) for g in analysis.prunable_groups
    }
    return lm.predict(group_census(analysis, counts))
