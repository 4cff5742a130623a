"""graphopt.train: train once with GroupSparseOptimizer, then remove exactly the zero units (prune_zero_groups)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from docblocks import run_blocks
from graphopt import models_zoo
from graphopt.errors import GraphoptError
from graphopt.train import GroupSparseOptimizer, Schedule, prune_zero_groups, unit_groups


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallResNet(nn.Module):
    """conv-bn-relu stem, one residual block, a grouped conv, global pooling, a linear head.

    Two prunable groups: the block's hidden channels, and the residual stream coupled with the
    grouped conv (4 conv groups, each of 4 stream channels and 6 outputs, removed whole).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)  # 4 conv groups as units of 6 channels
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.head(F.relu(self.grouped(x)).mean(dim=(2, 3)))


def _data(n: int = 64, shape: tuple = (3, 8, 8), classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
           batch: int = 16, scheduler: bool = False) -> None:
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if scheduler else None
    model.train()
    for step in range(steps):
        start = (step * batch) % len(x)
        optimizer.zero_grad()
        F.cross_entropy(model(x[start:start + batch]), y[start:start + batch]).backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    model.eval()


@pytest.fixture(scope="module")
def trained():
    """SmallResNet trained 40 steps by GroupSparseOptimizer(AdamW) at 50%, with a cosine learning-rate schedule."""
    torch.manual_seed(0)
    model = SmallResNet()
    x, y = _data()
    groups = unit_groups(model, (x[:2],))
    optimizer = GroupSparseOptimizer(torch.optim.AdamW(model.parameters(), lr=3e-3), groups,
                                     target_sparsity=0.5, total_steps=40)
    _train(model, optimizer, x, y, 40, scheduler=True)
    return model, groups, optimizer, x


def test_the_target_share_of_every_group_is_exactly_zero(trained):
    model, groups, optimizer, _ = trained
    assert {g.group.kind for g in groups} == {"channels", "conv groups"}
    for g, zero, redundant in zip(groups, optimizer.zero, optimizer.redundant):
        assert int(zero.sum()) == math.floor(0.5 * g.num_units)  # 8 of 16 channels, 2 of 4 conv groups
        assert torch.equal(zero, redundant)
        for s in g.slices:  # zero units are exactly 0.0 in every producer, the others are not
            norms = s.reduce(s.param.detach().abs(), g.num_units)
            assert torch.all(norms[zero] == 0) and torch.all(norms[~zero] > 0), s.name
    assert optimizer.sparsity == optimizer.target_units / groups.num_units == 0.5
    assert "sparse training" in optimizer.summary()


def test_groups_that_are_not_prunable_are_left_alone(trained):
    model, groups, _, _ = trained
    assert any("reaches graph output" in reason for reason in groups.skipped)
    assert all(not s.name.startswith("head.") for g in groups for s in g.slices)
    assert torch.all(model.head.weight.detach().abs().sum(dim=1) > 0)  # the classes stay whole
    assert torch.all(model.stem[0].weight.detach().abs().sum(dim=(0, 2, 3)) > 0)  # so do the input colours


def test_removing_the_zero_units_equals_the_zeroed_model(trained):
    model, groups, _, x = trained
    pruned = prune_zero_groups(model, (x[:2],))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pruned.torch_module()(x), expected, rtol=1e-5, atol=1e-5)
    assert pruned.report.params_after < 0.5 * pruned.report.params_before
    # 2 of the 4 conv groups went whole: 12 of 24 outputs, each group still reading its 4 input channels
    assert pruned.torch_module().grouped.weight.shape == (12, 4, 3, 3)
    # like any prune, the result carries the recipe that rebuilds it from the original model
    recipe = pruned.recipe
    assert recipe is not None and len(recipe.steps) == 1 and len(recipe.steps[0].groups) == len(groups)
    rebuilt = graphopt.optimize(model, (x[:2],), recipe=recipe)
    torch.testing.assert_close(rebuilt(x), pruned(x), rtol=0, atol=0)
    # optimize options pass through; the recipe is written on the graph traced the same way (static here)
    static = prune_zero_groups(model, (x[:2],), dynamic=None)
    torch.testing.assert_close(static(x[:2]), pruned(x[:2]), rtol=1e-6, atol=1e-6)


