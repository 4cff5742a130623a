"""Physically removing a channel group's channels from a graph, and its reference: masking them.

`remove_channels` slices every member weight and rewrites every attribute that
encodes a size (reshape targets, split sizes, slice bounds, conv and norm
groups, normalized shapes), then re-infers shapes and checks them against the
sizes the group predicts. `mask_channels` zeroes the producers of the same
channels instead; for a group reported exact, both give the same outputs, which
is what the tests check on every zoo model.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch

from graphopt.analysis.channels import ChannelGroup, Space
from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Value


class RemovalError(GraphoptError):
    """The requested channels cannot be removed as asked; the message says which tensor objects."""


def _bind(group: ChannelGroup, graph: Graph) -> ChannelGroup:
    """The group with its spaces on `graph`'s values: a group found on a graph applies to its clones."""
    if all(s.value.graph is graph for s in group.spaces):
        return group
    by_name = {v.name: v for v in graph.all_values()}
    spaces = []
    for s in group.spaces:
        value = by_name.get(s.value.name)
        if value is None or tuple(value.shape[a] for a in s.axes) != s.sizes:
            raise RemovalError(f"group {group.id} does not fit graph '{graph.name}': no matching %{s.value.name}")
        spaces.append(dataclasses.replace(s, value=value))
    return dataclasses.replace(group, spaces=spaces)


def _kept_coords(space: Space, labels: np.ndarray, removed: np.ndarray) -> list[np.ndarray]:
    """Per axis of the space, the coordinates that stay; the kept atoms must form a box."""
    keep = ~np.isin(labels, removed).reshape(space.sizes)
    per_axis = []
    for i in range(len(space.sizes)):
        others = tuple(j for j in range(len(space.sizes)) if j != i)
        per_axis.append(np.flatnonzero(keep.any(axis=others) if others else keep))
    if any(coords.size == 0 for coords in per_axis):
        raise RemovalError(f"removing these channels would leave {space.describe()} empty; keep at least one "
                           "of its channels")
    box = np.zeros(space.sizes, dtype=bool)
    box[np.ix_(*per_axis)] = True
    if not np.array_equal(box, keep):
        raise RemovalError(
            f"removing these channels would leave {space.describe()} ragged; remove whole units "
            "(see ChannelGroup.units: whole heads or conv groups)"
        )
    return per_axis


def _check_units(group: ChannelGroup, removed: np.ndarray) -> None:
    chosen = set(removed.tolist())
    for unit in group.units:
        inside = [int(c) in chosen for c in unit]
        if any(inside) and not all(inside):
            raise RemovalError(f"group {group.id}: channels {unit.tolist()} form one unit and must be removed together")
    if len(chosen) >= group.num_channels:
        raise RemovalError(f"group {group.id}: cannot remove all {group.num_channels} channels")
    if any(c < 0 or c >= group.num_channels for c in chosen):
        raise RemovalError(f"group {group.id}: channel ids must be in [0, {group.num_channels})")


def remove_channels(graph: Graph, group: ChannelGroup, channels: Iterable[int]) -> Graph:
    """Remove `channels` of `group` from `graph` in place (the group must come from this graph)."""
    removed = np.unique(np.asarray(list(channels), dtype=np.int64))
    if removed.size == 0:
        return graph
    if not group.prunable:
        raise RemovalError(f"group {group.id} is not prunable: {'; '.join(group.reasons)}")
    _check_units(group, removed)

    group = _bind(group, graph)
    new_sizes: dict[int, dict[int, int]] = {}  # id(value) -> axis -> new size
    weight_keep: dict[int, tuple[Value, dict[int, np.ndarray]]] = {}
    kept_by_value: dict[int, dict[int, np.ndarray]] = {}  # tensors without data: kept positions per axis
    for space, labels in zip(group.spaces, group.labels):
        kept = _kept_coords(space, labels, removed)
        for axis, coords in zip(space.axes, kept):
            new_sizes.setdefault(id(space.value), {})[axis] = len(coords)
            if space.value.is_weight:
                weight_keep.setdefault(id(space.value), (space.value, {}))[1][axis] = coords
            else:
                kept_by_value.setdefault(id(space.value), {})[axis] = coords

    for value, axes in weight_keep.values():
        tensor = value.data
        for axis, coords in axes.items():
            tensor = torch.index_select(tensor, axis, torch.as_tensor(coords, dtype=torch.long, device=tensor.device))
        value.set_data(tensor.contiguous())

    def new_shape(value: Value) -> list:
        sizes = new_sizes.get(id(value), {})
        return [sizes.get(a, d) for a, d in enumerate(value.shape)]

    for node in graph.nodes:
        out = node.outputs[0]
        op = node.op
        if op in ("reshape", "expand", "full") and id(out) in new_sizes:
            node.attrs["shape"] = new_shape(out)
        elif op == "split":
            axis = node.attrs["axis"]
            node.attrs["sizes"] = [new_shape(o)[axis] for o in node.outputs]
        elif op == "slice":
            x = node.inputs[0]
            axis = node.attrs["axis"] % x.rank
            kept = kept_by_value.get(id(x), {}).get(axis)
            if kept is not None:
                start, end = node.attrs["start"], node.attrs["end"]
                node.attrs["start"] = int(np.count_nonzero(kept < start))
                node.attrs["end"] = int(np.count_nonzero(kept < end))
        elif op in ("conv", "conv_transpose") and node.attrs.get("groups", 1) > 1:
            x = node.inputs[0]
            if id(x) in new_sizes and 1 in new_sizes[id(x)]:
                per_in = x.shape[1] // node.attrs["groups"]
                node.attrs["groups"] = new_sizes[id(x)][1] // per_in
        elif op == "group_norm" and id(out) in new_sizes and 1 in new_sizes[id(out)]:
            per = out.shape[1] // node.attrs["num_groups"]
            node.attrs["num_groups"] = new_sizes[id(out)][1] // per
        elif op in ("layer_norm", "rms_norm") and id(out) in new_sizes:
            k = len(node.attrs["normalized_shape"])
            node.attrs["normalized_shape"] = [int(d) for d in new_shape(out)[-k:]]
        elif op == "sdpa" and node.attrs.get("scale") is None:
            q = node.inputs[0]
            if new_shape(q)[-1] != q.shape[-1]:
                node.attrs["scale"] = float(q.shape[-1]) ** -0.5  # keep the original softmax temperature

    expected = {id(v): new_shape(v) for node in graph.nodes for v in node.outputs}
    graph.infer_shapes()
    for node in graph.nodes:
        for v in node.outputs:
            if not D.shapes_equal(v.shape, expected[id(v)]):
                raise RemovalError(
                    f"after removing channels of group {group.id}, {node.where()} gives %{v.name}: {v.type_str()} "
                    f"but the group predicts {expected[id(v)]}; a channel rule is missing a coupling"
                )
    return graph


def mask_channels(graph: Graph, group: ChannelGroup, channels: Iterable[int]) -> Graph:
    """Zero the producers (weights, biases, norm affine) of `channels` in place: removal's reference."""
    removed = np.unique(np.asarray(list(channels), dtype=np.int64))
    group = _bind(group, graph)
    for space, labels in group.producers():
        mask = np.isin(labels, removed).reshape(space.sizes)
        value = space.value
        shape = [1] * value.rank
        for axis, size in zip(space.axes, space.sizes):
            shape[axis] = size
        full = torch.as_tensor(mask.reshape(shape)).expand(value.data.shape)
        data = value.data.clone()
        data[full] = 0
        value.set_data(data)
    return graph
