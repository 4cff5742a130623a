"""ATen converters for discrete Fourier transforms (matmuls with constant cos/sin DFT matrices) and complex numbers.

graphopt's IR has no complex dtype. An FFT's output is held while importing as a
`ComplexValue` (its real and imaginary parts, each emitted on first use), and only
`.real`, `.imag` and `view_as_real` read it, so a complex tensor never reaches the graph.
Along one axis of static size N, with C[j, k] = cos(2 pi j k / N) and S[j, k] = sin(2 pi j k / N),
a forward DFT of R + iI is (R C + I S) + i (I C - R S); over several axes the axes are taken one
after the other. FNet mixes its tokens with `torch.fft.fftn(x, dim=(1, 2)).real`, which becomes
C_s X C_h - S_s X S_h: four matmuls. The scale of `norm` ("backward", "ortho", "forward") is folded
into the matrices. A transformed axis whose size is only known at run time stops the import with
the op and the source line.

Complex rotary embeddings (Llama 4, DeepSeek-V2) build `polar(1, angles)`, multiply it with
`view_as_complex(x)` and read `view_as_real` of the product: `polar`, `view_as_complex`, complex `mul`
and layout ops on a complex tensor (`COMPLEX_CONVERTERS`) act on the two parts.
"""

from __future__ import annotations

import math

import torch

from graphopt.errors import GraphoptError
from graphopt.frontends.torch import (
    COMPLEX_CONVERTERS, ComplexValue, find_converter, op_name, register_torch_op, source_location,
)
from graphopt.frontends.torch_ops._common import as_list, cast_to, schema_arg
from graphopt.ir.graph import Value

register_complex_op = COMPLEX_CONVERTERS.decorator
_NORM_CODES = {0: "backward", 1: "ortho", 2: "forward"}  # _fft_r2c/_fft_c2c's `normalization`


def _parts(ctx, arg) -> tuple[Value, Value | None]:
    """(real, imaginary or None) of an fft input: a real tensor, or a complex one this module made."""
    found = ctx._values.get(arg) if isinstance(arg, torch.fx.Node) else None
    if isinstance(found, ComplexValue):
        return found.part(ctx, "real"), found.part(ctx, "imag")
    x = ctx.value(arg)
    if not x.dtype.is_floating_point:
        x = cast_to(ctx, x, torch.get_default_dtype())
    return x, None


def _scale(norm: str | None, n: int, forward: bool) -> float:
    norm = norm or "backward"
    if norm == "ortho":
        return 1.0 / math.sqrt(n)
    if norm not in ("backward", "forward"):
        raise GraphoptError(f"fft norm {norm!r} is not one of 'backward', 'ortho', 'forward'")
    return 1.0 / n if (norm == "forward") == forward else 1.0


def _matrices(ctx, n: int, m: int, scale: float, dtype: torch.dtype) -> tuple[Value, Value]:
    """cos and sin DFT matrices [n, m] (the first m frequencies), in float64 then cast; angles from j*k mod n.

    One pair per size, scale and dtype in the graph (FNet's layers share them).
    """
    key = ("dft", n, m, scale, dtype)
    if key in ctx._consts:
        return ctx._consts[key]
    jk = torch.outer(torch.arange(n, dtype=torch.int64), torch.arange(m, dtype=torch.int64)) % n
    angle = jk.to(torch.float64) * (2 * math.pi / n)
    cos = ctx.graph.add_const((torch.cos(angle) * scale).to(dtype), name=f"dft_cos_{n}")
    sin = ctx.graph.add_const((torch.sin(angle) * scale).to(dtype), name=f"dft_sin_{n}")
    ctx._consts[key] = (cos, sin)
    return cos, sin


