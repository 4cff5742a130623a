"""ONNX lowerings of pooling and resampling, with torch's ceil-mode and divisor rules made explicit."""

from __future__ import annotations

import math

import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Node
from graphopt.backends.onnx.builder import OnnxBuilder
from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import out_of, per_axis, scalar, reduce


def _pool_geometry(node: Node) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in node.attrs["kernel"]]
    n = len(kernel)
    stride = [int(s) for s in per_axis(node.attrs.get("stride") or kernel, n)]
    pad = [int(p) for p in per_axis(node.attrs.get("padding", 0), n)]
    dil = [int(d) for d in per_axis(node.attrs.get("dilation", 1), n)]
    return kernel, stride, pad, dil


def _ceil_extra(node: Node, kernel, stride, pad, dil) -> list[int] | None:
    """Right padding that makes floor-mode pooling produce torch's ceil-mode output length.

    torch drops a last window that would start in the right padding; ONNX's
    shape inference does not (and runtimes have differed), so padding
    explicitly and pooling in floor mode gives torch's lengths on every
    runtime and checker. Needs static spatial dims.
    """
    x = node.inputs[0]
    out = node.outputs[0]
    n = len(kernel)
    extra = []
    for L, o, k, s, p, d in zip(x.shape[-n:], out.shape[-n:], kernel, stride, pad, dil):
        if not (isinstance(L, int) and isinstance(o, int)):
            return None
        floor_len = (L + 2 * p - d * (k - 1) - 1) // s + 1
        extra.append((o - floor_len) * s)
    return extra


def _pad_for_ceil(b: OnnxBuilder, node: Node, x: str, kernel, pad, extra, fill: float, dt) -> tuple[str, list[int]]:
    """Input and `pads` attribute for a floor-mode pool giving torch's ceil-mode windows.

    The extra right padding goes into the pool's `pads` when it stays below the
    kernel size (ONNX Runtime rejects more); otherwise an explicit Pad node
    filled with `fill` comes first and the pool gets no padding.
    """
    n = len(kernel)
    right = [p + e for p, e in zip(pad, extra)]
    if all(r < k for r, k in zip(right, kernel)):
        return x, pad + right
    rank = node.inputs[0].rank
    pads = [0] * (rank - n) + list(pad) + [0] * (rank - n) + right
    padded = b.op("Pad", [x, b.i64(pads), scalar(b, fill, dt)], {"mode": "constant"}, dtype=dt)
    return padded, [0] * (2 * n)


@lowering("max_pool")
def _max_pool(b, node, ins):
    dt = out_of(node).dtype
    kernel, stride, pad, dil = _pool_geometry(node)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pad * 2, "dilations": dil}
    x = ins[0]
    if node.attrs.get("ceil_mode"):
        extra = _ceil_extra(node, kernel, stride, pad, dil)
        if extra is None:  # symbolic spatial dims: rely on the runtime's ceil_mode
            attrs["ceil_mode"] = 1
        elif any(extra):
            x, attrs["pads"] = _pad_for_ceil(b, node, x, kernel, pad, extra, float("-inf"), dt)
    return b.op("MaxPool", [x], attrs, dtype=dt)


@lowering("avg_pool")
def _avg_pool(b, node, ins):
    dt = out_of(node).dtype
    kernel, stride, pad, _ = _pool_geometry(node)
    include_pad = bool(node.attrs.get("count_include_pad", True))
    if node.attrs.get("ceil_mode") or node.attrs.get("divisor_override"):
        return _avg_pool_by_sum(b, node, ins[0], kernel, stride, pad, include_pad, dt)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pad * 2, "count_include_pad": int(include_pad)}
    return b.op("AveragePool", ins[:1], attrs, dtype=dt)


def _avg_pool_by_sum(b: OnnxBuilder, node: Node, x: str, kernel, stride, pad, include_pad: bool, dt) -> str:
    """Average pooling as window sum / divisor, with torch's divisor rules.

    In ceil mode torch counts padding only up to the padded edge (a window
    hanging past it is divided by fewer elements), and divisor_override
    replaces the count; ONNX AveragePool has neither rule. The sum is exact
    from a count_include_pad AveragePool whose windows all lie inside the
    (explicitly extended) padding, times the window size; the per-window
    divisors are computed here, so the spatial dims must be static.
    """
    n = len(kernel)
    spatial = [b.resolve(d) for d in node.inputs[0].shape[-n:]]
    out_spatial = [b.resolve(d) for d in node.outputs[0].shape[-n:]]
    extra = _ceil_extra(node, kernel, stride, pad, [1] * n) if node.attrs.get("ceil_mode") else [0] * n
    if extra is None or not all(isinstance(d, int) for d in spatial + out_spatial):
        raise GraphoptError(f"{node.where()}: ceil-mode or divisor_override average pooling needs static spatial "
                            "dims to export to ONNX")
    x, pads = _pad_for_ceil(b, node, x, kernel, pad, extra, 0.0, dt)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pads, "count_include_pad": 1}
    total = b.op("Mul", [b.op("AveragePool", [x], attrs, dtype=dt), scalar(b, float(math.prod(kernel)), dt)], dtype=dt)
    divisor = node.attrs.get("divisor_override")
    if divisor:
        return b.op("Div", [total, scalar(b, float(divisor), dt)], dtype=dt)
    counts = _window_counts(spatial, kernel, stride, pad, extra, include_pad)
    if list(counts.shape) != out_spatial:
        raise GraphoptError(f"{node.where()}: pooling window count {list(counts.shape)} != output {out_spatial}")
    return b.op("Div", [total, b.const(counts.to(dt), dt, hint="pool_count")], dtype=dt)


