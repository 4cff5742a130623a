"""ONNX lowerings of layout ops: reshape, permute, expand, concat/split/slice, select, gathers, pad."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.backends.onnx.builder import INT64_MAX
from graphopt.backends.onnx.lowering import OpsetTooLow, lowering
from graphopt.backends.onnx.lowerings._common import axes_list, casted, out_of, scalar, expand, reduce, reshape


@lowering("reshape")
def _reshape(b, node, ins):
    return reshape(b, ins[0], node.inputs[0].shape, node.attrs["shape"], out_of(node).dtype)


@lowering("permute")
def _permute(b, node, ins):
    rank = node.inputs[0].rank
    return b.op("Transpose", ins[:1], {"perm": axes_list(node.attrs["dims"], rank)}, dtype=out_of(node).dtype)


@lowering("expand")
def _expand(b, node, ins):
    return expand(b, ins[0], node.inputs[0].shape, node.attrs["shape"], out_of(node).dtype)


@lowering("concat")
def _concat(b, node, ins):
    dt = out_of(node).dtype
    return b.op("Concat", casted(b, node, ins, dt), {"axis": int(node.attrs["axis"])}, dtype=dt)


@lowering("split")
def _split(b, node, ins):
    sizes = list(node.attrs["sizes"])
    dt = node.inputs[0].dtype
    axis = int(node.attrs["axis"])
    outs = b.op("Split", [ins[0], b.shape(sizes)], {"axis": axis}, outputs=len(sizes), dtype=dt)
    return [outs] if len(sizes) == 1 else outs


@lowering("slice")
def _slice(b, node, ins):
    x_v = node.inputs[0]
    axis = int(node.attrs["axis"]) % x_v.rank
    start, end, step = node.attrs["start"], node.attrs["end"], node.attrs.get("step", 1)
    size = b.resolve(x_v.shape[axis])
    end = b.resolve(D.canon(end))
    ends = b.i64([INT64_MAX]) if D.dims_equal(end, size) or (isinstance(end, int) and end >= INT64_MAX) else b.dim(end)
    return b.op("Slice", [ins[0], b.dim(start), ends, b.i64([axis]), b.dim(step)], dtype=out_of(node).dtype)


@lowering("select")
def _select(b, node, ins):
    return b.op("Gather", [ins[0], b.i64(int(node.attrs["index"]))], {"axis": int(node.attrs["axis"])},
                dtype=out_of(node).dtype)


@lowering("index_select")
def _index_select(b, node, ins):
    return b.op("Gather", ins[:2], {"axis": int(node.attrs["axis"])}, dtype=out_of(node).dtype)


@lowering("gather")
def _gather(b, node, ins):
    return b.op("GatherElements", ins[:2], {"axis": int(node.attrs["axis"]) % node.inputs[0].rank},
                dtype=out_of(node).dtype)


@lowering("scatter")
def _scatter(b, node, ins):
    dt = out_of(node).dtype
    attrs = {"axis": int(node.attrs["axis"]) % node.inputs[0].rank}
    mode = node.attrs.get("reduce", "none")
    src = b.cast(ins[2], dt, node.inputs[2].dtype)
    if mode in ("amax", "amin") and b.opset < 18:
        return _scatter_extreme(b, node, ins[0], ins[1], src)
    if mode != "none":
        needs = 18 if mode in ("amax", "amin") else 16
        if b.opset < needs:
            raise OpsetTooLow(f"{node.where()}: scatter with reduce={mode!r} needs ScatterElements' reduction, "
                              f"opset {needs} or later", needs=needs)
        attrs["reduction"] = {"add": "add", "mul": "mul", "amax": "max", "amin": "min"}[mode]
    return b.op("ScatterElements", [ins[0], ins[1], src], attrs, dtype=dt)


def _scatter_extreme(b, node, x: str, idx: str, src: str) -> str:
    """scatter amax/amin before opset 18 (no ScatterElements max/min): each target position's extreme over a
    one-hot [.., M, N, ..] of the sources that reach it, then max/min with x."""
    x_v, idx_v = node.inputs[0], node.inputs[1]
    dt, rank = out_of(node).dtype, x_v.rank
    axis = int(node.attrs["axis"]) % rank
    if not all(D.dims_equal(a, c) for i, (a, c) in enumerate(zip(x_v.shape, idx_v.shape)) if i != axis):
        raise GraphoptError(f"{node.where()}: scatter {node.attrs['reduce']} with indices {list(idx_v.shape)} "
                            f"narrower than x {list(x_v.shape)} off the axis needs opset 18")
    largest = node.attrs["reduce"] == "amax"
    info = torch.finfo(dt) if dt.is_floating_point else torch.iinfo(dt)
    fill = b.const(float("-inf") if largest and dt.is_floating_point else float("inf") if dt.is_floating_point
                   else (info.min if largest else info.max), dt)
    positions = b.op("Range", [b.i64(0), b.scalar_dim(x_v.shape[axis]), b.i64(1)], dtype=torch.int64)
    positions = b.op("Reshape", [positions, b.i64([1] * (axis + 1) + [-1] + [1] * (rank - axis - 1))],
                     dtype=torch.int64)
    hit = b.op("Equal", [b.op("Unsqueeze", [b.cast(idx, torch.int64, idx_v.dtype), b.i64([axis + 1])],
                              dtype=torch.int64), positions], dtype=torch.bool)  # [.., M, N, ..]
    spread = b.op("Where", [hit, b.op("Unsqueeze", [src, b.i64([axis + 1])], dtype=dt), fill], dtype=dt)
    best = reduce(b, "ReduceMax" if largest else "ReduceMin", spread, [axis], False, dt)
    return b.op("Max" if largest else "Min", [x, best], dtype=dt)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@lowering("pad")
def _pad(b, node, ins):
    x_v = node.inputs[0]
    dt = out_of(node).dtype
    pad = [int(p) for p in node.attrs["pad"]]
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES or (mode == "circular" and b.opset < 19):
        raise GraphoptError(f"{node.where()}: pad mode '{mode}' has no ONNX equivalent at opset {b.opset}")
    begins, ends = [0] * x_v.rank, [0] * x_v.rank
    for i in range(len(pad) // 2):
        axis = x_v.rank - 1 - i
        begins[axis], ends[axis] = pad[2 * i], pad[2 * i + 1]
    inputs = [ins[0], b.i64(begins + ends)]
    if mode == "constant":
        inputs.append(scalar(b, node.attrs.get("value", 0.0) or 0, dt))
    return b.op("Pad", inputs, {"mode": _PAD_MODES[mode]}, dtype=dt)
