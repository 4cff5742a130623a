"""The latency lookup table of latency-aware pruning: each dense node's time at pruned channel widths.

HALP / NetAdapt measure instead of counting MACs, because MACs do not say what a back-end makes of a
width: a depthwise conv costs far more per MAC than a 1x1, and widths off oneDNN's 16-channel block
are padded (docs/benchmarks.md). So every dense node (conv, linear) is timed in isolation, as a
one-node graph with the node's real attributes, spatial size and batch, on the chosen back-end, at a
grid of (input, output) channel widths on the fast multiples; widths between grid points are
interpolated linearly. Nodes of the same signature (ResNet-50 repeats a few conv shapes) share one
grid. What the table leaves out (norms, activations, pooling, additions, the back-end's fusions) is
the measured whole-model time minus the table's sum: the cost model in `latency_model.py` scales it
with the channels those nodes carry.

Measurements go to a JSON cache (`LatencyCache`) keyed by back-end, machine, thread count and node
signature (which holds the batch), so a model is measured once per machine and back-end. Each grid
point keeps its spread (interquartile range over median of its repeated runs). The number of points
measured in one call is capped (`max_measurements`): past it the table raises, saying how many it
needs, before measuring anything.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node
from graphopt.progress import ProgressBar
from graphopt.timing import Timing, graph_runner, interleaved_timings

FAST_STEP = 16  # oneDNN's channel block (passes/prune/prune_pass.py AUTO_ROUND_TO); grid points sit on it
GRID_FRACTIONS = (0.25, 0.5, 0.75)  # besides one step and the full width
POINT_SECONDS = 0.03  # time spent per grid point (runs of one node), at least MIN_RUNS runs
MIN_RUNS, MAX_RUNS = 7, 60
CACHE_FORMAT = 1
OVERHEAD_KEY = "overhead: relu of f32[1]"


def default_cache_dir() -> Path:
    """`$GRAPHOPT_LATENCY_CACHE`, else `~/.cache/graphopt/latency` (beside the TVM tuning database)."""
    return Path(os.environ.get("GRAPHOPT_LATENCY_CACHE") or Path.home() / ".cache" / "graphopt" / "latency")


def machine_key() -> str:
    """The CPU model, core count and architecture: latencies measured on one machine do not hold on another."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} x{os.cpu_count()} {platform.machine()}"


@dataclass(frozen=True)
class Signature:
    """What a dense node's time depends on: op, input shape (batch bound), weight shape, attributes, dtype.

    `c_in`/`c_out` are its full channel widths; `depthwise` convs have one width (groups = channels).
    `vary_in`/`vary_out` say which width some prunable group can change (the grid is 1 point elsewhere).
    """

    op: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    attrs: tuple
    dtype: str
    depthwise: bool
    vary_in: bool
    vary_out: bool

    @property
    def c_in(self) -> int:
        return self.x_shape[1] if self.op == "conv" else self.x_shape[-1]

    @property
    def c_out(self) -> int:
        return self.w_shape[0]

    @property
    def key(self) -> str:
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs)
        kind = "dw" if self.depthwise else ""
        return (f"{self.op}{kind} x{list(self.x_shape)} w{list(self.w_shape)} {attrs} {self.dtype} "
                f"vary={int(self.vary_in)}{int(self.vary_out)}")

    def widths(self) -> tuple[list[int], list[int]]:
        """The grid: input and output widths measured (one list for a depthwise conv: out = in)."""
        outs = _grid(self.c_out) if self.vary_out or (self.depthwise and self.vary_in) else [self.c_out]
        if self.depthwise:
            return outs, outs
        return (_grid(self.c_in) if self.vary_in else [self.c_in]), outs


def _step(width: int) -> int:
    """The fast multiple for a width: 16, halved while the width is under two of them (as `round_to`'s default)."""
    step = FAST_STEP
    while step > 1 and width < 2 * step:
        step //= 2
    return step


def _grid(width: int) -> list[int]:
    step = _step(width)
    points = {step, width} | {max(step, int(round(width * f / step)) * step) for f in GRID_FRACTIONS}
    return sorted(p for p in points if p <= width)


