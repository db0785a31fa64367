"""Coupled groups: channel classes that share the same members, as plain data.

A :class:`CoupledGroup` is what one prunable structure looks like — the 64 channels of a
ResNet stage's residual stream, the 12 heads of one attention layer, the 3072 inner
channels of one FFN. Every *unit* of a group (a channel, a head, a KV group) is one class
of the dependency graph, with the indices it owns in every member ``(parameter, axis)``.
Removing a unit removes those indices from every member at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .graph import IN, OUT, Dependencies


@dataclass
class CoupledGroup:
    """Units (classes) with identical members; ``positions[u][key]`` are unit ``u``'s
    indices along member ``key = (parameter, axis)``."""

    members: list[tuple[str, int]]
    roles: dict[tuple[str, int], str]
    units: list[int]  # class ids
    positions: list[dict[tuple[str, int], np.ndarray]]
    pinned: str | None = None  # why the group stays whole
    kinds: set[str] = field(default_factory=set)  # "stream", "head"

    @property
    def name(self) -> str:
        outs = sorted({n.rpartition(".")[0] for (n, _), r in self.roles.items() if r == OUT})
        ins = sorted({n.rpartition(".")[0] for (n, _), r in self.roles.items() if r == IN})
        what = "heads" if "head" in self.kinds else "channels"
        first = outs[0] if outs else ins[0] if ins else self.members[0][0]
        more = len(outs) - 1
        return f"{first}{f' (+{more})' if more > 0 else ''} {what}"

    @property
    def kind(self) -> str:
        return "heads" if "head" in self.kinds else "stream" if "stream" in self.kinds \
            else "channels"

    def readers(self) -> list[tuple[str, int]]:
        return [k for k in self.members if self.roles[k] == IN]

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        lines = [f"{self.name}: {len(self.units)} units ({self.kind})"
                 + (f", kept whole: {self.pinned}" if self.pinned else "")]
        for key in self.members:
            n = sum(len(p[key]) for p in self.positions)
            lines.append(f"  {self.roles[key]:>5}  {key[0]} axis {key[1]} ({n} indices)")
        return "\n".join(lines)


def coupled_groups(deps: Dependencies) -> list[CoupledGroup]:
    """Every group of the graph, in the order their members first appear."""
    by_class: dict[int, dict[tuple[str, int], list[int]]] = defaultdict(dict)
    for key, roots in deps.roots.items():
        for i, c in enumerate(roots.tolist()):
            by_class[c].setdefault(key, []).append(i)
    by_sig: dict[tuple, list[int]] = {}
    for c, members in by_class.items():
        by_sig.setdefault(tuple(members), []).append(c)
    groups = []
    for sig, classes in by_sig.items():
        kinds: set[str] = set()
        for c in classes:
            kinds |= deps.kinds.get(c, set())
        writers = {k[0] for k in sig if deps.members[k].role == OUT}
        if len(writers) > 1 and "head" not in kinds:
            kinds.add("stream")
        pinned = next((deps.pinned[c] for c in classes if c in deps.pinned), None)
        groups.append(CoupledGroup(
            members=list(sig), roles={k: deps.members[k].role for k in sig}, units=classes,
            positions=[{k: np.array(by_class[c][k], dtype=np.int64) for k in sig}
                       for c in classes], pinned=pinned, kinds=kinds))
    return groups


def kept_indices(group_list: list[CoupledGroup], removed: dict[int, set[int]],
                 sizes: dict[tuple[str, int], int]) -> dict[tuple[str, int], np.ndarray]:
    """``{(parameter, axis): kept indices}`` for every member that loses an index, given
    the removed unit positions ``removed[group index]``."""
    gone: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for gi, units in removed.items():
        for u in units:
            for key, pos in group_list[gi].positions[u].items():
                gone[key].append(pos)
    keep = {}
    for key, parts in gone.items():
        dead = np.zeros(sizes[key], dtype=bool)
        dead[np.concatenate(parts)] = True
        keep[key] = np.nonzero(~dead)[0]
    return keep
