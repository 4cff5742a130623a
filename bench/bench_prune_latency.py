"""Latency budgets on ONNX Runtime: does `prune={"target_latency": 0.5}` keep half the measured latency, and does it
keep more of the model than a MACs budget pruned to the same measured latency?

Usage: python bench/bench_prune_latency.py [--models resnet50 mobilenet_v2] [--size base] [--target 0.5]
           [--threads 1] [--runs 30] [--digits] [--digits-batch 256] [--cache DIR]

Per zoo model (traced at batch 2, batch axis dynamic; timed at batch 1, `--threads` intra-op threads):

1. `graphopt.optimize(model, x, backend="onnx")` (dense) and `optimize(model, x, backend="onnx",
   prune={"target_latency": T, "latency_threads": threads})` (latency budget: table, allocation,
   closed loop; the table is cached in `--cache`, by default a fresh temporary directory so that the
   measuring time is reported).
2. The dense and the latency-pruned ONNX Runtime sessions are timed in alternation, `--runs` rounds:
   the measured fraction is the median of the rounds' own pruned / dense ratios, checked against T
   within 10 %; its noise is their interquartile range over median.
3. `target_macs` is bisected (at most 7 prunes) until the MACs-pruned model's measured latency, timed
   in the same loop as the dense and latency-pruned ones, is within 3 % of the latency-pruned one's.
4. Fidelity on fixed inputs (8 seeded random images): relative output error ||y - y_dense|| / ||y_dense||
   and cosine similarity against the dense model, for both pruned models.

`--digits` does the same for the trained residual CNN of bench_prune_accuracy.py (seed 0, 12 epochs),
timed at batch `--digits-batch` (at batch 1 its 8x8 images take microseconds: call overhead), with
the `l2` criterion alone and with reconstruction on 512 calibration images (both prunes of a pair
alike), and compares held-out accuracy.
Results: docs/benchmarks.md ("Latency budgets").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphopt  # noqa: E402
from graphopt import models_zoo  # noqa: E402
from graphopt.backends import onnx as gonnx  # noqa: E402
from graphopt.timing import Timing, interleaved_samples  # noqa: E402

TOLERANCE = 0.10
MATCH = 0.03  # the MACs-budgeted model's latency is matched to the latency-budgeted one's within this


def fidelity(dense, pruned, x: torch.Tensor) -> tuple[float, float]:
    """(relative output error, cosine similarity) of `pruned` against `dense` on `x`."""
    with torch.no_grad():
        want, got = dense(x).flatten().double(), pruned(x).flatten().double()
    return float((got - want).norm() / want.norm()), float(F.cosine_similarity(got, want, dim=0))


def session(result: graphopt.OptimizedModel, threads: int):
    return gonnx.compile(result.graph, threads=threads)


def timed(sessions, x: torch.Tensor, runs: int) -> list[Timing]:
    """The dense session's Timing, then each other's as a fraction of it: the median of the rounds' own ratios
    (the calls of one round share the machine's load), so a load that changes during the loop cancels."""
    samples = interleaved_samples([lambda s=s: s(x) for s in sessions], runs, warmup=3)
    dense = Timing.of(samples[0])
    return [dense] + [Timing.of([t / d for t, d in zip(other, samples[0])]) for other in samples[1:]]


def matched_macs(model, example, x, dense_s, latency_s, threads: int, runs: int, start: float, log, **options):
    """Bisect target_macs until its measured latency is within MATCH of `latency_s`'s (timed together)."""
    lo, hi, macs = 0.05, 1.0, start
    best = None
    for _ in range(7):
        result = graphopt.optimize(model, example, backend="onnx", prune={"target_macs": round(macs, 4), **options})
        macs_s = session(result, threads)
        dense_t, lat_t, macs_t = timed([dense_s, latency_s, macs_s], x, runs)
        gap = macs_t.median / lat_t.median - 1
        log(f"    target_macs={macs:.4f}: latency {macs_t.median:.3f} of dense vs "
            f"{lat_t.median:.3f} for the latency budget ({gap:+.1%}; dense {dense_t.median * 1e3:.2f} ms)")
        if best is None or abs(gap) < abs(best[0]):
            best = (gap, macs, result, macs_s, dense_t, lat_t, macs_t)
        if abs(gap) <= MATCH:
            break
        if gap > 0:
            hi = macs
        else:
            lo = macs
        macs = (lo + hi) / 2
    return best


def bench_zoo(name: str, args, log) -> list[str]:
    model, example = models_zoo.get(name, args.size, batch_size=2)
    model.eval()
    x1 = example[0][:1]
    fixed = torch.randn((8, *example[0].shape[1:]), generator=torch.Generator().manual_seed(0))
    dense = graphopt.optimize(model, example, backend="onnx")
    start = time.perf_counter()
    pruned = graphopt.optimize(model, example, backend="onnx",
                               prune={"target_latency": args.target, "latency_threads": args.threads,
                                      "latency_cache": args.cache})
    seconds = time.perf_counter() - start
    report = pruned.report.prune[0]
    log(report.summary())
    dense_s, latency_s = session(dense, args.threads), session(pruned, args.threads)
    dense_t, lat_t = timed([dense_s, latency_s], x1, args.runs)
    measured = lat_t.median
    log(f"  {name}: check after optimize: dense {dense_t.median * 1e3:.2f} ms, latency-pruned "
        f"{measured:.3f} of it (noise {lat_t.spread:.1%}); "
        f"{'MET' if abs(measured / args.target - 1) <= TOLERANCE else 'MISSED'}")
    gap, macs, macs_result, macs_s, d_t, l_t, m_t = matched_macs(
        model, example, x1, dense_s, latency_s, args.threads, args.runs, report.macs_fraction, log)
    rows = []
    for label, result, t, asked in (("latency budget", pruned, l_t, f"latency {args.target:g}"),
                                    ("MACs budget, same latency", macs_result, m_t, f"macs {macs:.3f}")):
        error, cosine = fidelity(dense, result, fixed)
        r = result.report
        rows.append(f"| {name} | {label} | {asked} | {t.median * d_t.median * 1e3:.2f} ({t.median:.3f}) | "
                    f"{r.macs_after / r.macs_before:.3f} | {r.params_after / r.params_before:.3f} | "
                    f"{error:.3f} | {cosine:.4f} |")
    rows.insert(0, f"| {name} | dense | - | {d_t.median * 1e3:.2f} (1.000) | 1.000 | 1.000 | 0 | 1 |")
    lat = report.latency
    log(f"  {name}: asked {lat.asked:.2f}, predicted {lat.predicted:.3f}, measured in the pass {lat.measured:.3f} "
        f"(noise {lat.noise:.1%}), measured after {measured:.3f}; optimize took {seconds:.1f} s "
        f"({lat.table_points} table points, {lat.table_measured} measured in {lat.table_seconds:.1f} s)")
    return rows


def bench_digits(args, log) -> list[str]:
    from bench_prune_accuracy import DigitsResNet, accuracy, load_digits, train

    torch.manual_seed(0)
    data = load_digits(0)
    model = train(DigitsResNet(), data, 12, 3e-3, 0)
    example = (data.x_train[:2],)
    calibration = [(x,) for x in data.x_train[:512].split(128)]
    xb = data.x_train[:args.digits_batch]
    dense = graphopt.optimize(model, example, backend="onnx")
    dense_s = session(dense, args.threads)
    rows = [f"| digits CNN | dense | - | (1.000) | 1.000 | {accuracy(dense, data.x_test, data.y_test):.1f} |"]
    for method, options in (("l2", {"criterion": "l2"}),
                            ("l2 + reconstruction", {"criterion": "l2", "reconstruct": True})):
        pruned = graphopt.optimize(model, example, backend="onnx", calibration_data=calibration,
                                   prune={"target_latency": args.target, "latency_threads": args.threads,
                                          "latency_batch": args.digits_batch, "latency_cache": args.cache, **options})
        log(pruned.report.prune[0].summary())
        latency_s = session(pruned, args.threads)
        lo, hi, macs, best = 0.05, 1.0, pruned.report.prune[0].macs_fraction, None
        for _ in range(7):
            result = graphopt.optimize(model, example, backend="onnx", calibration_data=calibration,
                                       prune={"target_macs": round(macs, 4), **options})
            d_t, l_t, m_t = timed([dense_s, latency_s, session(result, args.threads)], xb, args.runs)
            gap = m_t.median / l_t.median - 1
            log(f"    digits {method} target_macs={macs:.4f}: {m_t.median:.3f} vs {l_t.median:.3f} of dense "
                f"({gap:+.1%}; dense {d_t.median * 1e3:.2f} ms)")
            if best is None or abs(gap) < abs(best[0]):
                best = (gap, macs, result, d_t, l_t, m_t)
            if abs(gap) <= MATCH:
                break
            hi, lo = (macs, lo) if gap > 0 else (hi, macs)
            macs = (lo + hi) / 2
        _, macs, macs_result, d_t, l_t, m_t = best
        for label, result, t, asked in (("latency budget", pruned, l_t, f"latency {args.target:g}"),
                                        ("MACs budget, same latency", macs_result, m_t, f"macs {macs:.3f}")):
            r = result.report
            rows.append(f"| digits CNN, {method} | {label} | {asked} | {t.median * d_t.median * 1e3:.2f} "
                        f"({t.median:.3f}) | {r.macs_after / r.macs_before:.3f} | "
                        f"{accuracy(result, data.x_test, data.y_test):.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--size", default="base")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--digits", action="store_true")
    parser.add_argument("--digits-batch", type=int, default=256)
    parser.add_argument("--cache", default=None, help="latency table cache (default: a fresh temporary directory)")
    args = parser.parse_args()
    if args.cache is None:
        args.cache = tempfile.mkdtemp(prefix="graphopt-latency-")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    def log(text: str) -> None:
        print(text, flush=True)

    log(f"load: {os.getloadavg()}, onnxruntime {__import__('onnxruntime').__version__}, {args.threads} thread(s)")
    rows = []
    for name in args.models:
        rows += bench_zoo(name, args, log)
        log(f"load: {os.getloadavg()}")
    print("\n| model | pruned by | budget | latency ms (of dense) | MACs | params | rel. output error | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.digits:
        digits = bench_digits(args, log)
        print("\n| model, criterion | pruned by | budget | latency ms at batch %d (of dense) | MACs "
              "| test accuracy (%%) |" % args.digits_batch)
        print("|---|---|---|---|---|---|")
        print("\n".join(digits))
    log(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
