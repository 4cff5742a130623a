"""Patch ops (im2col, col2im): sliding-window blocks of an image as columns, and columns summed back into an image.

They are F.unfold and F.fold: patch extraction in MobileViT-style blocks and
hand-written convolutions. Both keep torch's layout, channel-major columns
[N, C * kh * kw, L] with L the number of window positions, row-major.
"""

from __future__ import annotations

import torch.nn.functional as F

from graphopt.errors import ShapeError
from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir.ops._core import TensorType, in_, kernel, op

_WINDOW_ATTRS = {"kernel": "[kh, kw]", "dilation": "[dh, dw]", "padding": "[ph, pw], symmetric", "stride": "[sh, sw]"}


def window_positions(size, k: int, d: int, p: int, s: int):
    """How many places a window of `k` taps `d` apart fits along an axis of `size` padded by `p`, stride `s`."""
    return D.floordiv(size + 2 * p - d * (k - 1) - 1, s) + 1


def _input(node: Node, rank: int, layout: str):
    """The op's input, which must have `rank` axes (`layout` names them for the error)."""
    x = in_(node, 0)
    if x.rank != rank:
        raise ShapeError(f"{node.where()}: {node.op} wants a {rank}-d {layout} input, got rank {x.rank}")
    return x


def _positions(node: Node, spatial) -> list:
    a = node.attrs
    return [window_positions(L, k, d, p, s)
            for L, k, d, p, s in zip(spatial, a["kernel"], a["dilation"], a["padding"], a["stride"])]


@op("im2col", "x", attrs=_WINDOW_ATTRS, shape="[N, C, H, W] -> [N, C * kh * kw, oh * ow]", category="patches",
    doc="F.unfold: every sliding window's pixels as one column")
def _im2col(node: Node) -> list[TensorType]:
    x = _input(node, 4, "[N, C, H, W]")
    kh, kw = node.attrs["kernel"]
    oh, ow = _positions(node, x.shape[2:])
    return [((x.shape[0], x.shape[1] * kh * kw, oh * ow), x.dtype)]


@kernel("im2col")
def im2col(x, *, kernel, dilation, padding, stride):
    return F.unfold(x, kernel, dilation, padding, stride)


@op("col2im", "x", attrs={"output_size": "[H, W] of the image", **_WINDOW_ATTRS},
    shape="[N, C * kh * kw, L] -> [N, C, H, W]", category="patches",
    doc="F.fold: columns summed back into an image (overlapping windows add up)")
def _col2im(node: Node) -> list[TensorType]:
    x = _input(node, 3, "[N, C * kh * kw, L]")
    kh, kw = node.attrs["kernel"]
    cols, length = x.shape[1], x.shape[2]
    if isinstance(cols, int) and cols % (kh * kw):
        raise ShapeError(f"{node.where()}: {cols} columns are not a multiple of the window size {kh}x{kw}")
    out_size = list(node.attrs["output_size"])
    oh, ow = _positions(node, out_size)
    if isinstance(length, int) and isinstance(oh, int) and isinstance(ow, int) and length != oh * ow:
        raise ShapeError(f"{node.where()}: {length} columns given, but {oh}x{ow} windows fit {out_size}")
    return [((x.shape[0], D.floordiv(cols, kh * kw), *out_size), x.dtype)]


@kernel("col2im")
def col2im(x, *, output_size, kernel, dilation, padding, stride):
    return F.fold(x, output_size, kernel, dilation, padding, stride)