def _window_counts(spatial, kernel, stride, pad, extra, include_pad: bool) -> torch.Tensor:
    """How many elements torch divides each window's sum by: those inside the input, or inside input + padding."""
    F = torch.nn.functional
    ones = torch.ones([1, 1, *spatial], dtype=torch.float64)
    if include_pad:  # the padding counts, what lies past it does not
        ones = F.pad(ones, [q for p in reversed(pad) for q in (p, p)], value=1.0)
        lo = [0] * len(pad)
    else:
        lo = list(pad)
    widths = [q for p, e in zip(reversed(lo), reversed(extra)) for q in (p, p + e)]
    padded = F.pad(ones, widths)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    return conv(padded, torch.ones([1, 1, *kernel], dtype=torch.float64), stride=stride)[0, 0]


def _adaptive(b: OnnxBuilder, node: Node, x: str, reduce_op: str, pool_op: str, global_op: str) -> str:
    x_v = node.inputs[0]
    dt = out_of(node).dtype
    size = list(node.attrs["output_size"])
    n = len(size)
    if x_v.rank != n + 2:
        raise GraphoptError(f"{node.where()}: adaptive pooling of a rank-{x_v.rank} input is not exported "
                            "(ONNX pooling needs [N, C, *spatial])")
    spatial = [b.resolve(d) for d in x_v.shape[2:]]
    target = [spatial[i] if s is None else int(s) for i, s in enumerate(size)]
    if all(isinstance(t, int) and t == 1 for t in target):
        return b.op(global_op, [x], dtype=dt)
    if not all(isinstance(L, int) for L, s in zip(spatial, size) if s is not None):
        raise GraphoptError(f"{node.where()}: adaptive pooling over a symbolic spatial dim cannot be exported")
    if all(s is None or L % s == 0 for L, s in zip(spatial, size)):
        kernel = [1 if s is None else L // s for L, s in zip(spatial, size)]
        return b.op(pool_op, [x], {"kernel_shape": kernel, "strides": kernel}, dtype=dt)
    # uneven bins: pool one axis at a time (bins are rectangles, so this is exact)
    y = x
    for i, (L, s) in enumerate(zip(spatial, size)):
        if s is None or L == s:
            continue
        axis = 2 + i
        pieces = []
        for j in range(s):
            lo, hi = (j * L) // s, -((-(j + 1) * L) // s)
            part = b.op("Slice", [y, b.i64([lo]), b.i64([hi]), b.i64([axis])], dtype=dt)
            pieces.append(reduce(b, reduce_op, part, [axis], True, dt))
        y = b.op("Concat", pieces, {"axis": axis}, dtype=dt)
    return y


@lowering("adaptive_avg_pool")
def _adaptive_avg(b, node, ins):
    return _adaptive(b, node, ins[0], "ReduceMean", "AveragePool", "GlobalAveragePool")


@lowering("adaptive_max_pool")
def _adaptive_max(b, node, ins):
    return _adaptive(b, node, ins[0], "ReduceMax", "MaxPool", "GlobalMaxPool")


@lowering("resize")
def _resize(b, node, ins):
    x_v = node.inputs[0]
    dt = out_of(node).dtype
    mode = node.attrs.get("mode", "nearest")
    align = bool(node.attrs.get("align_corners"))
    if mode == "nearest":  # torch: src = floor(dst * in / out)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode == "nearest-exact":  # torch: src = floor((dst + 0.5) * in / out)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
    elif mode in ("linear", "bilinear", "trilinear", "bicubic"):
        attrs = {"mode": "cubic" if mode == "bicubic" else "linear",
                 "coordinate_transformation_mode": "align_corners" if align else "half_pixel"}
        if mode == "bicubic":
            attrs["cubic_coeff_a"] = -0.75
    else:
        raise GraphoptError(f"{node.where()}: resize mode '{mode}' has no ONNX equivalent")
    size, scale = node.attrs.get("size"), node.attrs.get("scale_factor")
    n = x_v.rank - 2
    if size is not None:
        sizes = b.shape([*x_v.shape[:2], *size])
        return b.op("Resize", [ins[0], "", "", sizes], attrs, dtype=dt)
    scales = [1.0, 1.0] + [float(s) for s in per_axis(scale, n)]
    return b.op("Resize", [ins[0], "", b.const(scales, torch.float32, hint="scales")], attrs, dtype=dt)
