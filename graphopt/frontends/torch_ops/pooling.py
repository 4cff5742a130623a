"""ATen converters for pooling and resampling: max/avg/adaptive pooling, upsampling."""

from __future__ import annotations

from typing import Any

from graphopt.frontends.torch import register_torch_op
from graphopt.frontends.torch_ops._common import as_list, schema_arg


def _per_axis(v, n):
    v = as_list(v)
    return [int(i) for i in (v * n if len(v) == 1 else v)]


@register_torch_op("aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices")
def _max_pool(ctx, node):
    x = ctx.value(node.args[0])
    kernel = as_list(node.args[1])
    n = len(kernel) if len(kernel) > 1 else int(str(node.target).split("max_pool")[1][0])
    kernel = _per_axis(kernel, n)
    stride = _per_axis(schema_arg(node, 2, "stride", []) or kernel, n)
    attrs = {"kernel": kernel, "stride": stride, "padding": _per_axis(schema_arg(node, 3, "padding", 0), n),
             "dilation": _per_axis(schema_arg(node, 4, "dilation", 1), n), "ceil_mode": bool(schema_arg(node, 5, "ceil_mode", False))}
    out = ctx.emit1("max_pool", [x], attrs)
    return [out, None] if "with_indices" in str(node.target) else out


@register_torch_op("aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d")
def _avg_pool(ctx, node):
    x = ctx.value(node.args[0])
    kernel = as_list(node.args[1])
    n = len(kernel) if len(kernel) > 1 else int(str(node.target).split("avg_pool")[1][0])
    kernel = _per_axis(kernel, n)
    attrs = {"kernel": kernel, "stride": _per_axis(schema_arg(node, 2, "stride", []) or kernel, n),
             "padding": _per_axis(schema_arg(node, 3, "padding", 0), n), "ceil_mode": bool(schema_arg(node, 4, "ceil_mode", False)),
             "count_include_pad": bool(schema_arg(node, 5, "count_include_pad", True)),
             "divisor_override": schema_arg(node, 6, "divisor_override", None)}
    return ctx.emit1("avg_pool", [x], attrs)


@register_torch_op("aten.adaptive_avg_pool1d", "aten.adaptive_avg_pool2d", "aten.adaptive_avg_pool3d",
                   "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d")
def _adaptive_avg(ctx, node):
    x = ctx.value(node.args[0])
    size = [None if s is None else int(s) for s in as_list(node.args[1])]
    n = int(str(node.target).split("pool")[1][0])
    return ctx.emit1("adaptive_avg_pool", [x], {"output_size": size * n if len(size) == 1 else size})


@register_torch_op("aten.adaptive_max_pool1d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
def _adaptive_max(ctx, node):
    x = ctx.value(node.args[0])
    size = [None if s is None else int(s) for s in as_list(node.args[1])]
    n = int(str(node.target).split("pool")[1][0])
    return [ctx.emit1("adaptive_max_pool", [x], {"output_size": size * n if len(size) == 1 else size}), None]


@register_torch_op("aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
                   "aten.upsample_bilinear2d", "aten.upsample_linear1d", "aten.upsample_bicubic2d",
                   "aten.upsample_trilinear3d", "aten._upsample_nearest_exact2d")
def _upsample(ctx, node):
    x = ctx.value(node.args[0])
    name = str(node.target)
    mode = ("nearest-exact" if "nearest_exact" in name else "nearest" if "nearest" in name
            else "bicubic" if "bicubic" in name else "trilinear" if "trilinear" in name
            else "bilinear" if "bilinear" in name else "linear")
    align = None if mode.startswith("nearest") else bool(schema_arg(node, 2, "align_corners", False))
    spatial = list(ctx.out_shape()[2:])
    scales = node.args[-1] if name.endswith(".vec") else None
    attrs: dict[str, Any] = {"mode": mode, "align_corners": align}
    if scales and not all(isinstance(d, int) for d in x.shape[2:]):
        attrs.update(size=None, scale_factor=[float(s) for s in scales])
    else:
        attrs.update(size=spatial, scale_factor=None)
    return ctx.emit1("resize", [x], attrs)
