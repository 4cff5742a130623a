"""ONNX lowerings of patch ops: im2col as Pad + Gather, col2im as ScatterElements(add), both exact.

Both read the same table: for each window tap (i, j) and window position (y, x),
the flat index of the padded pixel it reads, (y*sh + i*dh) * Wp + (x*sw + j*dw).
im2col gathers those pixels; col2im adds each column entry back onto its pixel
and crops the padding. Gathering copies values (no products with one-hot kernels),
so every dtype, inf and NaN come out as torch computes them. The table is fixed
when the image size is: the spatial axes must be static (a dynamic batch is fine).
"""

from __future__ import annotations

import torch

from graphopt.errors import GraphoptError
from graphopt.ir.ops.patches import window_positions
from graphopt.backends.onnx.lowering import lowering
from graphopt.backends.onnx.lowerings._common import out_of


def _tap_table(node, image: list) -> tuple[torch.Tensor, list[int]]:
    """[kh * kw * L] flat indices into the padded image, tap-major; and the padded size [Hp, Wp]."""
    if not all(isinstance(d, int) for d in image):
        raise GraphoptError(f"{node.where()}: {node.op} exports to ONNX only with static spatial sizes, "
                            f"got {image}")
    (kh, kw), (dh, dw) = node.attrs["kernel"], node.attrs["dilation"]
    (ph, pw), (sh, sw) = node.attrs["padding"], node.attrs["stride"]
    oh, ow = (window_positions(L, k, d, p, s) for L, k, d, p, s in zip(image, (kh, kw), (dh, dw), (ph, pw), (sh, sw)))
    wp = image[1] + 2 * pw
    rows = (torch.arange(oh) * sh)[None, :, None] + (torch.arange(kh) * dh)[:, None, None]  # [kh, oh, 1]
    cols = (torch.arange(ow) * sw)[None, None, :] + (torch.arange(kw) * dw)[:, None, None]  # [kw, 1, ow]
    flat = rows[:, None, :, :] * wp + cols[None, :, :, :]  # [kh, kw, oh, ow]
    return flat.reshape(-1), [image[0] + 2 * ph, wp]


def _pads(node) -> list[int]:
    ph, pw = node.attrs["padding"]
    return [0, 0, ph, pw, 0, 0, ph, pw]


@lowering("im2col")
def _im2col(b, node, ins):
    x_v, dt = node.inputs[0], out_of(node).dtype
    table, (hp, wp) = _tap_table(node, list(x_v.shape[2:]))
    x = ins[0]
    if any(node.attrs["padding"]):
        x = b.op("Pad", [x, b.i64(_pads(node))], {"mode": "constant"}, dtype=dt)
    flat = b.op("Reshape", [x, b.i64([0, 0, hp * wp])], dtype=dt)
    taps = b.op("Gather", [flat, b.i64(table.tolist())], {"axis": 2}, dtype=dt)  # [N, C, kh*kw*L]
    return b.op("Reshape", [taps, b.i64([0, -1, int(out_of(node).shape[2])])], dtype=dt)


@lowering("col2im")
def _col2im(b, node, ins):
    x_v, out, dt = node.inputs[0], out_of(node), out_of(node).dtype
    height, width = (int(d) for d in node.attrs["output_size"])
    table, (hp, wp) = _tap_table(node, [height, width])
    channels = out.shape[1]
    if not isinstance(channels, int):
        raise GraphoptError(f"{node.where()}: col2im exports to ONNX only with a static channel count")
    updates = b.op("Reshape", [ins[0], b.i64([0, channels, len(table)])], dtype=dt)  # [N, C, kh*kw*L]
    batch = x_v.shape[0]
    index = b.op("Expand", [b.i64([[table.tolist()]]), b.shape([batch, channels, len(table)])], dtype=torch.int64)
    zeros = b.op("Expand", [b.const(0, dt), b.shape([batch, channels, hp * wp])], dtype=dt)
    summed = b.op("ScatterElements", [zeros, index, updates], {"axis": 2, "reduction": "add"}, dtype=dt)
    image = b.op("Reshape", [summed, b.i64([0, 0, hp, wp])], dtype=dt)
    ph, pw = node.attrs["padding"]
    if not (ph or pw):
        return image
    return b.op("Slice", [image, b.i64([ph, pw]), b.i64([ph + height, pw + width]), b.i64([2, 3])], dtype=dt)

