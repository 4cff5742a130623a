"""`quantize`: int8 static / dynamic and int8 / int4 weight-only quantization, with calibration, SmoothQuant
and sensitivity-guided float fallback.

The pass writes the quantized model in the QDQ form of the IR's quantization
ops (graphopt/ir/ops/quant.py): weights become int8 tensors with float scales,
activations pass through quantize -> dequantize pairs; weight-only layers
become `matmul_nbits`. Every back-end then runs the same arithmetic: the torch
back-end simulates it, ONNX Runtime fuses it into integer kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Value
from graphopt.ir.interpreter import relative_error, torch_kernel
from graphopt.ir.ops import SATURATING, has_trait
from graphopt.passmanager import Pass, PassResult, Tolerance, option, register_pass

from .calibrate import observe, outputs_on
from .observers import OBSERVERS, BeforeActivation, qparams
from .rewrite import Rewriter, activation_site, output_quantized
from .sensitivity import choose_float_layers, sensitivity
from .smooth import smooth
from .targets import WEIGHT_ONLY, Layer, find_layers


@dataclass(frozen=True)
class OutputScaledTolerance(Tolerance):
    """Bounded, with atol a fraction of each output's largest magnitude (Verify reads `relative_atol`).

    A quantized network's error is a fraction of its output range, whatever that range is;
    an absolute atol would be loose for small logits and strict for large ones.
    """

    relative_atol: bool = True

    def __str__(self) -> str:
        return f"bounded(rtol={self.rtol}, atol={self.atol} x max|output|)"


@dataclass
class QuantizeReport:
    """What `quantize` did: the layers quantized, those left float and why, errors and sensitivities."""

    mode: str
    quantized: list[str] = field(default_factory=list)
    left_float: dict[str, str] = field(default_factory=dict)  # node -> why
    smoothed: list[str] = field(default_factory=list)  # norms and gated MLPs' `up` rescaled by SmoothQuant
    sensitivity: dict[str, float] = field(default_factory=dict)  # node -> output error with only it quantized
    error: float | None = None  # relative output error of the quantized graph on the calibration batches
    batches: int = 0

    def summary(self) -> str:
        text = (f"quantize ({self.mode}): {len(self.quantized)} layers quantized, {len(self.left_float)} left float, "
                f"{self.batches} calibration batches")
        if self.smoothed:
            text += f", {len(self.smoothed)} linear inputs smoothed"
        if self.error is not None:
            text += f", relative output error {self.error:.4f}"
        return text

    def __str__(self) -> str:
        lines = [self.summary()]
        worst = sorted(self.sensitivity.items(), key=lambda kv: -kv[1])
        lines += [f"  sensitivity {name}: {err:.4f}" for name, err in worst]
        lines += [f"  float {name}: {why}" for name, why in self.left_float.items()]
        return "\n".join(lines)


# The relative output error each mode may cost on the calibration data before its most sensitive layers stay
# float: about 0.993 cosine similarity for the int8 modes, 0.984 for int4. Static int8's per-tensor activation
# ranges are what can cost more than that: on the zoo most convnets stay within 0.03-0.10, while EfficientNet,
# DenseNet and RegNet (SiLU / squeeze-excitation, concatenated features) reached 0.16-0.21, as ONNX Runtime's own
# quantize_static does (tests/test_quantize.py); int4 weights cost LeViT's small linears (16-32 inputs per
# group) 0.44. The guard costs one run of the quantized graph when the error is within its bound.
DEFAULT_MAX_ERROR = {"int8": 0.12, "int8-dynamic": 0.12, "int8-weight": 0.12, "int4-weight": 0.18}


@register_pass("quantize")
class Quantize(Pass):
    """Quantize conv / linear / matmul layers to int8 (static or dynamic) or their weights to int8 / int4."""

    verify_tolerance = "bounded"

    mode: Literal["int8", "int8-dynamic", "int8-weight", "int4-weight"] = option(
        "int8", "int8: static (calibrated activations); int8-dynamic: activation scales at run time "
                "(linear/matmul); int8-weight / int4-weight: weight-only (linear/matmul)")
    observer: Literal["minmax", "percentile", "mse"] = option("minmax", "how activation ranges are calibrated")
    percentile: float = option(99.99, "percentile observer: the percentile kept (the tail beyond is clipped)")
    group_size: int = option(128, "weight-only: input features per scale (a power of two >= 16; smaller: more "
                                   "accurate, slower on ONNX Runtime)")
    skip: list[str] = option([], "node or module names (glob patterns) left float")
    smooth: float | None = option(None, "SmoothQuant migration strength alpha in (0, 1) for linear layers fed "
                                        "by a norm or a gated MLP (int8 and int8-dynamic)")
    sensitivity: bool = option(False, "report each layer's output error when only it is quantized")
    keep_float: int = option(0, "keep exactly this many of the most sensitive layers float (given, it replaces "
                                "the default max_error guard: keep_float=0 quantizes every layer)")
    max_error: float | None = option(None, "keep the most sensitive layers float until the relative output "
                                           "error on the calibration data is at most this (default: 0.12 for the "
                                           "int8 modes, 0.18 for int4-weight)")
    progress: bool = option(True, "a progress bar over calibration batches on stderr")

    def validate(self) -> None:
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise self.invalid("group_size", f"must be a power of two >= 16 (ONNX Runtime's MatMulNBits), "
                                             f"got {self.group_size}")
        if self.smooth is not None:
            if not 0.0 < self.smooth < 1.0:
                raise self.invalid("smooth", f"alpha must be in (0, 1), got {self.smooth}")
            if self.mode in WEIGHT_ONLY:
                raise self.invalid("smooth", f"smoothing moves activation outliers; mode {self.mode!r} "
                                             "leaves activations float")
        if not 50.0 < self.percentile <= 100.0:
            raise self.invalid("percentile", f"must be in (50, 100], got {self.percentile}")
        if self.keep_float < 0:
            raise self.invalid("keep_float", f"must be >= 0, got {self.keep_float}")
        if self.max_error is not None and self.max_error <= 0.0:
            raise self.invalid("max_error", f"must be > 0, got {self.max_error}")
        if self.keep_float and self.max_error is not None:
            raise self.invalid("max_error", "give keep_float or max_error, not both")

    def tolerance(self) -> Tolerance:
        # Measured on the zoo's tiny models (random weights, which amplify errors): int8 stays within ~15 % of
        # each output's largest magnitude; int4 reached 64 % on BERT's two logits. A wrong scale or axis is
        # off by the whole range or more (tests/test_quantize.py::test_verify_rejects_a_quantizer_with_a_bug).
        atol = 1.0 if self.mode == "int4-weight" else 0.2
        return OutputScaledTolerance("bounded", 0.0, atol)

    # ------------------------------------------------------------------ run
    def run(self, graph: Graph, analyses) -> PassResult:
        report = QuantizeReport(self.mode)
        layers, report.left_float = find_layers(graph, self.mode, self.skip)
        if not layers:
            return PassResult(graph, modified=False, stats=report)
        _check_finite(layers)
        batches = analyses.context.calibration_batches()
        report.batches = len(batches)
        if self.smooth is not None:
            report.smoothed = smooth(graph, layers, batches, self.smooth, progress=self.progress)
        ranges = self._calibrate(graph, layers, batches) if self.mode == "int8" else {}
        names = [layer.name for layer in layers]
        keep_float, max_error = self._float_policy()
        wants_errors = self.sensitivity or keep_float or max_error is not None
        if wants_errors:
            reference = outputs_on(graph, batches)

            def error_of(chosen: list[str]) -> float:
                return relative_error(reference, outputs_on(self._quantized_copy(graph, chosen, ranges), batches))

            # the per-layer sensitivities (one run per layer) only when asked for or when all layers are too many;
            # the guard's one run, when within its bound, is the report's error too
            whole = None if self.sensitivity or keep_float else error_of(names)
            if whole is None or whole > max_error:
                whole = None
                report.sensitivity = sensitivity(names, error_of, progress=self.progress)
                floats = choose_float_layers(report.sensitivity, error_of, keep_float=keep_float,
                                             max_error=max_error)
                for name in floats:
                    report.left_float[name] = (f"sensitive (error {report.sensitivity[name]:.4f} when quantized "
                                               f"alone{'' if max_error is None else f'; bound {max_error}'})")
                names = [n for n in names if n not in floats]
        self._apply(graph, names, ranges)
        report.quantized = names
        if wants_errors:
            report.error = whole if whole is not None else relative_error(reference, outputs_on(graph, batches))
        return PassResult(graph, modified=bool(names) or bool(report.smoothed), stats=report)

    def _float_policy(self) -> tuple[int, float | None]:
        """(keep_float, max_error) in force: what was given, else the mode's default guard."""
        if "keep_float" in self._given or "max_error" in self._given or self.keep_float or self.max_error is not None:
            return self.keep_float, self.max_error
        return 0, DEFAULT_MAX_ERROR[self.mode]

    def _calibrate(self, graph: Graph, layers: list[Layer], batches: list[tuple]) -> dict[str, tuple[float, int]]:
        """(scale, zero point) of every activation static int8 quantizes."""
        sites = {}
        for layer in layers:
            sites[layer.node.inputs[0].name] = layer.node.inputs[0]
            if output_quantized(layer.node):
                site = activation_site(layer.node.outputs[0])
                sites[site.name] = site
        make = OBSERVERS[self.observer]
        observers = {}
        for name, value in sites.items():
            observer = make(self.percentile) if self.observer == "percentile" else make()
            activation = _sole_saturating_reader(value)
            observers[name] = observer if activation is None else BeforeActivation(observer, activation)
        observe(graph, batches, {n: o.observe for n, o in observers.items()}, progress=self.progress)
        return {name: qparams(*o.range()) for name, o in observers.items()}

    def _apply(self, graph: Graph, names: list[str], ranges: dict[str, tuple[float, int]]) -> None:
        """Quantize the layers called `names` in `graph` (in place)."""
        wanted = set(names)
        layers = [layer for layer in find_layers(graph, self.mode, self.skip)[0] if layer.name in wanted]
        rewriter = Rewriter(graph, ranges)
        bits = 4 if self.mode == "int4-weight" else 8
        for layer in layers:
            if self.mode == "int8":
                rewriter.static(layer)
            elif self.mode == "int8-dynamic":
                rewriter.dynamic(layer)
            else:
                rewriter.weight_only(layer, bits, min(self.group_size, _block_for(layer)))

    def _quantized_copy(self, graph: Graph, names: list[str], ranges) -> Graph:
        copy = graph.clone()
        self._apply(copy, names, ranges)
        return copy


def _sole_saturating_reader(value: Value):
    """`f(x)` of the saturating activation that alone reads `value` (a SiLU after a conv), else None."""
    users = value.users
    if len(users) != 1 or len(value.uses()) != 1 or value.is_graph_output() or not has_trait(users[0].op, SATURATING):
        return None
    node = users[0]
    kernel = torch_kernel(node)
    return lambda x: kernel(x, **node.attrs)


def _block_for(layer: Layer) -> int:
    """The largest power of two >= 16 not above the layer's input features (small layers get small blocks)."""
    weight = layer.node.inputs[layer.weight_index]
    k = int(weight.shape[1] if layer.node.op == "linear" else weight.shape[0])
    return max(16, 1 << int(math.log2(max(k, 1))))


def _check_finite(layers: list[Layer]) -> None:
    """Refuse weights that are not finite: their scales would be too (a broken model, not a quantized one)."""
    for layer in layers:
        weight = layer.node.inputs[layer.weight_index]
        if not torch.isfinite(weight.data).all():
            raise GraphoptError(f"weight %{weight.name} of {layer.node.where()} has non-finite values; "
                                "quantization needs finite weights")
