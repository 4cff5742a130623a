"""Tracing real-looking model code into the IR and lowering it back to torch with no numeric change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt
from graphopt.backends.torch import to_module

GOLDEN = Path(__file__).parent / "golden"


class SmallNet(nn.Module):
    """Conv-BN-ReLU, a residual add, chunk gating and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)), inplace=True)
        y = y + self.conv(x)
        a, b = y.mean((2, 3)).chunk(2, dim=1)
        return self.fc(a * torch.sigmoid(b))


def test_printer_golden_text():
    torch.manual_seed(0)
    graph = graphopt.trace(SmallNet().eval(), (torch.randn(2, 3, 8, 8),))
    text = graph.format(source=True)
    golden = GOLDEN / "small_net.txt"
    assert text == golden.read_text().rstrip("\n"), f"printer output changed:\n{text}"


class UsesCumprod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumprod(self.fc(x), dim=1)


def test_unsupported_op_names_op_node_source_and_fix():
    with pytest.raises(graphopt.UnsupportedOpError) as info:
        graphopt.trace(UsesCumprod(), (torch.randn(2, 4),))
    err = info.value
    message = str(err)
    assert err.op == "aten.cumprod.default"
    assert "unsupported operator 'aten.cumprod.default' (node 'cumprod')" in message
    assert "test_frontend_torch.py:" in message and "torch.cumprod(self.fc(x), dim=1)" in message
    assert "register_torch_op('aten.cumprod.default')" in message


def test_registering_a_converter_makes_the_op_traceable():
    @graphopt.register_torch_op("aten.cumprod.default")
    def convert_cumprod(ctx, node):  # exp(cumsum(log x)) is exact enough for positive inputs
        x = ctx.value(node.args[0])
        log = ctx.emit1("log", [x])
        return ctx.emit1("exp", [ctx.emit1("cumsum", [log], {"axis": int(node.args[1])})])

    try:
        x = torch.randn(3, 4)
        graph = graphopt.trace(UsesCumprodPositive(), (x,))
        torch.testing.assert_close(to_module(graph)(x), UsesCumprodPositive()(x))
    finally:
        from graphopt.frontends.torch import CONVERTERS

        CONVERTERS.unregister("aten.cumprod.default")


def test_a_second_converter_for_a_torch_op_raises():
    from graphopt.frontends import torch_ops  # noqa: F401 - the built-in converters
    from graphopt.frontends.torch import CONVERTERS

    relu = CONVERTERS.get("aten.relu")
    with pytest.raises(graphopt.GraphoptError, match="torch converter for 'aten.relu' is already registered"):
        graphopt.register_torch_op("aten.relu")(lambda ctx, node: ctx.value(node.args[0]))
    assert CONVERTERS.get("aten.relu") is relu


class UsesCumprodPositive(nn.Module):
    def forward(self, x):
        return torch.cumprod(torch.sigmoid(x), dim=1)


class MessyBlock(nn.Module):
    """Patterns from timm / Hugging Face code: in-place ops, einsum, split, masks, SE gating, LayerScale."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))
        self.se_reduce = nn.Linear(dim, dim // 4)
        self.se_expand = nn.Linear(dim // 4, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, mask):
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm(x)).split(C, dim=-1)
        q = q.view(B, N, self.heads, -1).transpose(1, 2)
        k = k.view(B, N, self.heads, -1).transpose(1, 2)
        v = v.view(B, N, self.heads, -1).transpose(1, 2)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * (C // self.heads) ** -0.5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        attn = scores.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + self.gamma * self.proj(out)
        s = x.mean(1, keepdim=True)
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        x *= s
        x[:, 0] = x[:, 0] + 1.0
        return x, {"first": x[:, 0], "pooled": x.mean(dim=1)}


def test_messy_block_round_trips_with_structure_and_dynamic_axes():
    torch.manual_seed(0)
    model = MessyBlock().eval()
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    graph = graphopt.trace(model, (x, mask), dynamic={0: {0: "batch", 1: "seq"}, 1: {0: "batch", 1: "seq"}})
    graph.verify()
    assert graph.inputs[0].type_str() == "f32[batch,seq,16]"
    module = to_module(graph)
    out, extra = module(x, mask)
    ref_out, ref_extra = model(x, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(extra["pooled"], ref_extra["pooled"])
    x2, mask2 = torch.randn(3, 9, 16), torch.ones(3, 9, dtype=torch.long)
    torch.testing.assert_close(module(x2, mask2)[0], model(x2, mask2)[0])


def test_source_locations_name_module_and_line():
    graph = graphopt.trace(SmallNet().eval(), (torch.randn(2, 3, 8, 8),))
    conv = graph.find_nodes("conv")[0]
    assert conv.source.module == "conv"
    assert conv.source.file.endswith("test_frontend_torch.py")
    assert "self.conv(x)" in conv.source.code


def test_state_dict_names_survive_and_module_trains():
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(4, 3, 8, 8)
    module = to_module(graphopt.trace(model, (x,)))
    assert set(module.state_dict()) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(module.state_dict()[name], tensor)
    assert module.get_parameter("fc.weight").requires_grad
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    loss = module(x).pow(2).sum()
    loss.backward()
    optimizer.step()
    assert not torch.equal(module.get_parameter("fc.weight"), model.fc.weight)  # trained copy ...
    assert torch.equal(model.state_dict()["fc.weight"], model.fc.weight)  # ... original untouched
    assert not torch.equal(module.get_buffer("bn.running_mean"), model.bn.running_mean)  # BN stats updated in train()


def test_trace_restores_training_mode_and_static_option():
    model = SmallNet().train()
    graph = graphopt.trace(model, (torch.randn(2, 3, 8, 8),), dynamic=None)
    assert model.training
    assert graph.inputs[0].type_str() == "f32[2,3,8,8]"


def test_an_export_failure_names_the_models_source_line():
    class NeedsNumpy(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # no tensor-to-numpy under torch.export

    with pytest.raises(graphopt.GraphoptError, match=r"could not trace NeedsNumpy \(at .*test_frontend_torch.py:\d+: "
                                            r"return torch.from_numpy\(x.numpy\(\) \* 2\)"):
        graphopt.trace(NeedsNumpy(), (torch.randn(2, 3),), dynamic=None)


def test_a_size_computed_from_tensor_values_stops_the_trace_at_its_node():
    """An unbacked size (u0) could not be bound at run time: the trace names the node that makes it."""

    class ValueSized(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(16, 4))

        def forward(self, x, length):
            n = length.item()  # a length read from the data
            torch._check_is_size(n)
            torch._check(n <= 16)
            return self.table[:n].sum(0) + x

    with pytest.raises(graphopt.GraphoptError, match=r"makes a tensor of size \[u\d+, 4\].*computed from tensor values"):
        graphopt.trace(ValueSized(), (torch.randn(2, 4), torch.tensor(5)))