def test_a_transformer_loses_whole_heads():
    torch.manual_seed(0)
    model, inputs = models_zoo.get("vit", "tiny")  # 2 blocks of 4 heads, MLP hidden 256, LayerNorm residual stream
    groups = unit_groups(model, inputs)
    kinds = sorted(g.group.kind for g in groups)
    assert kinds == ["channels", "channels", "heads", "heads"]
    assert any("not mask-exact" in reason for reason in groups.skipped)  # the stream through LayerNorm
    x = torch.randn(8, 3, 32, 32)
    target = torch.randn(8, 10)
    optimizer = GroupSparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), groups,
                                     target_sparsity=0.5, total_steps=12, periods=2)
    model.train()
    for step in range(12):
        optimizer.zero_grad()
        F.mse_loss(model(x[step % 2 * 4:][:4]), target[step % 2 * 4:][:4]).backward()
        optimizer.step()
    model.eval()
    assert optimizer.sparsity == 0.5
    pruned = prune_zero_groups(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    module = pruned.torch_module()
    for block in (0, 1):
        assert module.get_parameter(f"blocks.{block}.attn.qkv.weight").shape == (3 * 2 * 16, 64)  # 2 heads of 16
        assert module.get_parameter(f"blocks.{block}.mlp.fc1.weight").shape == (128, 64)


@pytest.mark.parametrize("name", ["densenet", "mobilenet_v2", "llama"])
def test_zoo_models_prune_to_their_zeroed_selves(name):
    """Concatenated features (a group over several producers), depthwise convs, GQA heads with RMSNorm."""
    torch.manual_seed(0)
    model, inputs = models_zoo.get(name, "tiny")
    groups = unit_groups(model, inputs)
    optimizer = GroupSparseOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), groups, target_sparsity=0.5,
                                     total_steps=6, periods=2)
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        output = model(*inputs)
        (output.float() ** 2).mean().backward()
        optimizer.step()
    model.eval()
    assert optimizer.sparsity == optimizer.target_units / groups.num_units
    pruned = prune_zero_groups(model, inputs)
    assert pruned.report.params_after < pruned.report.params_before
    with torch.no_grad():
        expected = model(*inputs)
        torch.testing.assert_close(pruned(*inputs), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_the_torch_module_of_an_optimized_model_trains_sparse_too():
    torch.manual_seed(1)
    x, y = _data(32)
    module = graphopt.optimize(SmallResNet(), (x[:2],)).torch_module()  # an fx GraphModule, BatchNorms kept
    optimizer = GroupSparseOptimizer(torch.optim.SGD(module.parameters(), lr=0.05), unit_groups(module, (x[:2],)),
                                     target_sparsity=0.25, epochs=2, steps_per_epoch=10)
    _train(module, optimizer, x, y, 20)
    assert optimizer.sparsity == 0.25
    pruned = prune_zero_groups(module, (x[:2],))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), module(x), rtol=1e-5, atol=1e-5)
    assert pruned.report.params_after < pruned.report.params_before


