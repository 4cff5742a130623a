"""ATen converters that decompose sequence helpers exactly into canonical ops: diff, repeat_interleave.

Hugging Face decoders use both around mixture-of-experts routing (repeat each
token once per chosen expert) and packed-sequence detection (diff of position
ids); each is a few slices, subtractions or a broadcast, which every
back-end and the channel analysis already know.
"""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import cast_to, schema_arg
from graphopt.ir import dims as D


@register_torch_op("aten.diff")
def _diff(ctx, node):
    x = ctx.value(node.args[0])
    n, axis = int(schema_arg(node, 1, "n", 1)), int(schema_arg(node, 2, "dim", -1)) % x.rank
    parts = [ctx.maybe_value(schema_arg(node, 3, "prepend")), x, ctx.maybe_value(schema_arg(node, 4, "append"))]
    parts = [cast_to(ctx, p, x.dtype) for p in parts if p is not None]
    if len(parts) > 1:
        x = ctx.emit1("concat", parts, {"axis": axis})
    step = "ne" if x.dtype == torch.bool else "sub"  # torch's diff of booleans is their xor
    for _ in range(n):
        size = x.shape[axis]
        later = ctx.emit1("slice", [x], {"axis": axis, "start": 1, "end": size, "step": 1})
        earlier = ctx.emit1("slice", [x], {"axis": axis, "start": 0, "end": size - 1, "step": 1})
        x = ctx.emit1(step, [later, earlier])
    return x


@register_torch_op("aten.repeat_interleave.self_int")
def _repeat_interleave(ctx, node):
    x = ctx.value(node.args[0])
    repeats, axis = schema_arg(node, 1, "repeats"), schema_arg(node, 2, "dim")
    if not isinstance(repeats, int):
        raise GraphoptError(f"node '{node.name}': repeat_interleave with a repeat count computed at run time "
                            "is not supported")
    if axis is None:  # torch flattens first
        x, axis = ctx.emit1("reshape", [x], {"shape": [D.prod(x.shape)]}), 0
    axis = int(axis) % x.rank
    # [.., n, ..] -> [.., n, 1, ..] -> [.., n, r, ..] -> [.., n * r, ..]: each entry r times in a row
    shape = list(x.shape)
    column = ctx.emit1("reshape", [x], {"shape": shape[:axis + 1] + [1] + shape[axis + 1:]})
    spread = ctx.emit1("expand", [column], {"shape": shape[:axis + 1] + [repeats] + shape[axis + 1:]})
    return ctx.emit1("reshape", [spread], {"shape": list(ctx.out_shape())})