def signature_of(node: Node, env: dict[str, int], vary_in: bool, vary_out: bool) -> Signature | None:
    """The node's signature with symbols bound by `env` (unbound: 1), or None when the table does not model it
    (another op, a grouped conv that is not depthwise, a symbolic weight): its time then counts with the rest."""
    if node.op not in ("conv", "linear") or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    x, w = node.inputs[0], node.inputs[1]

    def size(d) -> int:
        return int(d) if isinstance(d, int) else int(D.evaluate(d, {**{str(s): 1 for s in d.free_symbols}, **env}))

    x_shape, w_shape = tuple(size(d) for d in x.shape), tuple(size(d) for d in w.shape)
    depthwise = False
    if node.op == "conv":
        groups = int(node.attrs.get("groups", 1))
        if len(x_shape) != 4:
            return None
        if groups != 1:
            depthwise = groups == x_shape[1] == w_shape[0] and w_shape[1] == 1
            if not depthwise:
                return None
        attrs = tuple((k, tuple(node.attrs[k])) for k in ("stride", "padding", "dilation"))
    else:
        attrs = ()
    bias = len(node.inputs) > 2 and node.inputs[2] is not None
    return Signature(node.op, x_shape, w_shape, attrs + (("bias", bias),), str(x.dtype).replace("torch.", ""),
                     depthwise, vary_in, vary_out)


def one_node_graph(sig: Signature, c_in: int, c_out: int) -> tuple[Graph, tuple]:
    """A graph of the node alone at widths (c_in, c_out), random weights, and inputs to run it on."""
    dtype = getattr(torch, sig.dtype)
    generator = torch.Generator().manual_seed(0)
    graph = Graph(f"latency_{sig.op}")
    attrs = dict((k, list(v)) for k, v in sig.attrs if k != "bias")
    if sig.op == "conv":
        x_shape = (sig.x_shape[0], c_in, *sig.x_shape[2:])
        w_shape = (c_out, 1 if sig.depthwise else c_in, *sig.w_shape[2:])
        attrs["groups"] = c_in if sig.depthwise else 1
    else:
        x_shape, w_shape = (*sig.x_shape[:-1], c_in), (c_out, c_in)
    x = graph.add_input("x", x_shape, dtype)
    w = graph.add_weight("w", torch.randn(w_shape, generator=generator).to(dtype))
    b = graph.add_weight("b", torch.randn(c_out, generator=generator).to(dtype)) if dict(sig.attrs).get("bias") else None
    graph.outputs = [graph.create_node(sig.op, [x, w, b], attrs).output]
    return graph, (torch.randn(x_shape, generator=generator).to(dtype),)


def _overhead_graph() -> tuple[Graph, tuple]:
    """The cheapest graph there is (relu of one number): what one call costs whatever the node does."""
    graph = Graph("latency_overhead")
    x = graph.add_input("x", (1,), torch.float32)
    graph.outputs = [graph.create_node("relu", [x]).output]
    return graph, (torch.ones(1),)


class LatencyCache:
    """Measured grid points in one JSON file per back-end and machine, written atomically, read once."""

    def __init__(self, directory: str | os.PathLike | None, backend: str, threads: int) -> None:
        machine = machine_key()
        digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
        self.path = (Path(directory) if directory else default_cache_dir()) / f"{backend}-{digest}.json"
        self.prefix = f"threads={threads} "
        self.backend, self.machine = backend, machine
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}  # a damaged cache is measured again, not an error
            if data.get("format") == CACHE_FORMAT and data.get("machine") == machine:
                self.entries = dict(data.get("entries", {}))

    def get(self, key: str) -> Timing | None:
        found = self.entries.get(self.prefix + key)
        return None if found is None else Timing(found["seconds"], found["spread"], found["runs"])

    def put(self, key: str, timing: Timing) -> None:
        self.entries[self.prefix + key] = {"seconds": timing.median, "spread": timing.spread, "runs": timing.runs}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": CACHE_FORMAT, "backend": self.backend, "machine": self.machine,
                           "entries": self.entries}, indent=0, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, self.path)


# A measurer times one graph on its inputs: (graph, inputs) -> Timing. The real one runs the back-end's
# runner; tests give a synthetic one.
Measurer = Callable[[Graph, tuple], Timing]


def backend_measurer(backend: str, threads: int) -> Measurer:
    """Time graphs on `backend` (a registered `graphopt.timing` runner): median of runs filling about
    POINT_SECONDS, at least MIN_RUNS, after two warm-up calls."""
    runner = graph_runner(backend)

    def measure(graph: Graph, inputs: tuple) -> Timing:
        call = runner(graph, inputs, threads)
        call()
        start = time.perf_counter()
        call()
        once = max(time.perf_counter() - start, 1e-7)
        runs = max(MIN_RUNS, min(MAX_RUNS, int(POINT_SECONDS / once)))
        return interleaved_timings([call], runs, warmup=0)[0]

    return measure