def test_global_scope_ranks_units_across_groups():
    torch.manual_seed(3)
    x, y = _data(32)
    model = SmallResNet()
    groups = unit_groups(model, (x[:2],))  # 4 conv groups and 16 channels: 10 of the 20 units go
    optimizer = GroupSparseOptimizer(torch.optim.AdamW(model.parameters(), lr=3e-3), groups, target_sparsity=0.5,
                                     total_steps=20, periods=2, scope="global", min_keep=0.25)
    _train(model, optimizer, x, y, 20)
    zero = [int(z.sum()) for z in optimizer.zero]
    assert sum(zero) == optimizer.target_units == 10
    assert all(z <= g.num_units - max(1, math.ceil(0.25 * g.num_units)) for z, g in zip(zero, groups))
    pruned = prune_zero_groups(model, (x[:2],))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_the_schedule_is_fractions_of_the_run():
    schedule = Schedule.of(100)
    assert (schedule.warmup, schedule.period_steps, schedule.pruned_by) == (10, 10, 60)
    assert [schedule.period_at(s) for s in (9, 10, 59, 60)] == [None, 0, 4, None]
    assert Schedule.of(None, epochs=4, steps_per_epoch=25) == schedule


def test_a_checkpoint_resumes_the_run_exactly():
    """Stopped mid-pruning and resumed from model + optimizer state dicts, the run ends bit for bit the same."""
    x, y = _data(32)

    def start() -> tuple[nn.Module, GroupSparseOptimizer]:
        torch.manual_seed(2)
        model = SmallResNet()
        groups = unit_groups(model, (x[:2],))
        return model, GroupSparseOptimizer(torch.optim.AdamW(model.parameters(), lr=3e-3), groups,
                                           target_sparsity=0.5, total_steps=20, periods=2)

    straight, optimizer = start()
    _train(straight, optimizer, x, y, 20)
    stopped, optimizer = start()
    _train(stopped, optimizer, x, y, 7)  # in the first pruning period
    model_state, optimizer_state = stopped.state_dict(), optimizer.state_dict()
    resumed, optimizer = start()
    resumed.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    assert optimizer.step_count == 7
    for step in range(7, 20):  # _train's batches, from step 7 on
        start_at = (step * 16) % len(x)
        resumed.train()
        optimizer.zero_grad()
        F.cross_entropy(resumed(x[start_at:start_at + 16]), y[start_at:start_at + 16]).backward()
        optimizer.step()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert optimizer.sparsity == 0.5


@pytest.mark.parametrize("options, match", [
    ({"target_sparsity": 0.0}, "target_sparsity"),
    ({"target_sparsity": 1.0}, "target_sparsity"),
    ({"target_sparsity": 0.01}, "removes no unit"),
    ({"total_steps": None}, "total_steps"),
    ({"total_steps": 3}, "too short"),
    ({"warmup": 1.0}, "warmup"),
    ({"scope": "layer"}, "scope"),
    ({"scope": "global", "min_keep": 1.0}, "min_keep"),
])
def test_bad_options_are_named(trained, options, match):
    model, groups, _, _ = trained
    arguments = {"target_sparsity": 0.5, "total_steps": 40, **options}
    with pytest.raises(GraphoptError, match=match):
        GroupSparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), groups, **arguments)


def test_bad_models_and_optimizers_are_named(trained):
    model, groups, _, x = trained
    with pytest.raises(GraphoptError, match="no prunable, mask-exact channel group"):
        unit_groups(nn.Sequential(nn.Linear(4, 3)), (torch.randn(2, 4),))
    with pytest.raises(GraphoptError, match="does not train"):
        GroupSparseOptimizer(torch.optim.SGD(model.head.parameters(), lr=0.1), groups, total_steps=40)
    with pytest.raises(GraphoptError, match="wraps a torch optimizer"):
        GroupSparseOptimizer(object(), groups, total_steps=40)
    with pytest.raises(GraphoptError, match="no exactly-zero unit"):
        prune_zero_groups(SmallResNet().eval(), (x[:2],))
    with pytest.raises(GraphoptError, match="recipe= cannot be given"):
        prune_zero_groups(model, (x[:2],), recipe="r.json")


def test_docs_train_once_md_runs(capsys):
    run_blocks("docs/train_once.md", minimum=2)
    assert "48/96 units exactly zero" in capsys.readouterr().out
