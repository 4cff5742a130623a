"""Accuracy of structured pruning on real data: a residual CNN on scikit-learn's digits, pruned to 50% of its MACs.

Usage: python bench/bench_prune_accuracy.py [--seeds 0 1 2] [--epochs 12] [--finetune-epochs 2]
                                            [--calibration 512] [--target-macs 0.5] [--threads 1]

Data: scikit-learn's bundled digits (1,797 8x8 grey images, 10 classes), split stratified into
training and held-out test images (`--test-size`, default 25%: 1,347 / 450) with the seed, and
standardised with the training images' mean and standard deviation. Model: a residual CNN (stem
conv 1->32, a residual block at 32 channels, a stride-2 block to 64 channels with a 1x1
projection, a residual block at 64 channels, global average pooling, linear; batch norm and
ReLU throughout), trained with Adam for `--epochs` epochs (cosine decay, batch 64). The seed
fixes the split, the initialisation and the data order.

The trained model is pruned by `graphopt.optimize(model, x, prune={"target_macs": 0.5, ...})`
(the ratio is searched; local scope and the other Prune options at their defaults) four ways:

- magnitude: the `l2` criterion (weights only, no data);
- Taylor: the `taylor` criterion on labelled calibration data with the cross-entropy loss;
- magnitude + reconstruction: `l2`, then every layer that lost input channels refitted by
  least squares on calibration data;
- FLAP: the `fluctuation` criterion (input variance x weight column norm) + reconstruction.

Calibration data is the first `--calibration` training images, in batches of 128. Each pruned
model's test accuracy is measured as graphopt returns it ("no fine-tune") and after fine-tuning its
`torch_module()` for `--finetune-epochs` epochs on the training set (Adam, `--finetune-lr`, cosine
decay, the same data order for every row). graphopt folds batch norm into the convolutions before
pruning, so the fine-tuned module has none; the control column fine-tunes the original model, batch
norms kept, with the same channels zeroed, under the same budget (see `masked_with_batchnorm`).

Prints a markdown table for the first seed and, with several seeds, accuracies across seeds.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import graphopt


@dataclass
class Digits:
    """Standardised digits images (N, 1, 8, 8) and labels, split into train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, test_size: float = 0.25) -> Digits:
    """scikit-learn's digits, stratified train/test split, standardised with the training statistics."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    images, labels = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=test_size, stratify=labels,
                                                        random_state=seed)
    mean, std = x_train.mean(), x_train.std()

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.tensor((x - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)

    return Digits(tensor(x_train), torch.tensor(y_train), tensor(x_test), torch.tensor(y_test))


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (identity, or a strided 1x1 projection), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small residual CNN for 8x8 images: 32 channels at 8x8, 64 at 4x4."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width, width), Block(width, 2 * width, stride=2),
                                    Block(2 * width, 2 * width))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    @staticmethod
    def batchnorm_after(conv: str) -> str:
        """The name of the batch norm that follows the convolution named `conv`."""
        if conv == "stem.0":
            return "stem.1"
        return conv.replace("conv1", "bn1").replace("conv2", "bn2").replace("shortcut.0", "shortcut.1")


def train(module: nn.Module, data: Digits, epochs: int, lr: float, seed: int, batch_size: int = 64,
          wrap: Callable[[torch.optim.Optimizer, int], torch.optim.Optimizer] | None = None) -> nn.Module:
    """Adam on the training set, `epochs` passes in a seeded order, cosine learning-rate decay; returns `module`.

    `wrap(adam, total_steps)` may wrap the optimizer (bench_train_once.py: graphopt.train.GroupSparseOptimizer),
    so every method trains with the same loop.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    steps = epochs * -(-len(data.x_train) // batch_size)
    if wrap is not None:
        optimizer = wrap(optimizer, steps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=generator)
        for batch in order.split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(module(data.x_train[batch]), data.y_train[batch]).backward()
            optimizer.step()
            schedule.step()
    return module.eval()


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean()) * 100


# The model is traced at batch 2 so its batch axis stays dynamic; the report's MACs are for that batch.
EXAMPLE_BATCH = 2

# method -> (criterion, reconstruct); Taylor is given labelled calibration data and the cross-entropy loss
METHODS: dict[str, tuple[str, bool]] = {
    "magnitude (l2)": ("l2", False),
    "Taylor (cross-entropy)": ("taylor", False),
    "magnitude (l2) + reconstruction": ("l2", True),
    "FLAP fluctuation + reconstruction": ("fluctuation", True),
}