def _along(ctx, x: Value, matrix: Value, axis: int) -> Value:
    """x multiplied along `axis` by matrix [n, m]: out[..., k, ...] = sum_j x[..., j, ...] matrix[j, k]."""
    last = x.rank - 1
    if axis == last:
        return ctx.emit1("matmul", [x, matrix])
    dims = [a for a in range(x.rank) if a != axis] + [axis]
    moved = ctx.emit1("matmul", [ctx.emit1("permute", [x], {"dims": dims}), matrix])
    back = [dims.index(a) for a in range(x.rank)]
    return ctx.emit1("permute", [moved], {"dims": back})


def _add(ctx, a: Value | None, b: Value | None, negate_b: bool = False) -> Value | None:
    if b is not None and negate_b:
        b = ctx.emit1("neg", [b])
    if a is None or b is None:
        return a if b is None else b
    return ctx.emit1("add", [a, b])


def _fourier(ctx, node, x_arg, axes: list[int], norm: str | None, *, forward: bool = True,
             onesided: bool = False) -> ComplexValue:
    """The DFT of the input over `axes` (onesided: the last axis keeps its n // 2 + 1 first frequencies)."""
    fx = ctx.current
    state: dict[str, tuple[Value, Value | None]] = {}

    def transform(which: str) -> Value | None:
        if "before_last" not in state:
            real, imag = _parts(ctx, x_arg)
            state["input"] = (real, imag)
            rank = real.rank
            sizes = {a % max(rank, 1): real.shape[a % max(rank, 1)] for a in axes}
            dynamic = {a: n for a, n in sizes.items() if not isinstance(n, int)}
            if dynamic:
                raise GraphoptError(
                    f"node '{fx.name}' ({fx.target}) from {source_location(fx)}: a Fourier transform over axes "
                    f"{sorted(dynamic)} of run-time size {list(dynamic.values())} cannot be written as constant DFT "
                    "matrices; trace with those axes static (dynamic=None or a mapping without them)")
            for a in [a % max(rank, 1) for a in axes[:-1]]:
                real, imag = _step(ctx, real, imag, a, sizes[a], sizes[a], norm, forward)
            state["before_last"] = (real, imag)
        real, imag = state["before_last"]
        a = axes[-1] % max(real.rank, 1)
        n = real.shape[a]
        return _step(ctx, real, imag, a, n, n // 2 + 1 if onesided else n, norm, forward, only=which)[
            0 if which == "real" else 1]

    return ComplexValue(fx, transform)


def _step(ctx, real: Value, imag: Value | None, axis: int, n: int, m: int, norm, forward: bool,
          only: str | None = None) -> tuple[Value | None, Value | None]:
    """One axis: (R + iI)(C -+ iS) = (R C +- I S) + i (I C -+ R S), the sign + for forward."""
    cos, sin = _matrices(ctx, n, m, _scale(norm, n, forward), real.dtype)
    out_real = out_imag = None
    if only in (None, "real"):
        out_real = _add(ctx, _along(ctx, real, cos, axis), None if imag is None else _along(ctx, imag, sin, axis),
                        negate_b=not forward)
    if only in (None, "imag"):
        real_sin = _along(ctx, real, sin, axis)
        if imag is None:
            out_imag = ctx.emit1("neg", [real_sin]) if forward else real_sin
        else:
            out_imag = _add(ctx, _along(ctx, imag, cos, axis), real_sin, negate_b=forward)
    return out_real, out_imag


def _signal_sizes(node, s) -> None:
    """Signal sizes other than the input's (zero-padding or trimming first) are not supported."""
    x = node.args[0].meta["val"]
    if s is None or all(v is None or v == -1 for v in as_list(s)):
        return
    raise GraphoptError(f"node '{node.name}' ({node.target}) from {source_location(node)}: a Fourier transform "
                        f"with signal sizes {list(as_list(s))} of an input {list(x.shape)} (padding or trimming "
                        "it first) is not supported; pad or slice the input before the transform")


def _rank(node) -> int:
    return node.args[0].meta["val"].dim()


