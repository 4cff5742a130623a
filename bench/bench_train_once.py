"""Train once, prune exactly: GroupSparseOptimizer against train -> prune -> fine-tune, on scikit-learn's digits.

Usage: python bench/bench_train_once.py [--seeds 0 1 2] [--models cnn transformer] [--sparsity 0.5]
                                        [--scope local] [--finetune-fraction 0.25] [--threads 1]

Data and training loop are bench_prune_accuracy.py's (digits split and standardised with the seed; Adam,
cosine decay, batch 64; the seed fixes split, initialisation and data order). Two models, trained from
scratch for the same number of epochs by every method:

- cnn: bench_prune_accuracy's DigitsResNet (12 epochs, lr 3e-3);
- transformer: the 8 rows of an 8x8 image as 8 tokens (a linear embedding of each row, a learned
  position embedding), 2 pre-norm blocks of 8 heads (dim 64, head_dim 8, MLP 128), mean over tokens,
  linear (30 epochs, lr 1e-3).

Methods, at equal epochs:

- dense: plain training;
- train once: the same loop with Adam wrapped by `GroupSparseOptimizer` at `--sparsity` of every
  prunable, mask-exact group's units (`--scope global`: of all their units, ranked across groups;
  default schedule: 10% warm-up, 5 periods over 50% of the run),
  then `prune_zero_groups`. Its accuracy is reported for the sparse model and the pruned one: they
  must be equal (the largest output difference on the test set is printed too);
- train -> prune -> fine-tune: dense training for (1 - `--finetune-fraction`) of the epochs, pruning by
  magnitude with least-squares reconstruction to the MACs train-once reached (bench_prune_accuracy's
  `prune`, 512 calibration images, `round_to=1` so that the searched ratio meets those MACs closely), then fine-tuning its `torch_module()` for the remaining epochs
  (lr 1e-3).

Prints, per model, a markdown table: the median over seeds of each method's test accuracy, the
accuracies per seed, and the first seed's parameters and MACs per image (with the default local scope
every seed zeroes the same number of units per group, so they are every seed's).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune_accuracy import EXAMPLE_BATCH, Digits, DigitsResNet, accuracy, load_digits, prune, train  # noqa: E402

from graphopt.models_zoo.vit import Block  # noqa: E402
from graphopt.train import GroupSparseOptimizer, prune_zero_groups, unit_groups  # noqa: E402

RECONSTRUCTED = "magnitude (l2) + reconstruction"


class DigitsTransformer(nn.Module):
    """The rows of an 8x8 image as 8 tokens through pre-norm transformer blocks (the zoo's ViT block)."""

    def __init__(self, dim: int = 64, heads: int = 8, depth: int = 2, mlp_ratio: float = 2.0,
                 classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 8, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1, 2)) + self.pos_embed  # (N, 1, 8, 8) -> (N, 8 rows, 8 pixels)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


@dataclass(frozen=True)
class Setup:
    make: type
    epochs: int
    lr: float


MODELS = {"cnn": Setup(DigitsResNet, 12, 3e-3), "transformer": Setup(DigitsTransformer, 30, 1e-3)}


@dataclass
class Measure:
    """One method's test accuracy, parameters and MACs per image (from the optimize report)."""

    accuracy: float
    params: int
    macs: int


@dataclass
class SeedResult:
    seed: int
    rows: dict[str, Measure] = field(default_factory=dict)
    max_difference: float = 0.0  # sparse model vs pruned model, largest |logit difference| on the test set
    summary: str = ""  # GroupSparseOptimizer.summary() at the end of the run
    seconds: dict[str, float] = field(default_factory=dict)


