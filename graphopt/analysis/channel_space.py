"""The channel model: spaces of channel positions, groups of them, and the builder that couples them.

A `Space` is a set of axes of one tensor whose positions are channels; each
position is an atom. The per-op channel rules (graphopt/analysis/channel_rules/)
receive a `Builder` and say how the atoms of the spaces around a node
correspond; `channels.py` turns the unions the builder collected into
`ChannelGroup`s. The model, and why it is exact, is explained there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

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


def _project_keys(space: Space, axes: Sequence[int]) -> np.ndarray:
    """For each atom of `space`, a flat key of its coordinates on `axes`."""
    coords = np.indices(space.sizes).reshape(len(space.sizes), -1)
    key = np.zeros(space.size, dtype=np.int64)
    for axis in axes:
        i = space.axes.index(axis)
        key = key * space.sizes[i] + coords[i]
    return key