@register_torch_op("aten.fft_fftn", "aten.fft_fft2", "aten.fft_rfftn", "aten.fft_rfft2")
def _fftn(ctx, node):
    name = str(node.target)
    default = None if "fftn" in name else [-2, -1]
    s = schema_arg(node, 1, "s")
    dim = schema_arg(node, 2, "dim", default)
    axes = list(range(_rank(node))) if dim is None else [int(a) for a in as_list(dim)]
    _signal_sizes(node, s)
    return _fourier(ctx, node, node.args[0], axes, schema_arg(node, 3, "norm"), onesided="rfft" in name)


@register_torch_op("aten.fft_fft", "aten.fft_rfft", "aten.fft_ifft")
def _fft(ctx, node):
    name = str(node.target)
    _signal_sizes(node, schema_arg(node, 1, "n"))
    return _fourier(ctx, node, node.args[0], [int(schema_arg(node, 2, "dim", -1))], schema_arg(node, 3, "norm"),
                    forward="ifft" not in name, onesided="rfft" in name)


@register_torch_op("aten._fft_r2c")
def _fft_r2c(ctx, node):
    dim, normalization, onesided = node.args[1], int(node.args[2]), bool(node.args[3])
    return _fourier(ctx, node, node.args[0], [int(a) for a in dim], _NORM_CODES[normalization], onesided=onesided)


@register_torch_op("aten._fft_c2c")
def _fft_c2c(ctx, node):
    dim, normalization, forward = node.args[1], int(node.args[2]), bool(node.args[3])
    norm = _NORM_CODES[normalization] if forward else {0: "forward", 1: "ortho", 2: "backward"}[normalization]
    return _fourier(ctx, node, node.args[0], [int(a) for a in dim], norm, forward=forward)


