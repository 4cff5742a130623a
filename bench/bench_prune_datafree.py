"""Data-free recovery (`prune{recover=data-free}`) against plain magnitude pruning, and data-based reconstruction.

Usage: python bench/bench_prune_datafree.py [--seeds 0 1 2] [--ratios 0.25 0.5] [--epochs 12]
                                            [--models vit bert mlp_mixer] [--calibration 512] [--no-cnn]
                                            [--scopes all single-producer] [--methods magnitude data-free reconstruct]
                                            [--threads 1]

Nothing is fine-tuned. Every pruned model uses the `l2` criterion (local scope, default rounding)
three ways: "magnitude" (no recovery), "data-free" (`recover="data-free"`: no data at all) and, for
reference, "reconstruct" (`reconstruct=True`: least squares on calibration data).

- CNN: bench_prune_accuracy's residual CNN (DigitsResNet) trained on scikit-learn's digits with its
  helpers (`--epochs`, Adam, seeded split and initialisation); calibration for `reconstruct` is the
  first `--calibration` training images. Measured on the held-out test images: accuracy and the
  relative error of the logits against the dense model, ||pruned - dense|| / ||dense||.
- Transformers: zoo models at their tiny size with the zoo's random weights (seeded), the output's
  relative error against the dense model on 32 inputs the pruning never saw; `reconstruct` calibrates
  on 4 other batches of 16.

Two scopes per model: "all" prunes every prunable group; "single-producer" keeps whole (`ignore`)
the groups data-free recovery cannot compensate soundly (the residual stream, written by several
layers; attention heads), so its rows show what the recovery does where it applies.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import graphopt
from graphopt import models_zoo

METHODS: dict[str, dict] = {
    "magnitude": {},
    "data-free": {"recover": "data-free"},
    "reconstruct": {"reconstruct": True},
}

# groups data-free recovery skips (several producers, attention heads), kept whole in the "single-producer" scope
SINGLE_PRODUCER_IGNORE: dict[str, list[str]] = {
    "digits_resnet": ["stem.*", "blocks.1.shortcut.*"],
    "vit": ["patch_embed.*", "*attn.qkv*"],
    "bert": ["bert.embeddings.*", "*attention.self.*", "bert.pooler.*"],
    "mlp_mixer": ["stem.*"],
}


def _accuracy_bench():
    """bench_prune_accuracy, imported from its file (bench/ is not a package)."""
    path = Path(__file__).resolve().parent / "bench_prune_accuracy.py"
    spec = importlib.util.spec_from_file_location("bench_prune_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    model: str
    scope: str
    ratio: float
    method: str
    seed: int
    error: float  # relative output error against the dense model
    accuracy: float | None  # test accuracy (%), CNN only
    params_kept: float
    recovery: str = ""


def _logits(output) -> torch.Tensor:
    if isinstance(output, dict):
        return output["logits"]
    return output if torch.is_tensor(output) else output[0]


def _relative_error(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    return float((pruned - dense).norm() / dense.norm())


def _options(model: str, scope: str, ratio: float, method: str) -> dict:
    options = {"ratio": ratio, **METHODS[method]}
    if scope == "single-producer":
        options["ignore"] = SINGLE_PRODUCER_IGNORE[model]
    return options


def run_cnn(seed: int, ratios: list[float], epochs: int, calibration: int, scopes: list[str],
            methods: list[str]) -> list[Row]:
    """DigitsResNet trained on digits, pruned every way; accuracy and logits error on the test images."""
    bench = _accuracy_bench()
    data = bench.load_digits(seed)
    torch.manual_seed(seed)
    model = bench.train(bench.DigitsResNet(), data, epochs, 3e-3, seed)
    with torch.no_grad():
        dense = model(data.x_test)
    rows = [Row("digits_resnet", "-", 0.0, "dense", seed, 0.0, bench.accuracy(model, data.x_test, data.y_test), 1.0)]
    example = (data.x_train[:bench.EXAMPLE_BATCH],)
    batches = [(x,) for x in data.x_train[:calibration].split(128)]
    for scope in scopes:
        for ratio in ratios:
            for method in methods:
                pruned = graphopt.optimize(copy.deepcopy(model), example, calibration_data=batches,
                                           prune=_options("digits_resnet", scope, ratio, method))
                report = pruned.report.prune[0]
                rows.append(Row("digits_resnet", scope, ratio, method, seed,
                                _relative_error(dense, pruned(data.x_test)),
                                bench.accuracy(pruned, data.x_test, data.y_test),
                                report.params_after / report.params_before, str(report.reconstruction or "")))
    return rows


def run_transformer(name: str, seed: int, ratios: list[float], scopes: list[str], methods: list[str]) -> list[Row]:
    """A zoo model with random weights, pruned every way; output error on inputs pruning never saw."""
    model, example = models_zoo.get(name, "tiny", seed=seed)
    evaluation = models_zoo.get(name, "tiny", seed=seed + 1000, batch_size=32)[1]
    calibration = [models_zoo.get(name, "tiny", seed=seed + 2000 + i, batch_size=16)[1] for i in range(4)]
    with torch.no_grad():
        dense = _logits(model(*evaluation))
    rows = []
    for scope in [s for s in scopes if s == "all" or name in SINGLE_PRODUCER_IGNORE]:
        for ratio in ratios:
            for method in methods:
                try:
                    pruned = graphopt.optimize(model, example, calibration_data=calibration,
                                               prune=_options(name, scope, ratio, method))
                except graphopt.GraphoptError as exc:  # reported as a failed row, the rest still runs
                    rows.append(Row(name, scope, ratio, method, seed, float("nan"), None, float("nan"),
                                    f"failed: {str(exc).splitlines()[0]}"))
                    continue
                report = pruned.report.prune[0]
                rows.append(Row(name, scope, ratio, method, seed, _relative_error(dense, _logits(pruned(*evaluation))),
                                None, report.params_after / report.params_before, str(report.reconstruction or "")))
    return rows


def table(rows: list[Row]) -> str:
    """Markdown: per model, scope, ratio and method, the mean over seeds (and each seed) of error and accuracy."""
    seeds = sorted({r.seed for r in rows})
    lines = [f"| model | groups pruned | ratio | method | params kept | output rel. error (mean; seeds {', '.join(map(str, seeds))}) "
             "| test acc. % (mean; per seed) |", "|---|---|---|---|---|---|---|"]
    keys = []
    for r in rows:
        key = (r.model, r.scope, r.ratio, r.method)
        if key not in keys:
            keys.append(key)
    for key in keys:
        group = [r for r in rows if (r.model, r.scope, r.ratio, r.method) == key]
        errors = [r.error for r in group]
        error = f"{np.mean(errors):.3f} ({' / '.join(f'{e:.3f}' for e in errors)})" if key[3] != "dense" else "-"
        accs = [r.accuracy for r in group if r.accuracy is not None]
        acc = f"{np.mean(accs):.1f} ({' / '.join(f'{a:.1f}' for a in accs)})" if accs else "-"
        ratio = f"{key[2]:.2f}" if key[3] != "dense" else "-"
        lines.append(f"| {key[0]} | {key[1]} | {ratio} | {key[3]} | {np.mean([r.params_kept for r in group]):.1%} "
                     f"| {error} | {acc} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--calibration", type=int, default=512, help="training images for reconstruct (CNN)")
    parser.add_argument("--models", nargs="*", default=["vit", "bert", "mlp_mixer"],
                        help="zoo models with random weights (any of `graphopt zoo`)")
    parser.add_argument("--scopes", nargs="+", choices=["all", "single-producer"], default=["all", "single-producer"],
                        help="single-producer runs only for the CNN and the models in SINGLE_PRODUCER_IGNORE")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--no-cnn", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, seeds {args.seeds}, ratios {args.ratios}, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    start = time.perf_counter()
    rows: list[Row] = []
    for seed in args.seeds:
        if not args.no_cnn:
            rows += run_cnn(seed, args.ratios, args.epochs, args.calibration, args.scopes, args.methods)
        for name in args.models:
            rows += run_transformer(name, seed, args.ratios, args.scopes, args.methods)
    print()
    print(table(rows))
    print()
    for r in rows:
        if (r.method == "data-free" or r.recovery.startswith("failed")) and r.seed == args.seeds[0]:
            print(f"- {r.model}, {r.scope}, ratio {r.ratio:.2f}, {r.method}: {r.recovery}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
