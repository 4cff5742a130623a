"""The graph edits of quantization: integer weights, quantize -> dequantize pairs on activations, and
weight-only layers as `matmul_nbits`.

Weights are symmetric per output channel (zero point 0, values in [-127, 127]
for int8, [-7, 7] for int4): the integer kernels of ONNX Runtime expect signed
weights with a zero zero point, and per-channel scales keep a channel of small
weights from being rounded away by a channel of large ones. Activations are
asymmetric uint8 per tensor, from calibration. A conv's output is quantized after the
ReLU / ReLU6 that follows it, because that is the pattern ONNX Runtime fuses
into one integer conv (Conv -> Relu -> QuantizeLinear, the Relu dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from graphopt.ir.graph import Graph, Node, Value

from .targets import Layer, gemm_like

FUSED_ACTIVATIONS = ("relu", "relu6", "hardtanh", "clamp")


def symmetric(weight: torch.Tensor, axis: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float scale per `axis` entry): weight ~= values * scale."""
    top = (1 << (bits - 1)) - 1
    dims = [d for d in range(weight.dim()) if d != axis]
    absmax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax)).float()
    shape = [1] * weight.dim()
    shape[axis] = -1
    q = torch.clamp(torch.round(weight.detach().float() / scale.reshape(shape)), -top, top).to(torch.int8)
    return q, scale.to(weight.dtype)


