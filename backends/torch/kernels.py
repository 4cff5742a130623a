"""PyTorch implementations of the canonical ops, called by the generated module's forward.

Each kernel takes the node's inputs positionally and its attributes as keywords.
Ops whose behaviour differs between training and inference (batch_norm,
dropout) also receive `training`, so a module returned by `to_module` can be
fine-tuned with `module.train()`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

KERNELS: dict[str, Callable[..., Any]] = {}
TRAINING_AWARE = frozenset({"batch_norm", "dropout"})
CREATION_OPS = frozenset({"full", "arange"})  # also receive `device`: the inputs' device


def kernel(*names: str):
    def wrap(fn):
        for name in names:
            KERNELS[name] = fn
        return fn

    return wrap


def register_kernel(name: str, fn: Callable[..., Any]) -> None:
    """Give a user-registered op a torch implementation."""
    KERNELS[name] = fn


_SIMPLE = {
    "relu": torch.relu, "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid, "mish": F.mish, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "neg": torch.neg, "abs": torch.abs, "erf": torch.erf, "sin": torch.sin, "cos": torch.cos,
    "reciprocal": torch.reciprocal, "logical_not": torch.logical_not,
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "pow": torch.pow, "maximum": torch.maximum,
    "minimum": torch.minimum, "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt,
    "ge": torch.ge, "logical_and": torch.logical_and, "logical_or": torch.logical_or, "where": torch.where,
    "matmul": torch.matmul,
}
KERNELS.update(_SIMPLE)


@kernel("identity")
def identity(x):
    return x


@kernel("gelu")
def gelu(x, *, approximate="none"):
    return F.gelu(x, approximate=approximate)


@kernel("hardtanh")
def hardtanh(x, *, min_val, max_val):
    return F.hardtanh(x, min_val, max_val)


@kernel("leaky_relu")
def leaky_relu(x, *, negative_slope):
    return F.leaky_relu(x, negative_slope)


@kernel("elu")
def elu(x, *, alpha):
    return F.elu(x, alpha)


@kernel("softplus")
def softplus(x, *, beta, threshold):
    return F.softplus(x, beta, threshold)


@kernel("clamp")
def clamp(x, *, min=None, max=None):  # noqa: A002 - torch's names
    return torch.clamp(x, min, max)


@kernel("dropout")
def dropout(x, *, p, training=False):
    return F.dropout(x, p, training)


@kernel("triu")
def triu(x, *, diagonal=0):
    return torch.triu(x, diagonal)


@kernel("tril")
def tril(x, *, diagonal=0):
    return torch.tril(x, diagonal)


@kernel("cumsum")
def cumsum(x, *, axis):
    return torch.cumsum(x, axis)


@kernel("div")
def div(a, b, *, rounding_mode=None):
    return torch.div(a, b, rounding_mode=rounding_mode)


@kernel("cast")
def cast(x, *, dtype):
    return x.to(dtype)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@kernel("conv")
def conv(x, weight, bias=None, *, stride, padding, dilation, groups):
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


@kernel("conv_transpose")
def conv_transpose(x, weight, bias=None, *, stride, padding, output_padding, dilation, groups):
    return _CONV_T[weight.dim() - 2](x, weight, bias, stride, padding, output_padding, groups, dilation)


@kernel("linear")
def linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


@kernel("einsum")
def einsum(*operands, equation):
    return torch.einsum(equation, *operands)


@kernel("embedding")
def embedding(indices, weight, *, padding_idx=None):
    return F.embedding(indices, weight, padding_idx)


@kernel("sdpa")
def sdpa(q, k, v, mask=None, *, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal, scale=scale, enable_gqa=enable_gqa)


@kernel("batch_norm")
def batch_norm(x, weight, bias, running_mean, running_var, *, eps, momentum=0.1, training=False):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


@kernel("layer_norm")
def layer_norm(x, weight=None, bias=None, *, normalized_shape, eps):
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


@kernel("group_norm")
def group_norm(x, weight=None, bias=None, *, num_groups, eps):
    return F.group_norm(x, num_groups, weight, bias, eps)


@kernel("rms_norm")
def rms_norm(x, weight=None, *, normalized_shape, eps=None):
    return F.rms_norm(x, normalized_shape, weight, eps)


@kernel("softmax")
def softmax(x, *, axis):
    return torch.softmax(x, axis)


@kernel("log_softmax")
def log_softmax(x, *, axis):
    return torch.log_softmax(x, axis)


@kernel("reshape")
def reshape(x, *, shape):
    return x.reshape(shape)


@kernel("permute")
def permute(x, *, dims):
    return x.permute(dims)


@kernel("expand")
def expand(x, *, shape):
    return x.expand(shape)


@kernel("concat")
def concat(*xs, axis):
    return torch.cat(xs, axis)


@kernel("split")
def split(x, *, sizes, axis):
    return tuple(torch.split(x, list(sizes), axis))


@kernel("slice")
def slice_(x, *, axis, start, end, step=1):
    return torch.narrow(x, axis, start, end - start) if step == 1 else x[(slice(None),) * axis + (slice(start, end, step),)]


@kernel("select")
def select(x, *, axis, index):
    return torch.select(x, axis, index)


@kernel("index_select")
def index_select(x, indices, *, axis):
    return torch.index_select(x, axis, indices)


@kernel("pad")
def pad(x, *, pad, mode="constant", value=0.0):
    return F.pad(x, pad, mode, value if mode == "constant" else None)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


@kernel("max_pool")
def max_pool(x, *, kernel, stride, padding, dilation, ceil_mode):
    return _MAX_POOL[len(kernel)](x, kernel, stride, padding, dilation, ceil_mode)


@kernel("avg_pool")
def avg_pool(x, *, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    if len(kernel) == 1:
        return F.avg_pool1d(x, kernel, stride, padding, ceil_mode, count_include_pad)
    return _AVG_POOL[len(kernel)](x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


@kernel("adaptive_avg_pool")
def adaptive_avg_pool(x, *, output_size):
    return _ADAPTIVE_AVG[len(output_size)](x, output_size)


@kernel("adaptive_max_pool")
def adaptive_max_pool(x, *, output_size):
    return _ADAPTIVE_MAX[len(output_size)](x, output_size)


@kernel("resize")
def resize(x, *, size=None, scale_factor=None, mode="nearest", align_corners=None):
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


def _reduction(fn):
    def run(x, *, axes=None, keepdim=False, **extra):
        if axes is None:
            out = fn(x, **extra)
            return out.reshape((1,) * x.dim()) if keepdim else out
        return fn(x, dim=axes, keepdim=keepdim, **extra)

    run.__name__ = fn.__name__
    return run


KERNELS["mean"] = _reduction(torch.mean)
KERNELS["sum"] = _reduction(torch.sum)
KERNELS["amax"] = _reduction(torch.amax)
KERNELS["amin"] = _reduction(torch.amin)
KERNELS["var"] = _reduction(torch.var)


@kernel("prod")
def prod(x, *, axes=None, keepdim=False):
    if axes is None:
        out = torch.prod(x)
        return out.reshape((1,) * x.dim()) if keepdim else out
    for axis in sorted(axes, reverse=True):  # descending, so earlier axes keep their index
        x = torch.prod(x, axis, keepdim=keepdim)
    return x


def _bool_reduce(fn):
    def run(x, *, axes=None, keepdim=False):
        if axes is None:
            out = fn(x)
            return out.reshape((1,) * x.dim()) if keepdim else out
        return fn(x, dim=tuple(axes), keepdim=keepdim)

    run.__name__ = fn.__name__
    return run


KERNELS["any"] = _bool_reduce(torch.any)
KERNELS["all"] = _bool_reduce(torch.all)


def _arg_reduce(fn):
    def run(x, *, axes=None, keepdim=False):
        if axes is None:
            return fn(x)
        return fn(x, dim=axes[0], keepdim=keepdim)

    run.__name__ = fn.__name__
    return run


KERNELS["argmax"] = _arg_reduce(torch.argmax)
KERNELS["argmin"] = _arg_reduce(torch.argmin)


@kernel("full")
def full(*, shape, value, dtype, device=None):
    return torch.full(shape, value, dtype=dtype, device=device)


@kernel("arange")
def arange(*, start, end, step, dtype, device=None):
    return torch.arange(start, end, step, dtype=dtype, device=device)
