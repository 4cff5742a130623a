"""ONNX converters for pooling and resampling: Max/Average/Global pooling, Resize and Upsample."""

from __future__ import annotations

import math
from typing import Any

from graphopt.errors import GraphoptError
from graphopt.frontends.onnx import register_onnx_op
from graphopt.frontends.onnx_ops._common import attr, pad_asymmetric, spatial_pads, value_at
from graphopt.ir import dims as D


def _pool(ctx, node, op: str):
    x = value_at(ctx, node, 0)
    kernel = [int(k) for k in attr(node, "kernel_shape")]
    n = len(kernel)
    strides = [int(s) for s in attr(node, "strides", [1] * n)]
    dilations = [int(d) for d in attr(node, "dilations", [1] * n)]
    begins, ends = spatial_pads(ctx, node, x, kernel, strides, dilations)
    ceil = bool(attr(node, "ceil_mode", 0))
    attrs: dict[str, Any] = {"kernel": kernel, "stride": strides, "ceil_mode": ceil}
    if op == "max_pool":
        if len([o for o in node.output if o]) > 1:
            raise GraphoptError(f"{ctx.where()}: MaxPool's indices output is not supported")
        x, pads = pad_asymmetric(ctx, x, begins, ends, value=float("-inf"))
        attrs.update(padding=pads, dilation=dilations)
    else:
        include = bool(attr(node, "count_include_pad", 0))
        if begins != ends and not include:
            raise GraphoptError(f"{ctx.where()}: AveragePool with uneven padding and count_include_pad=0 is not "
                                "supported")
        if any(d != 1 for d in dilations):
            raise GraphoptError(f"{ctx.where()}: dilated AveragePool is not supported")
        x, pads = pad_asymmetric(ctx, x, begins, ends)
        attrs.update(padding=pads, count_include_pad=include, divisor_override=None)
    return ctx.emit1(op, [x], attrs)


@register_onnx_op("MaxPool")
def _max_pool(ctx, node):
    return _pool(ctx, node, "max_pool")


@register_onnx_op("AveragePool")
def _avg_pool(ctx, node):
    return _pool(ctx, node, "avg_pool")


@register_onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx, node):
    x = value_at(ctx, node, 0)
    op = "adaptive_avg_pool" if node.op_type == "GlobalAveragePool" else "adaptive_max_pool"
    return ctx.emit1(op, [x], {"output_size": [1] * (x.rank - 2)})


def _resize_mode(ctx, node, rank: int) -> tuple[str, bool | None]:
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample" or ctx.opset < 11:
        ctm = "asymmetric"
    if attr(node, "antialias", 0):
        raise GraphoptError(f"{ctx.where()}: antialiased Resize is not supported")
    if mode == "nearest":
        nearest = attr(node, "nearest_mode", "round_prefer_floor" if ctx.opset >= 11 else "floor")
        if node.op_type == "Upsample" or ctx.opset < 11:
            nearest = "floor"
        if ctm == "asymmetric" and nearest == "floor":
            return "nearest", None
        if ctm == "half_pixel" and nearest == "round_prefer_ceil":
            return "nearest-exact", None
        raise GraphoptError(f"{ctx.where()}: nearest Resize with coordinate_transformation_mode={ctm} and "
                            f"nearest_mode={nearest} has no torch equivalent")
    if mode in ("linear", "bilinear", "cubic", "bicubic"):
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise GraphoptError(f"{ctx.where()}: {mode} Resize with coordinate_transformation_mode={ctm} has no torch "
                                "equivalent")
        if mode in ("cubic", "bicubic"):
            if not math.isclose(float(attr(node, "cubic_coeff_a", -0.75)), -0.75) or attr(node, "exclude_outside", 0):
                raise GraphoptError(f"{ctx.where()}: cubic Resize differs from torch's bicubic (cubic_coeff_a, "
                                    "exclude_outside)")
            return "bicubic", ctm == "align_corners"
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}.get(rank)
        if torch_mode is None:
            raise GraphoptError(f"{ctx.where()}: linear Resize of a rank-{rank} tensor is not supported")
        return torch_mode, ctm == "align_corners"
    raise GraphoptError(f"{ctx.where()}: Resize mode '{mode}' is not supported")


@register_onnx_op("Resize", "Upsample")
def _resize(ctx, node):
    x = value_at(ctx, node, 0)
    mode, align = _resize_mode(ctx, node, x.rank)
    if node.op_type == "Upsample" or ctx.opset < 11:
        scales_name, sizes_name = (ctx.input(node, 1) if ctx.opset >= 9 else None), None
        scales = ctx.floats(scales_name) if scales_name else list(attr(node, "scales"))
    else:
        scales_name, sizes_name = ctx.input(node, 2), ctx.input(node, 3)
        scales = ctx.floats(scales_name) if scales_name else None
        if scales is not None and not scales:
            scales = None
    axes = attr(node, "axes")
    n = x.rank - 2
    if sizes_name and ctx.known(sizes_name) is not None and ctx.known(sizes_name).numel:
        sizes = ctx.ints(sizes_name, "sizes")
        if axes:
            full = list(x.shape)
            for a, s in zip(axes, sizes):
                full[int(a) % x.rank] = s
            sizes = full
        if not D.shapes_equal(sizes[:2], x.shape[:2]):
            raise GraphoptError(f"{ctx.where()}: Resize of the batch or channel axis is not supported")
        return ctx.emit1("resize", [x], {"size": list(sizes[2:]), "scale_factor": None, "mode": mode,
                                         "align_corners": align})
    if scales is None:
        raise GraphoptError(f"{ctx.where()}: Resize needs constant scales or sizes")
    if axes:
        full_scales = [1.0] * x.rank
        for a, s in zip(axes, scales):
            full_scales[int(a) % x.rank] = s
        scales = full_scales
    if scales[:2] != [1.0, 1.0]:
        raise GraphoptError(f"{ctx.where()}: Resize of the batch or channel axis is not supported")
    return ctx.emit1("resize", [x], {"size": None, "scale_factor": [float(s) for s in scales[2:]][:n], "mode": mode,
                                     "align_corners": align})
