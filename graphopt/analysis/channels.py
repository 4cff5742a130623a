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
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from graphopt.analysis.base import Analyses, Analysis
from graphopt.analysis.rule_columns import BARRIER, is_barrier, rule_for
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Node, Value


@dataclass(eq=False)
class Space:
    """Channel positions of `value` along `axes` (row-major over the axes in ascending order)."""

    value: Value
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    offset: int  # first atom id (or, with `ids`, a key shared by spaces with the same atoms)
    role: str = ""  # for weights: "producer", "consumer" or "stat"
    ids: np.ndarray | None = None  # explicit atom ids, row-major: a permutation of another space's atoms

    @property
    def size(self) -> int:
        return int(np.prod(self.sizes))

    @property
    def atoms(self) -> np.ndarray:
        if self.ids is not None:
            return self.ids
        return np.arange(self.offset, self.offset + self.size)

    def grid(self) -> np.ndarray:
        """Atom ids shaped like the axes, for index arithmetic across spaces."""
        return self.atoms.reshape(self.sizes)

    def describe(self) -> str:
        axes = ",".join(str(a) for a in self.axes)
        kind = self.value.kind if self.value.is_weight else "value"
        role = f" {self.role}" if self.role else ""
        return f"%{self.value.name}[{axes}] ({kind}{role}, {self.size})"