def blockwise(weight: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [N, K] as int8 values [N, K] and one scale per `block` inputs [N, ceil(K / block)]."""
    n, k = weight.shape
    blocks = math.ceil(k / block)
    padded = torch.zeros(n, blocks * block, dtype=torch.float32)
    padded[:, :k] = weight.detach().float()
    rows = padded.reshape(n * blocks, block)
    q, scale = symmetric(rows, 0, bits)
    if bits < 8:  # few levels: clipping each block's range a little often lowers its rounding error
        q, scale = _clip_search(rows, q, scale.float(), bits)
    return q.reshape(n, blocks * block)[:, :k].contiguous(), scale.reshape(n, blocks).to(weight.dtype)


def _clip_search(rows: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bits: int):
    """Per row, the scale among 100 %..70 % of the absmax one with the least squared error."""
    top = (1 << (bits - 1)) - 1
    best_error = ((q.float() * scale[:, None] - rows) ** 2).sum(1)
    for shrink in (0.95, 0.9, 0.85, 0.8, 0.75, 0.7):
        s = scale * shrink
        cand = torch.clamp(torch.round(rows / s[:, None]), -top, top)
        error = ((cand * s[:, None] - rows) ** 2).sum(1)
        better = error < best_error
        q = torch.where(better[:, None], cand.to(torch.int8), q)
        scale = torch.where(better, s, scale)
        best_error = torch.minimum(error, best_error)
    return q, scale


def output_quantized(node: Node) -> bool:
    """Whether static int8 quantizes the layer's output too: ONNX Runtime's integer conv and Gemm need a
    quantize node after them (a 2-d linear with a bias runs as Gemm); a matmul gets MatMulIntegerToFloat
    without. Without it ONNX Runtime runs a float Gemm that dequantizes its weight on every call: 3.4 of
    MobileNetV2's 9 ms at batch 1."""
    return node.op == "conv" or gemm_like(node)


def activation_site(value: Value) -> Value:
    """Where the quantize node of a layer's output goes: after a sole following ReLU/ReLU6, else the output."""
    users = value.users
    if len(users) == 1 and users[0].op in FUSED_ACTIVATIONS and len(value.uses()) == 1 and not value.is_graph_output():
        return users[0].outputs[0]
    return value


@dataclass
class Rewriter:
    """Applies quantization to one graph; activations quantized once each, however many layers read them."""

    graph: Graph
    ranges: dict[str, tuple[float, int]] = field(default_factory=dict)  # value name -> (scale, zero point)
    _dequantized: dict[int, Value] = field(default_factory=dict)  # id(original value) -> its dequantized value

    # ------------------------------------------------------------ helpers
    def _const(self, name: str, tensor: torch.Tensor, kind: str = "const") -> Value:
        return self.graph.add_weight(name, tensor, kind=kind)

    def _anchor(self, value: Value) -> dict:
        """Insert right after the producer (before the first reader for inputs and weights)."""
        if value.producer is not None:
            return {"after": value.producer}
        return {"before": next(n for n in self.graph.nodes if any(v is value for v in n.inputs))}

    def _redirect(self, value: Value, new: Value, keep: Node) -> None:
        """Every node reading `value` except `keep` (the quantize node) reads `new`; a graph output stays float."""
        for node, i in value.uses():
            if node is not keep:
                node.set_input(i, new)

    # ------------------------------------------------------------ activations
    def quantize_activation(self, value: Value, *, output: bool = False) -> Value:
        """Q -> DQ on `value` with its calibrated parameters; every reader then reads the DQ output (and with
        `output`, the graph returns it)."""
        if id(value) in self._dequantized:
            return self._dequantized[id(value)]
        if value.producer is not None and value.producer.op == "dequantize_linear":
            return value
        scale, zero = self.ranges[value.name]
        s = self._const(f"{value.name}.scale", torch.tensor(scale, dtype=value.dtype))
        z = self._const(f"{value.name}.zero_point", torch.tensor(zero, dtype=torch.uint8))
        meta = dict(value.producer.meta) if value.producer is not None else {}
        q = self.graph.create_node("quantize_linear", [value, s, z], {"axis": 1},
                                   name=f"{value.name}.quantize", meta=meta, **self._anchor(value))
        dq = self.graph.create_node("dequantize_linear", [q.output, s, z], {"axis": 1, "block_size": 0},
                                    name=f"{value.name}.dequantize", after=q, meta=meta)
        self._redirect(value, dq.output, keep=q)
        if output:
            self.graph.outputs = [dq.output if v is value else v for v in self.graph.outputs]
        self._dequantized[id(value)] = dq.output
        self._dequantized[id(dq.output)] = dq.output
        return dq.output

    def dynamic_activation(self, value: Value) -> Value:
        """dynamic_quantize_linear -> DQ on `value`: the scale is computed from each input at run time."""
        if id(value) in self._dequantized:
            return self._dequantized[id(value)]
        meta = dict(value.producer.meta) if value.producer is not None else {}
        dyn = self.graph.create_node("dynamic_quantize_linear", [value], name=f"{value.name}.quantize",
                                     meta=meta, **self._anchor(value))
        dq = self.graph.create_node("dequantize_linear", list(dyn.outputs), {"axis": 1, "block_size": 0},
                                    name=f"{value.name}.dequantize", after=dyn, meta=meta)
        self._dequantized[id(value)] = dq.output
        return dq.output

    # ------------------------------------------------------------ weights
    def quantize_weight(self, layer: Layer) -> None:
        """The layer's float weight replaced by DQ(int8 weight, per-channel scale)."""
        node, index = layer.node, layer.weight_index
        weight = node.inputs[index]
        q, scale = symmetric(weight.data, layer.channel_axis, 8)
        qv = self._const(f"{weight.name}.int8", q, kind="param")
        sv = self._const(f"{weight.name}.scale", scale, kind="param")  # float: fine-tuning may adjust it
        zv = self._const(f"{weight.name}.zero_point", torch.zeros(scale.shape, dtype=torch.int8))
        dq = self.graph.create_node("dequantize_linear", [qv, sv, zv], {"axis": layer.channel_axis, "block_size": 0},
                                    name=f"{node.name}.weight.dequantize", before=node, meta=node.meta)
        node.set_input(index, dq.output)
        self.graph.remove_weight_if_unused(weight)

    def static(self, layer: Layer) -> None:
        """int8 static: input, weight and (for convs) the output through integers."""
        node = layer.node
        node.set_input(0, self.quantize_activation(node.inputs[0]))
        self.quantize_weight(layer)
        if output_quantized(node):
            site = activation_site(node.outputs[0])
            # A conv's output that the graph returns (a U-Net's image) keeps full precision; a classifier's
            # logits are quantized, as ONNX Runtime's own quantizer does, because QGemm needs it.
            if site.name in self.ranges and (node.op == "linear" or not site.is_graph_output()):
                self.quantize_activation(site, output=node.op == "linear")

    def dynamic(self, layer: Layer) -> None:
        node = layer.node
        node.set_input(0, self.dynamic_activation(node.inputs[0]))
        self.quantize_weight(layer)

    def weight_only(self, layer: Layer, bits: int, block: int) -> None:
        """linear / matmul -> matmul_nbits with the weight in `bits` bits, one scale per `block` inputs."""
        node = layer.node
        weight = node.inputs[layer.weight_index]
        data = weight.data if node.op == "linear" else weight.data.t()
        q, scale = blockwise(data, bits, block)
        qv = self._const(f"{weight.name}.int{bits}", q, kind="param")
        qv.meta["bits"] = bits  # int8 storage of int4 values: the cost analysis counts them as 4-bit
        sv = self._const(f"{weight.name}.scale", scale, kind="param")
        bias = node.inputs[2] if node.op == "linear" and len(node.inputs) > 2 else None
        new = self.graph.create_node("matmul_nbits", [node.inputs[0], qv, sv, bias],
                                     {"bits": bits, "block_size": block}, name=node.name, before=node, meta=node.meta)
        self.graph.replace_node(node, new.output)
        self.graph.remove_weight_if_unused(weight)
