"""Realised speed-up of structured pruning: dense vs pruned latency in torch eager, against the MACs saved.

Usage: python bench/bench_prune_speed.py [--models resnet50 mobilenet_v2 vit] [--ratios 0.3 0.5]
           [--batches 1 32] [--threads 2] [--round-to 1 16] [--channels-last]

For each model (zoo `--size`, default `base`) three kinds of module are built, all torch eager
modules in eval mode: the original model ("eager"), the canonicalised dense model
(`graphopt.optimize(model, x)`, "dense") and one pruned model per ratio and `--round-to` value
(`graphopt.optimize(model, x, prune={...})`, default Prune options otherwise: l2 criterion, local
scope; `--round-to 0` is the pass's default, 16 or less for narrow groups). Models are traced at batch 2 (batch axis dynamic) and run at each of
`--batches`. The graphopt models are lowered from their inference graph
(`optimized.torch_module(trainable=False)`, BatchNorms folded, `--module inference`); `--module trainable`
times `optimized.torch_module()` instead, which for a pruned model keeps its BatchNorms for
fine-tuning.

Per (model, batch) every module is timed in alternation within one loop, in an order rotated
each round, so that load from other processes on a shared machine falls on all of them alike;
the figure is the median (`--stat`) of the timed rounds after `--warmup` untimed ones, under
`torch.inference_mode()` with `--threads` intra-op threads. The number of timed rounds is
`--runs`, lowered to fit about `--budget-s` seconds per (model, batch) but never below
`--min-runs` (a ViT-B round at batch 32 takes ~17 s on 2 cores).

By default glibc is told to keep freed memory (`--malloc keep`, see `keep_freed_memory`):
with glibc's defaults every forward pass page-faults its activations in again, which on the
project VM cost more than the convolutions at batch 32 and would hide what pruning saves.

Prints a markdown table: latency reduction is dense ms / pruned ms, MACs reduction is
macs_before / macs_after from the pruned model's `OptimizeReport`, and "realised" is their
ratio (1.0 means the pruned model is as much faster as it is cheaper). A row whose pruned model
is slower than either dense model is marked SLOWER.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import graphopt
from graphopt import models_zoo

TRACE_BATCH = 2
MODULES = ("inference", "trainable")


@dataclass
class Variant:
    """One module to time, and (pruned only) its prune settings, params and MACs."""

    module: torch.nn.Module
    params: int
    ratio: float | None = None
    round_to: int = 1
    macs_before: int = 0
    macs_after: int = 0


@dataclass
class Row:
    """One pruned model at one batch size against the dense models, timed in the same loop."""

    model: str
    size: str
    ratio: float
    round_to: int
    batch: int
    eager_ms: float
    dense_ms: float
    pruned_ms: float
    macs_reduction: float
    params_dense: int
    params_pruned: int
    runs: int

    @property
    def latency_reduction(self) -> float:
        return self.dense_ms / self.pruned_ms

    @property
    def realised(self) -> float:
        return self.latency_reduction / self.macs_reduction

    @property
    def slower(self) -> bool:
        return self.pruned_ms > min(self.dense_ms, self.eager_ms)

    def markdown(self) -> str:
        flag = " SLOWER" if self.slower else ""
        return (f"| {self.model} | {self.ratio:g} | {self.round_to or 'default'} | {self.batch} | {self.eager_ms:.1f} | "
                f"{self.dense_ms:.1f} | {self.pruned_ms:.1f} | {self.latency_reduction:.2f}x{flag} | "
                f"{self.macs_reduction:.2f}x | {self.realised:.2f} | "
                f"{self.params_dense / 1e6:.2f} M -> {self.params_pruned / 1e6:.2f} M | {self.runs} |")


HEADER = ("| model | ratio | round_to | batch | eager (ms) | dense (ms) | pruned (ms) | latency reduction "
          "| MACs reduction | realised (speed-up / MACs red.) | params | runs |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def lower(optimized: graphopt.OptimizedModel, module: str = "inference") -> torch.nn.Module:
    """The torch eager module of `optimized`: its inference graph, or its trainable one (`torch_module()`)."""
    if module not in MODULES:
        raise ValueError(f"module must be one of {MODULES}, not {module!r}")
    return optimized.torch_module(trainable=module == "trainable").eval()


def build_variants(name: str, size: str, ratios: Sequence[float], round_tos: Sequence[int],
                   module: str = "inference") -> list[Variant]:
    """The original model, the canonicalised dense model, then one pruned model per setting."""
    model, example = models_zoo.get(name, size, batch_size=TRACE_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings are not what this bench is about
        dense = graphopt.optimize(model, example)
        variants = [Variant(model, dense.report.params_before),
                    Variant(lower(dense, module), dense.report.params_after)]
        for ratio in ratios:
            for round_to in round_tos:
                options = {"ratio": ratio, **({"round_to": round_to} if round_to else {})}
                pruned = graphopt.optimize(model, example, prune=options)
                report = pruned.report
                variants.append(Variant(lower(pruned, module), report.params_after, ratio, round_to,
                                        report.macs_before, report.macs_after))
    return variants


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of returning it to the system.

    With glibc's defaults large blocks (activations) are mmap'd and unmapped, or the heap is
    trimmed, on every free, so every forward pass page-faults its activations in again: on the
    project VM the canonicalised mobilenet_v2 base took 825 ms at batch 32 with 560k page faults
    per call, and 204 ms with none once freed memory is kept. Returns False without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    # No mmap at all (glibc caps the mmap threshold at 32 MiB, below a batch-32 activation), and a
    # heap that is never trimmed: freed activations are reused as they are.
    return all(libc.mallopt(option, value) == 1 for option, value in
               ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 1 << 26)))


def interleaved_times(fns: Sequence[Callable[[], object]], runs: int, warmup: int,
                      budget_s: float = float("inf"), min_runs: int = 1) -> list[list[float]]:
    """Seconds of each call of each function, timing them in alternation (order rotated each round).

    The number of timed rounds is `runs`, lowered to fit `budget_s` (estimated from the last
    warm-up round) but not below `min_runs` (unless `runs` is).
    """
    round_s = 0.0
    for _ in range(warmup):
        start = time.perf_counter()
        for fn in fns:
            fn()
        round_s = time.perf_counter() - start
    if round_s > 0 and budget_s < float("inf"):
        runs = min(runs, max(min_runs, int(budget_s / round_s)))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(runs):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return times


STATS = {"median": statistics.median, "min": min}


def bench_model(name: str, size: str = "base", *, ratios: Sequence[float] = (0.3, 0.5),
                round_tos: Sequence[int] = (0,),
                batches: Sequence[int] = (1, 32), runs: int = 20, warmup: int = 2,
                budget_s: float = float("inf"), min_runs: int = 1, channels_last: bool = False,
                stat: str = "median", module: str = "inference") -> list[Row]:
    """Build the variants of `name` and time them at each batch size; one Row per pruned variant and batch."""
    variants = build_variants(name, size, ratios, round_tos, module)
    dense, pruned = variants[1], variants[2:]
    image = models_zoo.get(name, size, batch_size=1)[1]
    if channels_last:
        for v in variants:
            v.module.to(memory_format=torch.channels_last)
    rows = []
    for batch in batches:
        inputs = tuple(x.expand(batch, *x.shape[1:]).contiguous() for x in image)
        if channels_last:
            inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
        with torch.inference_mode():
            fns = [lambda m=v.module: m(*inputs) for v in variants]
            times = interleaved_times(fns, runs, warmup if batch == 1 else min(warmup, 1), budget_s, min_runs)
        ms = [STATS[stat](t) * 1e3 for t in times]
        for v, pruned_ms in zip(pruned, ms[2:]):
            rows.append(Row(name, size, v.ratio, v.round_to, batch, ms[0], ms[1], pruned_ms,
                            v.macs_before / max(v.macs_after, 1), dense.params, v.params, len(times[0])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "vit"])
    parser.add_argument("--size", default="base")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--round-to", nargs="+", type=int, default=[0],
                        help="Prune round_to values, 0 for the pass's default (16, less for narrow groups); "
                             "several are timed side by side")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=20, help="timed rounds at most")
    parser.add_argument("--min-runs", type=int, default=5, help="timed rounds at least")
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds of timed rounds per (model, batch)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (1 at batch > 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--module", choices=MODULES, default="inference",
                        help="lower the inference graph (BatchNorms folded) or torch_module()'s trainable one")
    parser.add_argument("--channels-last", action="store_true", help="run every module and input in NHWC")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: glibc keeps freed memory in the process (see keep_freed_memory); "
                             "default: glibc's defaults, activations page-faulted in on every call")
    parser.add_argument("--stat", choices=sorted(STATS), default="median",
                        help="per-module statistic of the timed rounds (min: least disturbed by load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc == "keep" and not keep_freed_memory():
        parser.error("--malloc keep needs glibc's mallopt; use --malloc default")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} threads, size {args.size}, {args.module} modules, "
          f"{'channels_last' if args.channels_last else 'contiguous (NCHW)'}, "
          f"{'malloc keeps freed memory' if args.malloc == 'keep' else 'default malloc'}, "
          f"{args.stat} of up to {args.runs} interleaved rounds (at least {args.min_runs}, "
          f"~{args.budget_s:g} s per model and batch), load average at start {load}")
    print()
    print(HEADER)
    for name in args.models:
        rows = bench_model(name, args.size, ratios=args.ratios, round_tos=args.round_to,
                           batches=args.batches, runs=args.runs, warmup=args.warmup, budget_s=args.budget_s,
                           min_runs=args.min_runs, channels_last=args.channels_last, stat=args.stat,
                           module=args.module)
        for row in rows:
            print(row.markdown(), flush=True)
    print()
    print(f"load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