def prune(model: nn.Module, data: Digits, method: str, *, target_macs: float, calibration: int,
          batch_size: int = 128, round_to: int | None = None) -> graphopt.OptimizedModel:
    """`model` pruned by `method` to `target_macs` of its MACs; the first `calibration` training images calibrate.

    `round_to`: the Prune option (None: its default); 1 meets a MACs target another method reached exactly.
    """
    criterion, rebuild = METHODS[method]
    options = {"target_macs": target_macs, "criterion": criterion, "reconstruct": rebuild, "round_to": round_to}
    example = (data.x_train[:EXAMPLE_BATCH],)
    images, labels = data.x_train[:calibration].split(batch_size), data.y_train[:calibration].split(batch_size)
    if criterion == "taylor":
        pairs = [((x,), y) for x, y in zip(images, labels)]
        return graphopt.optimize(model, example, prune=options, calibration_data=pairs, loss=F.cross_entropy)
    return graphopt.optimize(model, example, prune=options, calibration_data=[(x,) for x in images])


def masked_with_batchnorm(model: DigitsResNet, pruned: graphopt.OptimizedModel, data: Digits) -> DigitsResNet:
    """Control: a copy of `model`, batch norms kept, with the channels `pruned` removed zeroed after their batch norm.

    Before fine-tuning it computes what the pruned model computes without reconstruction
    (graphopt folds batch norm into the convolutions before pruning); it tells whether a
    fine-tune falls short because of the channels chosen or because the pruned module has
    no batch norm left to re-normalise its activations.
    """
    from graphopt.analysis.channels import channel_groups

    dense = graphopt.optimize(model, (data.x_train[:EXAMPLE_BATCH],)).graph  # the graph the recipe was made on
    anchors = [(g.producers()[0][0], g) for g in channel_groups(dense) if g.prunable]
    groups = {(space.value.name, space.axes): g for space, g in anchors}
    control = copy.deepcopy(model)
    modules = dict(control.named_modules())
    for entry in pruned.recipe.steps[0].groups:
        group = groups[(entry["anchor"]["weight"], tuple(entry["anchor"]["axes"]))]
        for space, labels in group.producers():
            if not space.value.name.endswith(".weight"):
                continue  # the folded bias: the same channels as its weight
            norm = modules[control.batchnorm_after(space.value.name.removesuffix(".weight"))]
            mask = torch.as_tensor(~np.isin(labels, entry["removed"]), dtype=torch.float32)
            norm.register_forward_hook(lambda _m, _i, out, mask=mask: out * mask[None, :, None, None])
    return control


@dataclass
class Row:
    """One pruned model: test accuracy without and with fine-tuning, and its cost against the dense model."""

    method: str
    acc_pruned: float
    acc_finetuned: float
    acc_control: float  # the same channels masked in the model with batch norms, same fine-tune
    params_before: int
    params_after: int
    macs_before: int  # per image
    macs_after: int
    ratio: float
    target: str  # the budget the ratio was searched for, as the PruneReport states it ("macs 50%")
    seconds: float
    reconstruction: str = ""

    @property
    def macs_kept(self) -> float:
        return self.macs_after / self.macs_before

    def markdown(self, dense_acc: float) -> str:
        return (f"| {self.method} | {self.acc_pruned:.1f} | {self.acc_finetuned:.1f} "
                f"({self.acc_finetuned - dense_acc:+.1f}) | {self.acc_control:.1f} | "
                f"{self.params_before:,} -> {self.params_after:,} | "
                f"{self.macs_before:,} -> {self.macs_after:,} ({self.macs_kept:.1%}) | {self.ratio:.3f} | "
                f"{self.seconds:.1f} s |")


HEADER = ("| model | test acc. (%), no fine-tune | after fine-tune (vs dense) | control: BN kept, fine-tuned "
          "| params | MACs per image | ratio (searched) | optimize time |\n"
          "|---|---|---|---|---|---|---|---|")


@dataclass
class Result:
    seed: int
    dense_acc: float
    train_seconds: float
    rows: list[Row]

    def dense_row(self) -> str:
        first = self.rows[0] if self.rows else None
        params = f"{first.params_before:,}" if first else "-"
        macs = f"{first.macs_before:,}" if first else "-"
        return f"| dense | {self.dense_acc:.1f} | - | - | {params} | {macs} | - | - |"