@dataclass
class ChannelGroup:
    """Channels that must be removed together, with every tensor axis they live on.

    `labels[i]` gives, for space i, the channel of each of its atoms (row-major),
    so removing channel set S from space i keeps atoms whose label is not in S.
    `units` partitions the channels into the smallest sets that can be removed on
    their own: single channels, whole attention heads, whole conv groups.
    """

    id: int
    spaces: list[Space]
    labels: list[np.ndarray]
    num_channels: int
    unit_of: np.ndarray  # channel -> unit id (units are numbered 0..num_units-1)
    prunable: bool = True
    reasons: list[str] = field(default_factory=list)
    exact: bool = True  # removal equals zeroing the producers (see `inexact`)
    inexact: list[str] = field(default_factory=list)
    within_heads: bool = False  # heads=False attention: a channel is one head_dim position of every head

    @property
    def num_units(self) -> int:
        return int(self.unit_of.max()) + 1 if self.unit_of.size else 0

    @property
    def units(self) -> list[np.ndarray]:
        """Channel ids of each unit, ascending."""
        cached = self.__dict__.get("_units")
        if cached is None:
            order = np.argsort(self.unit_of, kind="stable")
            bounds = np.flatnonzero(np.diff(self.unit_of[order])) + 1
            cached = self.__dict__["_units"] = np.split(order, bounds) if order.size else []
        return cached

    @property
    def unit_size(self) -> int:
        return int(np.bincount(self.unit_of).min()) if self.unit_of.size else 0

    @property
    def width(self) -> int:
        """Positions per channel along the narrowest weight: head_dim for attention heads, the
        number of (kv) heads for head dims (heads=False), the per-group width for grouped convs,
        1 for plain channels. Weights that only follow the channels (a rotary table's
        `inv_freq` buffer, reached through reshapes) have no role and do not count."""
        widths = [lab.size // np.unique(lab).size for s, lab in self.weights() if lab.size and s.role]
        return min(widths) if widths else 1

    @property
    def kind(self) -> str:
        if self.within_heads:
            return "head dims"
        if self.width == 1:
            return "channels"
        joint = any(len(s.axes) > 1 and not s.value.is_weight for s in self.spaces)
        return "heads" if joint else "conv groups"

    def weights(self) -> list[tuple[Space, np.ndarray]]:
        return [(s, lab) for s, lab in zip(self.spaces, self.labels) if s.value.is_weight]

    def producers(self) -> list[tuple[Space, np.ndarray]]:
        return [(s, lab) for s, lab in self.weights() if s.role == "producer"]

    def members(self) -> list[str]:
        return [s.describe() for s in self.spaces]

    def summary(self) -> str:
        params = sorted({s.value.name for s in self.spaces if s.value.kind == "param"})
        width = f" of width {self.width}" if self.width > 1 else ""
        head = f"group {self.id}: {self.num_channels} {self.kind}{width} in {self.num_units} units of {self.unit_size}"
        status = "prunable" if self.prunable else "not prunable: " + "; ".join(self.reasons)
        if self.prunable and not self.exact:
            status += " (not mask-exact: " + "; ".join(self.inexact) + ")"
        shown = ", ".join(params[:6]) + (f", ... (+{len(params) - 6})" if len(params) > 6 else "")
        return f"{head}; {status}; params: {shown or '-'}"


class ChannelAnalysisError(GraphoptError):
    """The analysis could not finish; the message says at which node."""


class Builder:
    """Runs the channel rules over a graph to a fixed point and collects atom unions."""

    def __init__(self, graph: Graph, *, max_atoms: int = 200_000_000, heads: bool = True) -> None:
        self.graph = graph
        self.max_atoms = max_atoms
        self.heads = heads  # False: attention keeps every head and prunes head_dim (see the module docstring)
        self.spaces: dict[tuple[int, tuple[int, ...]], Space] = {}
        self.by_value: dict[int, list[Space]] = {}
        self.next_atom = 0
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.soft: list[tuple[Space, Space]] = []  # (broadcast source space, space it broadcasts into)
        self.barriers: dict[int, str] = {}  # id(space) -> reason
        self.inexact: dict[int, str] = {}  # id(space) -> reason
        self.gates: list[tuple] = []  # (space behind a zero-to-nonzero op, reason[, the op's node]), checked later
        self.head_dims: set[int] = set()  # id(space) of head_dim spaces split off attention heads (heads=False)
        self._dirty: list[Value] = []
        self.current: Node | None = None
        self.created = 0  # spaces created so far: the fixed point is reached when this stops growing
        self._done: set[tuple] = set()

    # ------------------------------------------------------------ spaces
    def space(self, value: Value | None, axes: Iterable[int], role: str = "", *, ids: np.ndarray | None = None) -> Space | None:
        """The space of `value` over `axes`, created if new; None where it cannot hold channels.

        `ids`: for a new space that corresponds one to one with existing atoms (an
        identity, permutation, reshape or slice of another space), those atoms in
        row-major order, instead of fresh atoms joined by unions. Most couplings are
        such bijections, so this keeps the union-find small.
        """
        if value is None:
            return None
        axes = tuple(sorted({a % value.rank for a in axes})) if value.rank else ()
        if not axes:
            return None
        sizes = tuple(value.shape[a] for a in axes)
        if not all(isinstance(s, int) for s in sizes) or int(np.prod(sizes)) <= 1:
            return None
        if all(s == 1 for s in sizes):
            return None
        key = (id(value), axes)
        found = self.spaces.get(key)
        if found is not None:
            if role and not found.role:
                found.role = role
            return found
        if ids is not None and ids.size == int(np.prod(sizes)):
            if ids.ndim != 1 or not ids.flags.c_contiguous:
                ids = np.ascontiguousarray(ids).ravel()
            space = Space(value, axes, sizes, -1 - len(self.spaces), role, ids)
        else:
            space = Space(value, axes, sizes, self.next_atom, role)
            self.next_atom += space.size
        self.created += 1
        if self.next_atom > self.max_atoms:
            where = self.current.where() if self.current is not None else "the graph"
            raise ChannelAnalysisError(
                f"channel analysis stopped at {where}: more than {self.max_atoms:,} channel positions; "
                "raise max_atoms or ignore this part of the graph"
            )
        self.spaces[key] = space
        siblings = self.by_value.setdefault(id(value), [])
        for other in siblings:
            if set(other.axes) & set(axes):
                self._link_overlapping(space, other)
        siblings.append(space)
        self._dirty.append(value)
        return space

    def spaces_of(self, value: Value | None) -> list[Space]:
        return list(self.by_value.get(id(value), [])) if value is not None else []

    def _link_overlapping(self, a: Space, b: Space) -> None:
        """Two spaces of one tensor that share axes: atoms agreeing on the shared axes are one channel."""
        shared = sorted(set(a.axes) & set(b.axes))
        key_a = _project_keys(a, shared)
        key_b = _project_keys(b, shared)
        first_b = np.full(int(key_b.max()) + 1, -1, dtype=np.int64)
        first_b[key_b[::-1]] = b.atoms[::-1]
        self.union(a.atoms, first_b[key_a])

    # ------------------------------------------------------------ unions
    def once(self, *key) -> bool:
        """True the first time `key` is seen: rules re-run as spaces appear, unions need doing once."""
        if key in self._done:
            return False
        self._done.add(key)
        return True

    def union(self, left: np.ndarray, right: np.ndarray) -> None:
        left = np.asarray(left, dtype=np.int64).ravel()
        right = np.asarray(right, dtype=np.int64).ravel()
        if left.size:
            self.edges.append((left, right))

    def union_all(self, atoms: np.ndarray) -> None:
        """Make every atom in `atoms` one channel."""
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        if atoms.size > 1:
            self.union(atoms[:-1], atoms[1:])

    def couple(self, src: Space | None, dst_value: Value | None, axis_map: dict[int, int | None], *,
               soft: bool = False, role: str = "") -> Space | None:
        """Create dst's space over the images of src's axes and union atoms by coordinates.

        `axis_map` maps each axis of src to an axis of dst_value, or None where the
        axis has no counterpart (the coordinate is projected away: many-to-one).
        With `soft`, the atoms are not unioned (a broadcast); the pair is recorded.
        """
        if src is None or dst_value is None:
            return None
        images = [axis_map.get(a) for a in src.axes]
        existing = self.spaces.get((id(dst_value), tuple(sorted(d % dst_value.rank for d in images if d is not None))))
        if existing is not None and not self.once("couple", frozenset((id(src), id(existing))), soft):
            return existing
        kept = [(a, axis_map.get(a)) for a in src.axes]
        dst_axes = [d for _, d in kept if d is not None]
        if not dst_axes:
            return None
        for a, d in kept:
            if d is not None and dst_value.shape[d] != src.value.shape[a]:
                return None  # sizes differ (e.g. broadcast of size 1 on dst): nothing to couple
        order = sorted(((d, i) for i, (_, d) in enumerate(kept) if d is not None))
        dropped = [i for i, (_, d) in enumerate(kept) if d is None]
        is_new = (id(dst_value), tuple(sorted(dst_axes))) not in self.spaces
        if is_new and not soft and not dropped:  # a bijection onto a new space: reuse the atoms
            perm = [i for _, i in order]
            ids = src.atoms if perm == sorted(perm) else np.transpose(src.grid(), perm)
            return self.space(dst_value, dst_axes, role, ids=ids)
        dst = self.space(dst_value, dst_axes, role)
        if dst is None:
            return None
        if soft:
            self.soft.append((dst, src))
            return dst
        grid = src.grid()  # axes in src order
        # move src axes into dst axis order, projecting away unmapped ones
        perm = [i for _, i in order] + dropped
        moved = np.transpose(grid, perm)
        dst_grid = dst.grid()
        expanded = np.broadcast_to(dst_grid.reshape(dst_grid.shape + (1,) * len(dropped)), moved.shape)
        self.union(moved, expanded)
        return dst

    def identity(self, a: Value | None, b: Value | None, axes_a: Sequence[int], axes_b: Sequence[int]) -> None:
        """Couple a's axes to b's axes one to one, for every space on either side that lives on them."""
        if a is None or b is None:
            return
        ma = {x % a.rank: y % b.rank for x, y in zip(axes_a, axes_b)}
        mb = {y: x for x, y in ma.items()}
        for s in self.spaces_of(a):
            if set(s.axes) <= set(ma):
                self.couple(s, b, ma)
        for s in self.spaces_of(b):
            if set(s.axes) <= set(mb):
                self.couple(s, a, mb)

    def barrier(self, value: Value | None, reason: str) -> None:
        for s in self.spaces_of(value):
            self.barriers.setdefault(id(s), reason)

    def mark_inexact(self, space: Space | None, reason: str) -> None:
        if space is not None:
            self.inexact.setdefault(id(space), reason)

    # ------------------------------------------------------------ driving
    def run(self) -> None:
        nodes_by_value: dict[int, list[Node]] = {}
        for node in self.graph.nodes:
            for v in list(node.inputs) + node.outputs:
                if v is not None:
                    nodes_by_value.setdefault(id(v), []).append(node)
        counts: dict[int, int] = {}
        pending: list[Node] = list(self.graph.nodes)
        queued = {id(n) for n in pending}
        while pending:
            node = pending.pop(0)
            queued.discard(id(node))
            before = self.created
            self.current = node
            counts[id(node)] = counts.get(id(node), 0) + 1
            if counts[id(node)] > 64:
                raise ChannelAnalysisError(f"channel rules did not settle at {node.where()}")
            rule = rule_for(node.op)
            if rule is None or rule is BARRIER:
                self._block_barrier(node)
            else:
                rule(self, node)
            if self.created != before:
                dirty, self._dirty = self._dirty, []
                for value in dirty:
                    for other in nodes_by_value.get(id(value), []):
                        if id(other) not in queued:
                            pending.append(other)
                            queued.add(id(other))
            else:
                self._dirty = []
        self.current = None
        # spaces created after a barrier was set on their value are blocked too
        for node in self.graph.nodes:
            if is_barrier(node.op):
                self._block_barrier(node)

    def _block_barrier(self, node: Node) -> None:
        """Block every group on the node's tensors: its op has no channel rule, or BARRIER."""
        if rule_for(node.op) is BARRIER:
            reason = f"op '{node.op}' ({node.where()}) is a channel barrier (registered as BARRIER)"
        else:
            reason = (f"op '{node.op}' ({node.where()}) has no channel rule; register one with "
                      "graphopt.analysis.register_channel_rule")
        for v in list(node.inputs) + node.outputs:
            self.barrier(v, reason)


def _atoms_key(space: Space) -> tuple:
    """Equal for spaces that hold the same atoms in the same order."""
    return (space.offset if space.ids is None else id(space.ids), space.size)


def _project_keys(space: Space, axes: Sequence[int]) -> np.ndarray:
    """For each atom of `space`, a flat key of its coordinates on `axes`."""
    coords = np.indices(space.sizes).reshape(len(space.sizes), -1)
    key = np.zeros(space.size, dtype=np.int64)
    for axis in axes:
        i = space.axes.index(axis)
        key = key * space.sizes[i] + coords[i]
    return key


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
    ignored = set(ignore)
    groups: list[ChannelGroup] = []
    group_of_space: dict[int, ChannelGroup] = {}
    created = {id(sp): i for i, sp in enumerate(spaces)}
    for root in sorted(members, key=lambda r: min(members[r])):
        group_spaces = [spaces[i] for i in members[root]]
        group_spaces.sort(key=lambda sp: (0 if sp.role == "producer" else 1, created[id(sp)]))
        group = _new_group(len(groups), group_spaces, labels, builder)
        group_of_space.update((id(s), group) for s in group_spaces)
        _judge_group(group, builder, graph_inputs, ignored)
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


def _judge_group(group: ChannelGroup, builder: Builder, graph_inputs: set[int],
                 ignored: set[str]) -> None:
    """Block `group` (graph ends, barriers, ignored tensors, nothing to prune) and note what makes it inexact."""
    for s in group.spaces:
        if s.value.is_graph_output():
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
