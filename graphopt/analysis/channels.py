"""Coupled-channel analysis: which channels of which tensors must be removed together.

The model, and why it is exact:
- A *space* is a set of axes of one tensor (a value or a weight) whose positions
  are channels: a conv's output axis 1, a linear's input axis -1, or a joint
  space such as (heads, head_dim) after a reshape into attention heads. Each
  position of a space is an *atom*.
- Per-op rules (graphopt/analysis/channel_rules/: the "channel_rule" column of
  the op table) say how atoms of the spaces around a node correspond:
  identically (elementwise ops), at an offset (concat, split, slice), through a
  factorisation (reshape, flatten), a permutation (permute), or many-to-one
  (grouped conv, GQA, head merges). Rules run to a fixed point, creating spaces
  where channels flow.
- Atoms that correspond are unioned. A *channel* is a connected component of
  atoms; a *group* is a connected set of spaces. Removing a channel removes all
  its atoms from every tensor at once, which is what keeps shapes consistent.
- Broadcasting is the one correspondence that is not a union (a (1,1,N,D)
  rotary table serves every head): such spaces are recorded as soft links, and
  a group that other groups broadcast into is not prunable on its own.
- An op with no rule is a barrier, never a guess: every group touching it is
  reported not prunable, naming the op and how to register a rule. An op whose
  rule is `BARRIER` is a barrier on purpose, and reported as such.
- Attention heads (`heads=True`, the default) are removed whole. With
  `heads=False` the heads axis of attention is a batch axis instead: the rules
  for sdpa and batched matmul couple head_dim on its own, so one channel is
  "position d of every head" and every head keeps the same head_dim (which the
  reshape into (heads, head_dim) needs). A rotary table broadcast over heads
  then follows head_dim hard, and loses the same positions.

The work is linear in the number of atoms (each axis size times the tensors that
carry it), with union-find done by scipy's connected components.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from graphopt.analysis.base import Analyses, Analysis
from graphopt.analysis.channel_space import Builder, ChannelAnalysisError, ChannelGroup, Space
from graphopt.ir.graph import Graph, Node

__all__ = ["Space", "ChannelGroup", "Builder", "ChannelAnalysisError", "analyse", "channel_groups",
           "analyse_with_stats", "ChannelAnalysis", "ChannelGroups"]


def _atoms_key(space: Space) -> tuple:
    """Equal for spaces that hold the same atoms in the same order."""
    return (space.offset if space.ids is None else id(space.ids), space.size)


def _components(num_atoms: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not edges:
        return np.arange(num_atoms)
    rows = np.concatenate([e[0] for e in edges])
    cols = np.concatenate([e[1] for e in edges])
    matrix = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(num_atoms, num_atoms))
    _, labels = connected_components(matrix, directed=False)
    return labels


def analyse(graph: Graph, *, ignore: Sequence[str] = (), max_atoms: int = 200_000_000,
            heads: bool = True) -> list[ChannelGroup]:
    """Channel groups of `graph` (see the module docstring). `ignore`: node or weight names to keep whole;
    `heads=False`: prune attention within heads (the same head_dim positions of every head)."""
    builder = Builder(graph, max_atoms=max_atoms, heads=heads)
    builder.run()
    labels = _components(builder.next_atom, builder.edges)
    spaces = list(builder.spaces.values())
    members = _connected_spaces(spaces, labels)

    graph_inputs = {id(v) for v in graph.inputs}
    graph_outputs = {id(v) for v in graph.outputs}
    ignored = set(ignore)
    groups: list[ChannelGroup] = []
    group_of_space: dict[int, ChannelGroup] = {}
    created = {id(sp): i for i, sp in enumerate(spaces)}
    for root in sorted(members, key=lambda r: min(members[r])):
        group_spaces = [spaces[i] for i in members[root]]
        group_spaces.sort(key=lambda sp: (0 if sp.role == "producer" else 1, created[id(sp)]))
        group = _new_group(len(groups), group_spaces, labels, builder)
        group_of_space.update((id(s), group) for s in group_spaces)
        _judge_group(group, builder, graph_inputs, graph_outputs, ignored)
        groups.append(group)
    _judge_links(builder, group_of_space, heads)
    return groups


def _connected_spaces(spaces: list[Space], labels: np.ndarray) -> dict[int, list[int]]:
    """Groups: spaces connected through shared channel labels, as root -> indices into `spaces`."""
    space_of_label = np.full(int(labels.max()) + 1 if labels.size else 0, -1, dtype=np.int64)
    joined = _UnionFind()

    distinct: dict[tuple, np.ndarray] = {}
    for i, s in enumerate(spaces):
        key = _atoms_key(s)
        labs = distinct.get(key)
        if labs is None:
            labs = distinct[key] = np.unique(labels[s.atoms])
        owners = space_of_label[labs]
        joined.join([i, *np.unique(owners[owners >= 0]).tolist()])
        space_of_label[labs] = i

    members: dict[int, list[int]] = {}
    for i in range(len(spaces)):
        members.setdefault(joined.find(i), []).append(i)
    return members


def _new_group(gid: int, group_spaces: list[Space], labels: np.ndarray, builder: Builder) -> ChannelGroup:
    """The group over `group_spaces`, its channels numbered in order of first appearance in the first
    (producer) space."""
    raw = [labels[s.atoms] for s in group_spaces]
    uniq, inverse = np.unique(np.concatenate(raw), return_inverse=True)
    first = group_spaces[0]
    order = np.unique(labels[first.atoms], return_index=True)
    rank = np.full(uniq.size, -1, dtype=np.int64)
    seen_first = np.searchsorted(uniq, order[0][np.argsort(order[1])])
    rank[seen_first] = np.arange(seen_first.size)
    rest = np.flatnonzero(rank < 0)
    rank[rest] = np.arange(seen_first.size, seen_first.size + rest.size)
    chan = rank[inverse]
    split_points = np.cumsum([r.size for r in raw])[:-1]
    group_labels = np.split(chan, split_points)
    return ChannelGroup(gid, group_spaces, group_labels, int(uniq.size),
                        unit_of=_units(group_spaces, group_labels, int(uniq.size)),
                        within_heads=any(id(s) in builder.head_dims for s in group_spaces))


def _judge_group(group: ChannelGroup, builder: Builder, graph_inputs: set[int], graph_outputs: set[int],
                 ignored: set[str]) -> None:
    """Block `group` (graph ends, barriers, ignored tensors, nothing to prune) and note what makes it inexact."""
    for s in group.spaces:
        if id(s.value) in graph_outputs:
            _block(group, f"reaches graph output %{s.value.name}")
        if id(s.value) in graph_inputs:
            _block(group, f"reaches graph input %{s.value.name}")
        if id(s) in builder.barriers:
            _block(group, builder.barriers[id(s)])
        if s.value.name in ignored or (s.value.producer is not None and s.value.producer.name in ignored):
            _block(group, f"%{s.value.name} is ignored by the user")
        if id(s) in builder.inexact:
            reason = builder.inexact[id(s)]
            if reason not in group.inexact:
                group.inexact.append(reason)
                group.exact = False
    if not group.producers():
        _block(group, "no parameter produces these channels")
    if group.num_units < 2:
        _block(group, "a single removable unit (removing it would remove everything)")


def _judge_links(builder: Builder, group_of_space: dict[int, ChannelGroup], heads: bool) -> None:
    """What groups do to each other: a broadcast into another group blocks it, a gate makes it inexact."""
    for dst, src in builder.soft:
        g_dst, g_src = group_of_space.get(id(dst)), group_of_space.get(id(src))
        if g_dst is not None and g_dst is not g_src:
            _block(g_dst, f"broadcasts into the channels of group {g_src.id if g_src else '?'} "
                          f"(e.g. %{src.value.name}); prune it together with that group's dims")
    masked = _masking_reaches(builder) if not heads else None
    for space, reason, *at in builder.gates:  # rules written before heads=False append (space, reason)
        group = group_of_space.get(id(space))
        if masked is not None and at and not masked(at[0]):
            continue
        if group is not None and reason not in group.inexact:
            group.exact = False
            group.inexact.append(reason)


def _masking_reaches(builder: Builder) -> Callable[[Node], bool]:
    """A test: can masking (zeroing producer weights) change the inputs of a node?

    A rotary table is computed from a buffer and positions only: a `cos` on it never
    sees a masked zero, so it does not make the group inexact. Only used with
    heads=False, where such tables join the head_dim groups (with heads=True they
    are a group of their own that is not prunable, and its report stays as it was).
    """
    touched = {id(s.value) for s in builder.spaces.values() if s.role == "producer" and s.value.is_weight}
    for node in builder.graph.nodes:  # topological order: one forward sweep
        if any(v is not None and id(v) in touched for v in node.inputs):
            touched.update(id(o) for o in node.outputs)
    return lambda node: any(v is not None and id(v) in touched for v in node.inputs)


def _block(group: ChannelGroup, reason: str) -> None:
    group.prunable = False
    if reason not in group.reasons:
        group.reasons.append(reason)


def _units(spaces: list[Space], labels: list[np.ndarray], n: int) -> np.ndarray:
    """Smallest removable channel sets, so every multi-axis tensor stays a product of its axes.

    In a joint space such as (3, heads, head_dim), removing channels must leave a
    box: whatever is removed must be whole slabs along one axis. Joining the
    channels that share a slab guarantees that; of the axes, the one that leaves
    the most classes (the heads) is used.
    """
    joined = _UnionFind()

    seen: set[tuple] = set()
    for s, lab in zip(spaces, labels):
        if len(s.axes) < 2 or _atoms_key(s) + s.sizes in seen:
            continue
        seen.add(_atoms_key(s) + s.sizes)  # spaces sharing atoms have the same labels
        grid = lab.reshape(s.sizes)
        best: list[np.ndarray] | None = None
        best_classes = 0
        for i, size in enumerate(s.sizes):
            if size < 2:
                continue
            slabs = _slab_labels(grid, i)
            classes = _count_classes(slabs)
            if classes > best_classes:
                best, best_classes = slabs, classes
        for chans in best if best is not None else [np.unique(lab)]:
            joined.join(chans.tolist())
    roots = np.fromiter((joined.find(i) for i in range(n)), dtype=np.int64, count=n)
    _, unit_of = np.unique(roots, return_inverse=True)
    return unit_of.astype(np.int64)


def _slab_labels(grid: np.ndarray, axis: int) -> list[np.ndarray]:
    """The distinct labels in each slab of `grid` along `axis`."""
    moved = np.moveaxis(grid, axis, 0).reshape(grid.shape[axis], -1)
    n = int(grid.max()) + 1
    pairs = np.unique(np.arange(moved.shape[0])[:, None] * n + moved)
    slab, label = np.divmod(pairs, n)
    bounds = np.flatnonzero(np.diff(slab)) + 1
    return np.split(label, bounds)


def _count_classes(slabs: list[np.ndarray]) -> int:
    """How many channel classes remain once the channels sharing a slab are joined."""
    joined = _UnionFind()
    for chans in slabs:
        joined.join(chans.tolist())
    return joined.num_classes()


class _UnionFind:
    """Disjoint sets over ints, created on first mention (small, in-Python: the big atom
    union-find goes through scipy in `_components`)."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        parent = self._parent
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(self, items: list[int]) -> None:
        """Put all `items` in one set."""
        if not items:
            return
        root = self.find(int(items[0]))
        for item in items[1:]:
            other = self.find(int(item))
            if other != root:
                self._parent[other] = root

    def num_classes(self) -> int:
        return len({self.find(i) for i in list(self._parent)})


