"""Accuracy and latency of layer dropping on real data: residual CNNs and small transformers on digits.

Usage: python bench/bench_drop_layers.py [--seeds 0 1 2] [--drops 1 2 3 4 5] [--epochs 15] [--calibration 512]
                                         [--draws 5] [--repeat 50] [--threads 1]
                                         [--models cnn cnn3 transformer transformer12]

Data: scikit-learn's digits, split and standardised as in bench/bench_prune_accuracy.py (its
`load_digits` and `train` are reused: 1,347 training / 450 test images, Adam, cosine decay, batch 64).
Models:

- `cnn`: stem conv 1->32, six residual blocks at 32 channels (conv-bn-relu-conv-bn + identity, ReLU),
  global average pooling, linear;
- `cnn3`: three stages of different widths: stem conv 1->16, two identity blocks at 16 channels
  (8x8), a strided projection block to 32 channels (4x4) and two identity blocks, a strided
  projection block to 64 channels (2x2) and two identity blocks, pooling, linear: 8 candidate blocks
  (dropping a projection block keeps its strided 1x1 shortcut);
- `transformer`: each image's 8 rows are 8 tokens of 8 pixels; linear embedding to 64 + learned
  positions, six pre-norm layers (4-head attention, GELU MLP x2), final LayerNorm, mean over tokens,
  linear. The 6 whole layers are the blocks (`granularity="layer"`);
- `transformer12`: the same transformer with 12 layers.

For each number of dropped blocks k, graphopt ranks the blocks of the trained model (`drop-layers` on
the traced graph) on calibration data, the first `--calibration` training images, and the dropped
model's accuracy is measured on the held-out test images, without fine-tuning. Rankings: cosine
(the default: 1 - cos(block input, output), ShortGPT's Block Influence), angular, loss (the measured
relative change of the logits when the block alone is dropped), labelled loss (the cross-entropy
increase on the labelled calibration images), iterative cosine and iterative loss (re-scored after
each drop). Baselines: the last k blocks, and k random blocks (mean of `--draws` draws). Every set of
dropped blocks, ranked or not, is measured twice: as dropped, and with `recover=True` (`blocks=[...]`
and the least-squares refit on the same calibration images), so recovery's gain is not credited to a
ranking. Latency (skipped with `--repeat 0`): `graphopt.optimize` of the dense model and of the model
with k blocks dropped by cosine, torch back-end, a batch of 256 test images, median of `--repeat`
rounds after warm-up, the models timed in turns in each round, in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.analysis.residual_blocks import find_blocks
from graphopt.backends.torch import to_module
from graphopt.passes.drop_layers import DropLayers
from graphopt.passmanager import PassManager
from graphopt.timing import median_seconds

from bench_prune_accuracy import Block, Digits, accuracy, load_digits, train


class DigitsCNN(nn.Module):
    """Six identity residual blocks at 32 channels on 8x8 digits."""

    def __init__(self, width: int = 32, depth: int = 6, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width, width) for _ in range(depth)))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class DigitsCNN3(nn.Module):
    """Three stages (16, 32, 64 channels at 8x8, 4x4, 2x2), two droppable identity blocks in each."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, 1, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        self.blocks = nn.Sequential(Block(a, a), Block(a, a), Block(a, b, 2), Block(b, b), Block(b, b),
                                    Block(b, c, 2), Block(c, c), Block(c, c))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    """A pre-norm transformer layer: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """Each image's rows as 8 tokens of 8 pixels, six pre-norm layers, mean-pooled classifier."""

    def __init__(self, dim: int = 64, depth: int = 6, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, 8, dim) * 0.02)
        self.layers = nn.Sequential(*(Layer(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        return self.head(self.norm(self.layers(tokens)).mean(dim=1))


RANKINGS = (  # method -> drop-layers options (besides count); "labelled" ones get the cross-entropy loss
    ("cosine (default)", {}),
    ("angular", {"metric": "angular"}),
    ("loss", {"metric": "loss"}),
    ("labelled loss", {"metric": "loss", "labelled": True}),
    ("iterative cosine", {"iterative": True}),
    ("iterative loss", {"metric": "loss", "iterative": True}),
)


@dataclass
class Row:
    method: str
    k: int
    accuracy: float  # test accuracy as dropped
    recovered: float  # the same blocks dropped with recover=True
    spread: str = ""  # the random draws
    dropped: list[str] = field(default_factory=list)
    is_last: bool = False  # the ranking chose exactly the last k blocks


@dataclass
class ModelResult:
    name: str
    dense_acc: float
    blocks: list[str]
    scores: dict[str, dict[str, float]]  # metric -> block -> score
    rows: list[Row]
    latency: dict[int, float]  # k -> median seconds (0: dense)
    params: dict[int, int]
    train_seconds: float


class Dropper:
    """Drops blocks of one traced graph and measures test accuracy, each (blocks, recover) pair once."""

    def __init__(self, graph, example, calibration, labelled, data: Digits) -> None:
        self.graph, self.example, self.data = graph, example, data
        self.calibration, self.labelled = calibration, labelled
        self.cache: dict[tuple[frozenset[str], bool], float] = {}

    def run(self, **options):
        if options.pop("labelled", False):
            return PassManager([DropLayers(**options)]).run(self.graph, self.example, calibration_data=self.labelled,
                                                            loss=F.cross_entropy)
        return PassManager([DropLayers(**options)]).run(self.graph, self.example, calibration_data=self.calibration)

    def rank(self, k: int, **options) -> list[str]:
        """The blocks the ranking `options` drops for count=k (accuracy of that set cached as a side effect)."""
        dropped, report = self.run(count=k, **options)
        names = report.stats("drop-layers")[0].dropped
        self.cache.setdefault((frozenset(names), False), accuracy(to_module(dropped), self.data.x_test,
                                                                  self.data.y_test))
        return names

    def accuracy(self, names: list[str], recover: bool) -> float:
        key = (frozenset(names), recover)
        if key not in self.cache:
            dropped, _ = self.run(blocks=list(names), recover=recover)
            self.cache[key] = accuracy(to_module(dropped), self.data.x_test, self.data.y_test)
        return self.cache[key]


def evaluate(name: str, model: nn.Module, data: Digits, *, drops: list[int], calibration: int, draws: int,
             seed: int, repeat: int, train_seconds: float) -> ModelResult:
    example = (data.x_train[:2],)
    graph = graphopt.trace(model, example)
    graph, _ = PassManager.parse("simplify").run(graph, example)
    calib = [(x,) for x in data.x_train[:calibration].split(128)]
    labelled = list(zip(calib, data.y_train[:calibration].split(128)))
    dropper = Dropper(graph, example, calib, labelled, data)
    blocks = [b.name for b in find_blocks(graph).select("layer") if b.droppable]
    scores = {}
    for metric, options in (("cosine", {}), ("loss", {"metric": "loss"}), ("labelled loss", {"metric": "loss",
                                                                                               "labelled": True})):
        _, report = dropper.run(count=1, **options)
        scores[metric] = {r.name: r.score for r in report.stats("drop-layers")[0].rows if r.score is not None}
    rows = []
    rng = random.Random(seed)
    for k in drops:
        last = blocks[-k:]
        for method, options in RANKINGS:
            names = dropper.rank(k, **options)
            rows.append(Row(method, k, dropper.accuracy(names, False), dropper.accuracy(names, True), dropped=names,
                            is_last=set(names) == set(last)))
        rows.append(Row("last k", k, dropper.accuracy(last, False), dropper.accuracy(last, True), dropped=last,
                        is_last=True))
        sets = [rng.sample(blocks, k) for _ in range(draws)]
        plain = [dropper.accuracy(s, False) for s in sets]
        recovered = [dropper.accuracy(s, True) for s in sets]
        rows.append(Row(f"random (mean of {draws})", k, sum(plain) / draws, sum(recovered) / draws,
                        " / ".join(f"{a:.1f}" for a in plain)))
    latency, params = measure_latency(model, data, drops, calib, repeat) if repeat else ({}, {})
    return ModelResult(name, accuracy(model, data.x_test, data.y_test), blocks, scores, rows, latency, params,
                       train_seconds)


def measure_latency(model: nn.Module, data: Digits, drops: list[int], calib, repeat: int):
    """Median latency of the optimized dense model and of each dropped one, on 256 test images.

    The models are timed in turns (one call each per round, after warm-up), so load from other
    processes on a shared machine falls on all of them alike.
    """
    x = data.x_test[:256]
    modules, params = {}, {}
    for k in [0, *drops]:
        optimized = graphopt.optimize(model, (data.x_train[:2],), drop_layers=k or None,
                                      calibration_data=calib if k else None)
        modules[k] = optimized.torch_module(trainable=False).eval()
        params[k] = optimized.report.params_after
    times: dict[int, list[float]] = {k: [] for k in modules}
    with torch.no_grad():
        for module in modules.values():
            median_seconds(module, x, repeat=1, warmup=3)
        for _ in range(repeat):
            for k, module in modules.items():
                times[k].append(median_seconds(module, x, repeat=1, warmup=0))
    return {k: statistics.median(t) for k, t in times.items()}, params


def print_result(result: ModelResult) -> None:
    print(f"\n### {result.name}: dense test accuracy {result.dense_acc:.1f} % "
          f"(trained in {result.train_seconds:.1f} s), {len(result.blocks)} blocks\n", flush=True)
    for metric, scores in result.scores.items():
        print(f"{metric} scores:", ", ".join(f"{b} {scores[b]:.3f}" for b in result.blocks if b in scores))
    print("\n| blocks dropped | method | test acc. (%) | + recover | dropped |\n|---|---|---|---|---|")
    for row in result.rows:
        detail = row.spread if row.spread else ", ".join(row.dropped) + (" (= last k)" if row.is_last else "")
        print(f"| {row.k} | {row.method} | {row.accuracy:.1f} | {row.recovered:.1f} | {detail} |")
    if result.latency:
        print("\n| blocks dropped | params | latency, batch 256 (median) | speed-up |\n|---|---|---|---|")
        for k, seconds in result.latency.items():
            print(f"| {k} | {result.params[k]:,} | {seconds * 1e3:.2f} ms | {result.latency[0] / seconds:.2f}x |")
    print(flush=True)


MODELS = {  # key -> (name, factory, learning rate)
    "cnn": ("residual CNN", DigitsCNN, 3e-3),
    "cnn3": ("residual CNN, 3 stages", DigitsCNN3, 3e-3),
    "transformer": ("transformer", DigitsTransformer, 1e-3),
    "transformer12": ("transformer, 12 layers", lambda: DigitsTransformer(depth=12), 1e-3),
}


def run(seed: int, args: argparse.Namespace) -> list[ModelResult]:
    data = load_digits(seed)
    results = []
    for name, factory, lr in ((MODELS[key][0], *MODELS[key][1:]) for key in args.models):
        torch.manual_seed(seed)
        model = factory()
        start = time.perf_counter()
        train(model, data, args.epochs, lr, seed)
        results.append(evaluate(name, model, data, drops=args.drops, calibration=args.calibration, draws=args.draws,
                                seed=seed, repeat=args.repeat, train_seconds=time.perf_counter() - start))
        print_result(results[-1])
    return results


def across_seeds(all_results: list[list[ModelResult]]) -> None:
    """Mean test accuracy per model, method and k over the seeds (as dropped / with recover=True)."""
    n = len(all_results)
    print(f"\n### mean over {n} seeds: test acc. (%) as dropped / with recover=True; "
          f"'= last' counts the seeds where the ranking chose exactly the last k blocks\n")
    for i, first in enumerate(all_results[0]):
        dense = sum(r[i].dense_acc for r in all_results) / n
        drops = sorted({row.k for row in first.rows})
        print(f"{first.name} (dense {dense:.1f})\n")
        print("| method | " + " | ".join(f"k={k}" for k in drops) + " |\n|---|" + "---|" * len(drops))
        methods = list(dict.fromkeys(row.method for row in first.rows))
        for method in methods:
            cells = []
            for k in drops:
                j = next(j for j, row in enumerate(first.rows) if row.method == method and row.k == k)
                plain = sum(r[i].rows[j].accuracy for r in all_results) / n
                recovered = sum(r[i].rows[j].recovered for r in all_results) / n
                same = sum(r[i].rows[j].is_last for r in all_results)
                tag = f" (= last {same}/{n})" if method not in ("last k",) and not method.startswith("random") else ""
                cells.append(f"{plain:.1f} / {recovered:.1f}{tag}")
            print(f"| {method} | " + " | ".join(cells) + " |")
        print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--drops", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="numbers of blocks to drop")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--calibration", type=int, default=512, help="training images for scores and recovery")
    parser.add_argument("--draws", type=int, default=5, help="random draws per k")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per latency (0: no latency)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["cnn", "transformer"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs, calibration "
          f"{args.calibration} training images, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = [run(seed, args) for seed in args.seeds]
    if len(results) > 1:
        across_seeds(results)


if __name__ == "__main__":
    main()