def run(*, seed: int = 0, test_size: float = 0.25, epochs: int = 12, lr: float = 3e-3, finetune_epochs: int = 2,
        finetune_lr: float = 1e-3, target_macs: float = 0.5, calibration: int = 512,
        methods: list[str] | None = None) -> Result:
    """Train the dense model, prune it by each method, and fine-tune every pruned model with the same budget."""
    data = load_digits(seed, test_size)
    torch.manual_seed(seed)
    model = DigitsResNet()
    start = time.perf_counter()
    train(model, data, epochs, lr, seed)
    train_seconds = time.perf_counter() - start
    dense_acc = accuracy(model, data.x_test, data.y_test)
    rows = []
    for method in methods or list(METHODS):
        start = time.perf_counter()
        pruned = prune(copy.deepcopy(model), data, method, target_macs=target_macs, calibration=calibration)
        seconds = time.perf_counter() - start
        acc_pruned = accuracy(pruned, data.x_test, data.y_test)
        finetuned = train(pruned.torch_module(), data, finetune_epochs, finetune_lr, seed + 1)
        control = train(masked_with_batchnorm(model, pruned, data), data, finetune_epochs, finetune_lr, seed + 1)
        report, step = pruned.report, pruned.report.prune[0]
        rows.append(Row(method, acc_pruned, accuracy(finetuned, data.x_test, data.y_test),
                        accuracy(control, data.x_test, data.y_test), report.params_before, report.params_after,
                        report.macs_before // EXAMPLE_BATCH, report.macs_after // EXAMPLE_BATCH, step.ratio,
                        step.target, seconds, str(step.reconstruction or "")))
    return Result(seed, dense_acc, train_seconds, rows)


def across_seeds(results: list[Result]) -> str:
    """A markdown table: per method, test accuracy per seed without and with fine-tuning, and the means."""
    seeds = ", ".join(str(r.seed) for r in results)
    lines = [f"| model | no fine-tune, seeds {seeds} | mean | after fine-tune, seeds {seeds} | mean (vs dense) "
             "| control: BN kept, fine-tuned, mean (vs dense) |",
             "|---|---|---|---|---|---|"]
    dense = float(np.mean([r.dense_acc for r in results]))
    lines.append(f"| dense | {' / '.join(f'{r.dense_acc:.1f}' for r in results)} | {dense:.1f} | - | - | - |")
    for i, row in enumerate(results[0].rows):
        before = [r.rows[i].acc_pruned for r in results]
        after = [r.rows[i].acc_finetuned for r in results]
        control = float(np.mean([r.rows[i].acc_control for r in results]))
        lines.append(f"| {row.method} | {' / '.join(f'{a:.1f}' for a in before)} | {np.mean(before):.1f} | "
                     f"{' / '.join(f'{a:.1f}' for a in after)} | {np.mean(after):.1f} ({np.mean(after) - dense:+.1f}) "
                     f"| {control:.1f} ({control - dense:+.1f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="one run per seed (split, initialisation, data order); the first gets the full table")
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--calibration", type=int, default=512, help="training images for calibration")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    # One thread: the model is so small that a second one gains little, and on a shared machine
    # two threads slow down ten-fold whenever another process holds one of the cores.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs (Adam, lr {args.lr:g}), "
          f"fine-tune {args.finetune_epochs} epochs (lr {args.finetune_lr:g}), target {args.target_macs:.0%} of MACs, "
          f"calibration {args.calibration} training images, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    for seed in args.seeds:
        result = run(seed=seed, test_size=args.test_size, epochs=args.epochs, lr=args.lr,
                     finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr, target_macs=args.target_macs,
                     calibration=args.calibration, methods=args.methods)
        results.append(result)
        if len(results) == 1:
            print()
            print(f"seed {seed}: dense model trained in {result.train_seconds:.1f} s")
            print()
            print(HEADER)
            print(result.dense_row())
            for row in result.rows:
                print(row.markdown(result.dense_acc))
            print()
            for row in result.rows:
                if row.reconstruction:
                    print(f"- {row.method}: {row.reconstruction}")
    if len(results) > 1:
        print()
        print(across_seeds(results))


if __name__ == "__main__":
    main()
