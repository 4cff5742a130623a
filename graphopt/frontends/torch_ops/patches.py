"""ATen converters for patch extraction: im2col (F.unfold), col2im (F.fold), Tensor.unfold (windows on an axis)."""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import as_list


def _pair(v) -> list[int]:
    v = as_list(v)
    return [int(i) for i in (v * 2 if len(v) == 1 else v)]


def _window(args) -> dict:
    kernel, dilation, padding, stride = args
    return {"kernel": _pair(kernel), "dilation": _pair(dilation), "padding": _pair(padding), "stride": _pair(stride)}


def _batched(ctx, op: str, x, attrs: dict, batched_rank: int):
    """Run `op` on `x`; an unbatched input gets a batch axis of 1 for the op and loses it after."""
    if x.rank == batched_rank:
        return ctx.emit1(op, [x], attrs)
    x = ctx.emit1("reshape", [x], {"shape": [1, *x.shape]})
    out = ctx.emit1(op, [x], attrs)
    return ctx.emit1("reshape", [out], {"shape": list(out.shape[1:])})


@register_torch_op("aten.im2col")
def _im2col(ctx, node):
    return _batched(ctx, "im2col", ctx.value(node.args[0]), _window(node.args[1:5]), 4)


@register_torch_op("aten.col2im")
def _col2im(ctx, node):
    attrs = {"output_size": _pair(node.args[1]), **_window(node.args[2:6])}
    return _batched(ctx, "col2im", ctx.value(node.args[0]), attrs, 3)


@register_torch_op("aten.unfold")
def _unfold_axis(ctx, node):
    """Tensor.unfold(dim, size, step): windows along one axis, as a new last axis (PatchTST, LED, Hiera)."""
    x = ctx.value(node.args[0])
    axis, size, step = int(node.args[1]) % max(x.rank, 1), int(node.args[2]), int(node.args[3])
    length = x.shape[axis] if x.rank else 1
    if not isinstance(length, int):
        raise GraphoptError(f"node '{node.name}': Tensor.unfold along an axis of dynamic size ({length}) is not "
                            "supported; trace with that axis static")
    windows = (length - size) // step + 1
    if step == size:  # side by side: the covered prefix is already laid out window by window
        covered = windows * size
        picked = x if covered == length else ctx.emit1("slice", [x], {"axis": axis, "start": 0, "end": covered,
                                                                        "step": 1})
    else:
        index = torch.tensor([w * step + j for w in range(windows) for j in range(size)])
        picked = ctx.emit1("index_select", [x, ctx.graph.add_const(index, name="unfold_index")], {"axis": axis})
    shape = list(x.shape)
    split = ctx.emit1("reshape", [picked], {"shape": shape[:axis] + [windows, size] + shape[axis + 1:]})
    order = [a for a in range(x.rank + 1) if a != axis + 1] + [axis + 1]
    return ctx.emit1("permute", [split], {"dims": order}) if axis + 1 != x.rank else split