def _complex(ctx, node) -> ComplexValue | None:
    found = ctx._values.get(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
    return found if isinstance(found, ComplexValue) else None


def _zero_if_none(ctx, part: Value | None, like: Value) -> Value:
    if part is not None:
        return part
    return ctx.emit1("full", [], {"shape": list(like.shape), "value": 0.0, "dtype": like.dtype})


@register_torch_op("aten.real")
def _real(ctx, node):
    found = _complex(ctx, node)
    return ctx.value(node.args[0]) if found is None else found.part(ctx, "real")


@register_torch_op("aten.imag")
def _imag(ctx, node):
    found = _complex(ctx, node)
    if found is None:
        raise GraphoptError(f"node '{node.name}': imag of a real tensor (torch raises on it too)")
    return _zero_if_none(ctx, found.part(ctx, "imag"), found.part(ctx, "real"))


@register_torch_op("aten.view_as_real")
def _view_as_real(ctx, node):
    found = _complex(ctx, node)
    if found is None:
        raise GraphoptError(f"node '{node.name}': view_as_real of a real tensor (torch raises on it too)")
    real = found.part(ctx, "real")
    imag = _zero_if_none(ctx, found.part(ctx, "imag"), real)
    shape = list(real.shape) + [1]
    pair = [ctx.emit1("reshape", [p], {"shape": shape}) for p in (real, imag)]
    return ctx.emit1("concat", pair, {"axis": real.rank})


# ------------------------------------------------------------------ complex arithmetic and layout
# Rotary embeddings written with complex numbers (Llama 4, DeepSeek-V2): freqs_cis = polar(1, angles),
# view_as_real(view_as_complex(x.reshape(..., -1, 2)) * freqs_cis[..., None, :]). Each complex op works
# on the two parts.
@register_torch_op("aten.polar")
def _polar(ctx, node):
    magnitude, angle = ctx.value(node.args[0]), ctx.value(node.args[1])

    def make(which: str) -> Value:
        wave = ctx.emit1("cos" if which == "real" else "sin", [angle])
        return ctx.emit1("mul", [magnitude, wave])

    return ComplexValue(ctx.current, make)


@register_torch_op("aten.view_as_complex")
def _view_as_complex(ctx, node):
    x = ctx.value(node.args[0])
    return ComplexValue(ctx.current, lambda which: ctx.emit1(
        "select", [x], {"axis": x.rank - 1, "index": 0 if which == "real" else 1}))


@register_complex_op("aten.mul")
def _complex_mul(ctx, node):
    """(a + ib)(c + id) = (ac - bd) + i(ad + bc); a real factor scales both parts."""
    a, b = _operand(ctx, node.args[0]), _operand(ctx, node.args[1])

    def times(x: Value | None, y: Value | None) -> Value | None:
        return None if x is None or y is None else ctx.emit1("mul", [x, y])

    def make(which: str) -> Value | None:
        if which == "real":
            return _add(ctx, times(a[0], b[0]), times(a[1], b[1]), negate_b=True)
        return _add(ctx, times(a[0], b[1]), times(a[1], b[0]))

    return ComplexValue(ctx.current, make)


@register_complex_op("aten.add", "aten.sub")
def _complex_add(ctx, node):
    """(a + ib) +- (c + id) part by part; add's alpha scales the second operand."""
    a, b = _operand(ctx, node.args[0]), _operand(ctx, node.args[1])
    alpha = node.kwargs.get("alpha", 1)
    subtract = "sub" in str(node.target)

    def make(which: str) -> Value | None:
        i = 0 if which == "real" else 1
        second = b[i]
        if second is not None and alpha != 1:
            second = ctx.emit1("mul", [second, ctx.scalar(alpha)])
        return _add(ctx, a[i], second, negate_b=subtract)

    return ComplexValue(ctx.current, make)


def _operand(ctx, arg) -> tuple[Value | None, Value | None]:
    """(real, imaginary) of a complex tensor, a real tensor or a Python number."""
    found = ctx._values.get(arg) if isinstance(arg, torch.fx.Node) else None
    if isinstance(found, ComplexValue):
        return found.part(ctx, "real"), found.part(ctx, "imag")
    if isinstance(arg, complex):
        return ctx.scalar(arg.real), ctx.scalar(arg.imag)
    return ctx.value(arg), None


@register_complex_op("aten.unsqueeze", "aten.squeeze", "aten.view", "aten.reshape", "aten._unsafe_view",
                     "aten.flatten", "aten.slice", "aten.select", "aten.expand", "aten.permute", "aten.transpose",
                     "aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.index.Tensor",
                     "aten.index_select")
def _complex_layout(ctx, node):
    """A layout op moves the real and imaginary parts alike: the real-tensor converter on each part."""
    complex_value = ctx._values[node.args[0]]
    convert = find_converter(op_name(node.target))
    if not isinstance(complex_value, ComplexValue) or convert is None:
        raise GraphoptError(f"node '{node.name}' ({node.target}) from {source_location(node)}: only its first "
                            "argument may be complex")

    def make(which: str) -> Value | None:
        part = complex_value.part(ctx, which)
        if part is None:
            return None
        ctx._values[node.args[0]] = part
        try:
            return convert(ctx, node)
        finally:
            ctx._values[node.args[0]] = complex_value

    return ComplexValue(ctx.current, make)


@register_complex_op("aten.to", "aten._to_copy")
def _complex_to(ctx, node):
    dtype = ctx.out_dtype()
    if dtype not in (torch.complex64, torch.complex128):
        raise GraphoptError(f"node '{node.name}' ({node.target}) from {source_location(node)}: a complex tensor "
                            f"converted to {dtype} (only .real, .imag or view_as_real leave the complex numbers)")
    complex_value = ctx._values[node.args[0]]
    part_dtype = torch.float32 if dtype == torch.complex64 else torch.float64

    def make(which: str) -> Value | None:
        part = complex_value.part(ctx, which)
        return None if part is None else cast_to(ctx, part, part_dtype)

    return ComplexValue(ctx.current, make)