def _measure(model: nn.Module | object, data: Digits, report) -> Measure:
    return Measure(accuracy(model, data.x_test, data.y_test), report.params_after, report.macs_after // EXAMPLE_BATCH)


def run(name: str, *, seed: int = 0, sparsity: float = 0.5, finetune_fraction: float = 0.25,
        finetune_lr: float = 1e-3, epochs: int | None = None, scope: str = "local") -> SeedResult:
    """Dense, train-once and train -> prune -> fine-tune for model `name` at one seed, all at equal epochs."""
    setup = MODELS[name]
    epochs = epochs or setup.epochs
    data = load_digits(seed)
    example = (data.x_train[:EXAMPLE_BATCH],)
    result = SeedResult(seed)

    torch.manual_seed(seed)
    dense = setup.make()
    start = time.perf_counter()
    train(dense, data, epochs, setup.lr, seed)
    result.seconds["dense"] = time.perf_counter() - start
    dense_report = _dense_report(dense, example)
    result.rows["dense"] = Measure(accuracy(dense, data.x_test, data.y_test), dense_report.params_after,
                                   dense_report.macs_after // EXAMPLE_BATCH)

    torch.manual_seed(seed)
    sparse = setup.make()
    start = time.perf_counter()
    groups = unit_groups(sparse, example)
    optimizers = []

    def wrap(adam: torch.optim.Optimizer, steps: int) -> torch.optim.Optimizer:
        optimizers.append(GroupSparseOptimizer(adam, groups, target_sparsity=sparsity, total_steps=steps,
                                               scope=scope))
        return optimizers[-1]

    train(sparse, data, epochs, setup.lr, seed, wrap=wrap)
    pruned = prune_zero_groups(sparse, example)
    result.seconds["train once"] = time.perf_counter() - start
    result.summary = optimizers[0].summary()
    result.rows["train once: sparse"] = Measure(accuracy(sparse, data.x_test, data.y_test), dense_report.params_after,
                                                dense_report.macs_after // EXAMPLE_BATCH)
    result.rows["train once: pruned"] = _measure(pruned, data, pruned.report)
    with torch.no_grad():
        result.max_difference = float((sparse(data.x_test) - pruned(data.x_test)).abs().max())

    torch.manual_seed(seed)
    baseline = setup.make()
    finetune_epochs = max(1, round(finetune_fraction * epochs))
    start = time.perf_counter()
    train(baseline, data, epochs - finetune_epochs, setup.lr, seed)
    target = pruned.report.macs_after / pruned.report.macs_before
    cut = prune(copy.deepcopy(baseline), data, RECONSTRUCTED, target_macs=target, calibration=512, round_to=1)
    result.rows["train, prune (l2 + reconstruction)"] = _measure(cut, data, cut.report)
    finetuned = train(cut.torch_module(), data, finetune_epochs, finetune_lr, seed + 1)
    result.seconds["train -> prune -> fine-tune"] = time.perf_counter() - start
    result.rows[f"... then fine-tune {finetune_epochs} epochs"] = Measure(
        accuracy(finetuned, data.x_test, data.y_test), cut.report.params_after, cut.report.macs_after // EXAMPLE_BATCH)
    return result


def _dense_report(model: nn.Module, example: tuple):
    import graphopt

    return graphopt.optimize(model, example).report


def table(name: str, results: list[SeedResult], epochs: int) -> str:
    """Markdown: per method, the median test accuracy over seeds (and each seed's), params and MACs per image."""
    seeds = ", ".join(str(r.seed) for r in results)
    dense = statistics.median(r.rows["dense"].accuracy for r in results)
    lines = [f"{name}, {epochs} epochs for every method; test accuracy (%), median of seeds {seeds}:", "",
             f"| method | median (vs dense) | seeds {seeds} | params (seed {results[0].seed}) "
             f"| MACs per image (seed {results[0].seed}) |", "|---|---|---|---|---|"]
    for method in results[0].rows:
        accs = [r.rows[method].accuracy for r in results]
        first = results[0].rows[method]
        median = statistics.median(accs)
        lines.append(f"| {method} | {median:.1f} ({median - dense:+.1f}) | {' / '.join(f'{a:.1f}' for a in accs)} | "
                     f"{first.params:,} | {first.macs:,} |")
    differences = ", ".join(f"{r.max_difference:.1e}" for r in results)
    lines += ["", f"largest |logit| difference, sparse vs pruned, on the test set per seed: {differences}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of every group's units zeroed")
    parser.add_argument("--scope", choices=["local", "global"], default="local",
                        help="GroupSparseOptimizer's scope: a share of every group, or ranked across groups")
    parser.add_argument("--finetune-fraction", type=float, default=0.25,
                        help="train -> prune -> fine-tune: the share of the epochs spent fine-tuning")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, sparsity {args.sparsity:.0%} ({args.scope}), load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in args.models:
        results = [run(name, seed=seed, sparsity=args.sparsity, finetune_fraction=args.finetune_fraction,
                       epochs=args.epochs, scope=args.scope) for seed in args.seeds]
        print()
        print(table(name, results, args.epochs or MODELS[name].epochs))
        print()
        print(f"seed {results[0].seed}, {results[0].summary}")
        print("seconds (seed {}): {}".format(results[0].seed, ", ".join(f"{k} {v:.1f}"
                                                                         for k, v in results[0].seconds.items())))


if __name__ == "__main__":
    main()