@dataclass
class Grid:
    """One signature's measured times (seconds, the per-call overhead taken off) on its width grid."""

    ins: list[int]
    outs: list[int]
    seconds: list[list[float]]  # [in index][out index]
    spread: float  # the largest spread among its points

    def at(self, c_in: float, c_out: float) -> float:
        """Linear interpolation between grid points (extrapolated from the nearest two beyond them), >= 0."""
        i0, i1, fi = _bracket(self.ins, c_in)
        o0, o1, fo = _bracket(self.outs, c_out)
        s = self.seconds
        low = s[i0][o0] + (s[i0][o1] - s[i0][o0]) * fo
        high = s[i1][o0] + (s[i1][o1] - s[i1][o0]) * fo
        return max(0.0, low + (high - low) * fi)


def _bracket(points: list[int], x: float) -> tuple[int, int, float]:
    if len(points) == 1:
        return 0, 0, 0.0
    j = min(max(bisect.bisect_right(points, x), 1), len(points) - 1)
    return j - 1, j, (x - points[j - 1]) / (points[j] - points[j - 1])


@dataclass
class LatencyTable:
    """Grids by signature key, the per-call overhead taken off them, and how the points were obtained."""

    grids: dict[str, Grid]
    overhead: float
    measured: int  # points timed in this call
    cached: int  # points read from the cache
    seconds: float  # time spent measuring

    def at(self, sig: Signature, c_in: float, c_out: float) -> float:
        return self.grids[sig.key].at(c_out if sig.depthwise else c_in, c_out)

    @property
    def spread(self) -> float:
        """The largest spread (interquartile range over median) of any measured point."""
        return max((g.spread for g in self.grids.values()), default=0.0)


def build_table(signatures: Sequence[Signature], measure: Measurer, cache: LatencyCache | None, *,
                max_measurements: int = 2000, progress: bool = True) -> LatencyTable:
    """Measure (or read from `cache`) every grid point of `signatures`, distinct ones once.

    Raises GraphoptError before measuring when more than `max_measurements` points are missing from the cache.
    """
    distinct = {sig.key: sig for sig in signatures}
    points = [(key, sig, ci, co) for key, sig in distinct.items()
              for ci in sig.widths()[0] for co in sig.widths()[1] if not sig.depthwise or ci == co]
    found: dict[tuple, Timing] = {}
    for point in points:
        timing = cache.get(_point_key(*point)) if cache is not None else None
        if timing is not None:
            found[point] = timing
    missing = [p for p in points if p not in found]
    if len(missing) > max_measurements:
        raise GraphoptError(
            f"prune: the latency table needs {len(missing)} measurements ({len(distinct)} distinct dense nodes "
            f"on a grid of widths), more than latency_max_measurements={max_measurements}; raise it (each takes "
            f"about {POINT_SECONDS:.2f} s), or give target_macs")
    start = time.perf_counter()
    overhead = cache.get(OVERHEAD_KEY) if cache is not None else None
    if overhead is None:
        overhead = measure(*_overhead_graph())
        if cache is not None:
            cache.put(OVERHEAD_KEY, overhead)
    bar = ProgressBar("latency table", len(missing), enabled=progress and len(missing) > 20)
    for index, point in enumerate(missing):
        found[point] = measure(*one_node_graph(point[1], point[2], point[3]))
        if cache is not None:
            cache.put(_point_key(*point), found[point])
            if index % 50 == 49:
                cache.save()  # a long measurement interrupted keeps what it measured
        bar.step()
    if cache is not None and missing:
        cache.save()
    grids = {}
    for key, sig in distinct.items():
        ins, outs = sig.widths()
        seconds = [[0.0] * len(outs) for _ in ins]
        spread = 0.0
        for i, ci in enumerate(ins):
            for o, co in enumerate(outs):
                t = found[(key, sig, co, co)] if sig.depthwise else found[(key, sig, ci, co)]
                seconds[i][o] = max(t.median - overhead.median, 0.0)
                spread = max(spread, t.spread)
        grids[key] = Grid(ins, outs, seconds, spread)
    return LatencyTable(grids, overhead.median, len(missing), len(points) - len(missing),
                        time.perf_counter() - start)


def _point_key(key: str, sig: Signature, c_in: int, c_out: int) -> str:
    return f"{key} @ {c_in}x{c_out}"


def grid_points(signatures: Sequence[Signature]) -> int:
    """How many points a table of `signatures` has (distinct signatures once)."""
    distinct = {sig.key: sig for sig in signatures}
    return sum(len(s.widths()[1]) if s.depthwise else len(s.widths()[0]) * len(s.widths()[1])
               for s in distinct.values())


__all__ = ["Signature", "signature_of", "one_node_graph", "LatencyCache", "LatencyTable", "Grid", "build_table",
           "backend_measurer", "default_cache_dir", "machine_key", "grid_points"]