@dataclass
class ChannelAnalysis:
    """The result of `channel_groups`: groups plus timing, printable as a table."""

    groups: list[ChannelGroup]
    seconds: float
    num_atoms: int

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def table(self) -> str:
        lines = [f"{len(self.groups)} channel groups ({len(self.prunable())} prunable), "
                 f"{self.num_atoms:,} channel positions, {self.seconds * 1e3:.1f} ms"]
        lines += ["  " + g.summary() for g in self.groups]
        return "\n".join(lines)


def channel_groups(graph: Graph, *, ignore: Sequence[str] = (), max_atoms: int = 200_000_000,
                   heads: bool = True) -> list[ChannelGroup]:
    """Coupled channel groups of `graph`: the sets of channels structured pruning removes together.

    `heads=False` prunes attention within heads instead of whole heads (see the module docstring).
    """
    return analyse(graph, ignore=ignore, max_atoms=max_atoms, heads=heads)


def analyse_with_stats(graph: Graph, **kwargs) -> ChannelAnalysis:
    start = time.perf_counter()
    builder_groups = analyse(graph, **kwargs)
    seconds = time.perf_counter() - start
    atoms = sum(s.size for g in builder_groups for s in g.spaces)
    return ChannelAnalysis(builder_groups, seconds, atoms)


class ChannelGroups(Analysis):
    """Coupled channel groups, cached for passes until a pass that does not preserve them runs.

    `analyses.get(ChannelGroups, graph)` gives whole attention heads;
    `ChannelGroups(heads=False)` the within-heads grouping (see the module docstring).
    """

    heads: bool = True

    def compute(self, graph: Graph, analyses: Analyses) -> list[ChannelGroup]:
        return channel_groups(graph, heads=self.heads)
