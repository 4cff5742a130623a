"""Fuzz graphopt's inputs: mutated ONNX models, pruning recipes and pipeline strings, random prune options.

Usage: python bench/bench_fuzz.py [--targets onnx recipe pipeline prune] [--cases 2000] [--seed 0]
                                  [--models vit llama bert resnet18 mobilenet_v3] [--json]

Each target feeds graphopt many random inputs and sorts the outcomes: `ok` (accepted), `GraphoptError`
(refused with graphopt's error), and anything else, a finding: a raw numpy/KeyError/... escaping, or a
case slower than `SLOW_S` (`PRUNE_SLOW_S` for a prune case). tests/test_fuzz.py runs a bounded number of cases of each target in CI (and
the ONNX target in a subprocess, so a crash cannot take the test run down); this script is the longer run.

- onnx: a zoo model exported to ONNX, then 1-3 structural mutations (an op type swapped, an attribute set
  to an extreme, an input rewired or emptied, an input's dim or dtype changed, a node dropped, an
  initializer's dims changed), loaded with `graphopt.frontends.onnx.load`;
- recipe: a real pruning recipe's JSON with a field deleted, retyped or set to an extreme, parsed and
  applied to its graph (the graph must be unchanged when applying fails);
- pipeline: random strings over the pipeline grammar's alphabet and pass names, parsed; a string that
  parses must print back to text that parses to the same pipeline;
- prune: random ratio / criterion / scope / heads / round_to on a tiny zoo model; the pruned graph must verify;
- manifest: a tiny compiled TVM artifact whose manifest.json has a field deleted, retyped or set to an
  extreme, loaded with `graphopt.load` and, when it loads, called once.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SLOW_S = 5.0  # a loader or parser that takes longer on a small input is a finding
PRUNE_SLOW_S = 60.0  # a prune case traces and optimizes a whole model


@dataclass
class Outcomes:
    """How the cases of one target ended: counts per outcome, and the first example of each finding."""

    target: str
    slow_s: float = SLOW_S
    counts: collections.Counter = field(default_factory=collections.Counter)
    findings: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, case: int, run: Callable[[], Any], what: str) -> None:
        from graphopt.errors import GraphoptError

        start = time.perf_counter()
        try:
            run()
            outcome = "ok"
        except GraphoptError:
            outcome = "GraphoptError"
        except Exception as exc:  # a finding: an error graphopt did not name
            outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            self.findings.setdefault(outcome, f"case {case}: {what}")
        took = time.perf_counter() - start
        if took > self.slow_s:
            self.findings.setdefault(f"slow ({took:.1f} s)", f"case {case}: {what}")
        self.counts[outcome] += 1

    @property
    def bad(self) -> int:
        return sum(n for k, n in self.counts.items() if k not in ("ok", "GraphoptError"))

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "cases": sum(self.counts.values()), "counts": dict(self.counts),
                "bad": self.bad, "findings": self.findings, "seconds": round(self.seconds, 2)}


# ----------------------------------------------------------------------------------------------- onnx
def _mutate_onnx(model: Any, rng: random.Random, op_types: list[str]) -> str:
    """One structural mutation of `model` (in place); returns what it did."""
    import onnx

    graph = model.graph
    nodes = list(graph.node)
    node = rng.choice(nodes)
    kind = rng.choice(["op", "attr", "input", "dim", "dtype", "drop", "init"])
    if kind == "op":
        node.op_type = rng.choice(op_types)
    elif kind == "attr" and node.attribute:
        attr = rng.choice(node.attribute)
        if attr.type == onnx.AttributeProto.INT:
            attr.i = rng.choice([-1, 0, 1, 2, 7, 10**9, -10**9])
        elif attr.type == onnx.AttributeProto.INTS and attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice([-5, -1, 0, 3, 10**6])
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = rng.choice([0.0, -1.0, float("nan"), 1e30])
    elif kind == "input" and node.input:
        names = [o for n in nodes for o in n.output] + [i.name for i in graph.initializer]
        node.input[rng.randrange(len(node.input))] = rng.choice(names + ["", "nonexistent"])
    elif kind == "dim":
        info = rng.choice(list(graph.input) + list(graph.output))
        dims = info.type.tensor_type.shape.dim
        if dims:
            dim = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                dim.dim_value = rng.choice([0, 1, 3, 10**7])
            else:
                dim.dim_param = rng.choice(["batch", "x", "seq"])
    elif kind == "dtype":
        rng.choice(list(graph.input)).type.tensor_type.elem_type = rng.choice([1, 6, 7, 9, 10, 11, 16])
    elif kind == "drop":
        graph.node.remove(node)
    elif kind == "init" and graph.initializer:
        tensor = rng.choice(list(graph.initializer))
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 2, 10**6])
    return f"{kind} at {node.name or node.op_type}"


def fuzz_onnx(models: list[str], cases: int, seed: int) -> Outcomes:
    import graphopt
    from graphopt import models_zoo
    from graphopt.backends.onnx import to_onnx
    from graphopt.frontends.onnx import load

    outcomes, rng = Outcomes("onnx"), random.Random(seed)
    start = time.perf_counter()
    bases = {}
    for name in models:
        model, inputs = models_zoo.get(name, "tiny")
        bases[name] = to_onnx(graphopt.trace(model, inputs))
    op_types = sorted({n.op_type for m in bases.values() for n in m.graph.node}
                      | {"Range", "Expand", "Reshape", "Gather", "Tile", "Pad", "Slice", "ConstantOfShape"})
    for case in range(cases):
        name = models[case % len(models)]
        mutated = copy.deepcopy(bases[name])
        what = ", ".join(_mutate_onnx(mutated, rng, op_types) for _ in range(rng.randint(1, 3)))
        outcomes.record(case, lambda: load(mutated), f"{name}: {what}")
    outcomes.seconds = time.perf_counter() - start
    return outcomes


# --------------------------------------------------------------------------------------------- recipe
def recipe_case() -> tuple[Any, str]:
    """A canonicalised 3-layer MLP and the JSON recipe of pruning it by half (two groups)."""
    import torch

    import graphopt
    from graphopt.passmanager import PassManager

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2)).eval()
    x = torch.randn(4, 6)
    recipe = graphopt.optimize(model, (x,), prune=0.5).recipe
    graph, _ = PassManager.parse("simplify").run(graphopt.trace(model, (x,)), (x,))
    return graph, recipe.to_json()


_EXTREMES = [None, "", "x", -1, 0, 1, 2**40, 1.5, True, [], {}, [0, 0], ["0"], {"weight": 1}]


def _mutate_json(data: Any, rng: random.Random) -> str:
    """Change one field somewhere in `data` (in place): delete it, or set it to an extreme value."""
    path, node = [], data
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], (dict, list)) or rng.random() < 0.3:
            if isinstance(node, dict) and rng.random() < 0.3:
                del node[key]
                return f"deleted {'/'.join(map(str, path + [key]))}"
            node[key] = copy.deepcopy(rng.choice(_EXTREMES))
            return f"set {'/'.join(map(str, path + [key]))} = {node[key]!r}"
        path.append(key)
        node = node[key]
    return "unchanged"


def fuzz_recipes(cases: int, seed: int) -> Outcomes:
    from graphopt.passes.prune import PruneRecipe, apply_recipe

    outcomes, rng = Outcomes("recipe"), random.Random(seed)
    start = time.perf_counter()
    graph, text = recipe_case()
    before = graph.format()

    def apply(mutated: str) -> None:
        try:
            apply_recipe(graph.clone(), PruneRecipe.from_json(mutated))
        finally:
            if graph.format() != before:  # the clone is what failed; the original must never change
                raise AssertionError("applying a recipe changed the graph it was not given")

    for case in range(cases):
        data = json.loads(text)
        what = "; ".join(_mutate_json(data, rng) for _ in range(rng.randint(1, 2)))
        mutated = json.dumps(data)
        outcomes.record(case, lambda: apply(mutated), what)
    outcomes.seconds = time.perf_counter() - start
    return outcomes


# ------------------------------------------------------------------------------------------- pipeline
def random_pipeline(rng: random.Random, names: list[str]) -> str:
    """Text over the pipeline grammar: pass names, options, nesting, and stray characters."""
    pieces = names + ["{", "}", ",", "=", "(", ")", " ", "ratio", "0.5", "true", "-1", "'", '"', "\\", "\u00e9",
                      "iterations", "criterion=l2", "1e309", "nan", "{}", ",,"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def fuzz_pipelines(cases: int, seed: int) -> Outcomes:
    from graphopt.passmanager import PassManager, list_passes

    outcomes, rng = Outcomes("pipeline"), random.Random(seed)
    start = time.perf_counter()
    names = sorted(list_passes())

    def parse(text: str) -> None:
        manager = PassManager.parse(text)
        again = PassManager.parse(str(manager))
        if str(again) != str(manager):
            raise AssertionError(f"{text!r} printed as {str(manager)!r}, which parses to {str(again)!r}")

    for case in range(cases):
        text = random_pipeline(rng, names)
        outcomes.record(case, lambda: parse(text), repr(text))
    outcomes.seconds = time.perf_counter() - start
    return outcomes


# ---------------------------------------------------------------------------------------------- prune
def random_prune_options(rng: random.Random) -> dict[str, Any]:
    options: dict[str, Any] = {"ratio": rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])}
    if rng.random() < 0.5:
        options["criterion"] = rng.choice(["l1", "l2", "taylor", "activation", "fluctuation", "bn_scale"])
    if rng.random() < 0.5:
        options["scope"] = rng.choice(["local", "global"])
    if rng.random() < 0.3:
        options["heads"] = rng.choice([True, False])
    if rng.random() < 0.3:
        options["round_to"] = rng.choice([1, 2, 8])
    return options


def fuzz_prune(models: list[str], cases: int, seed: int) -> Outcomes:
    import graphopt
    from graphopt import models_zoo

    outcomes, rng = Outcomes("prune", PRUNE_SLOW_S), random.Random(seed)
    start = time.perf_counter()
    built = {name: models_zoo.get(name, "tiny") for name in models}

    def prune(name: str, options: dict[str, Any]) -> None:
        model, inputs = built[name]
        optimized = graphopt.optimize(model, inputs, prune=options)  # verify=True: shapes checked per pass
        optimized.graph.verify()

    for case in range(cases):
        name, options = models[case % len(models)], random_prune_options(rng)
        outcomes.record(case, lambda: prune(name, options), f"{name} {options}")
    outcomes.seconds = time.perf_counter() - start
    return outcomes


# ------------------------------------------------------------------------------------------- manifest
def tiny_tvm_artifact(root: Any) -> Any:
    """Compile a one-linear graph with TVM (untuned: seconds) and save it under `root`; its directory."""
    import warnings
    from pathlib import Path

    import torch

    from graphopt.backends import tvm as gtvm
    from graphopt.ir import Graph

    torch.manual_seed(0)
    graph = Graph("tiny")
    x = graph.add_input("x", [2, 8], torch.float32)
    y = graph.create_node("linear", [x, graph.add_weight("fc.weight", torch.randn(4, 8)),
                                     graph.add_weight("fc.bias", torch.randn(4))]).output
    graph.outputs = [graph.create_node("relu", [y]).output]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = gtvm.compile(graph, work_dir=Path(root) / "db", progress=False)
    return Path(module.save(Path(root) / "artifact"))


def fuzz_manifests(cases: int, seed: int) -> Outcomes:
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np

    import graphopt

    outcomes, rng = Outcomes("manifest"), random.Random(seed)
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="graphopt-fuzz-"))
    try:
        original = tiny_tvm_artifact(root)
        text = (original / "manifest.json").read_text()
        x = np.ones((2, 8), dtype=np.float32)

        def load_and_call(directory: Path) -> None:
            model = graphopt.load(directory)
            model(x)

        for case in range(cases):
            directory = root / f"case{case}"
            shutil.copytree(original, directory)
            data = json.loads(text)
            what = "; ".join(_mutate_json(data, rng) for _ in range(rng.randint(1, 2)))
            (directory / "manifest.json").write_text(json.dumps(data))
            outcomes.record(case, lambda: load_and_call(directory), what)
            shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    outcomes.seconds = time.perf_counter() - start
    return outcomes


TARGETS = ("onnx", "recipe", "pipeline", "prune", "manifest")


def run(target: str, cases: int, seed: int, models: list[str]) -> Outcomes:
    if target == "onnx":
        return fuzz_onnx(models, cases, seed)
    if target == "recipe":
        return fuzz_recipes(cases, seed)
    if target == "pipeline":
        return fuzz_pipelines(cases, seed)
    if target == "manifest":
        return fuzz_manifests(cases, seed)
    return fuzz_prune(models, cases, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))  # manifest needs TVM
    parser.add_argument("--cases", type=int, default=2000, help="cases per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["vit", "llama", "bert", "resnet18", "mobilenet_v3"])
    parser.add_argument("--json", action="store_true", help="print one JSON object per target")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    found = 0
    for target in args.targets:
        cases = args.cases if target != "prune" else max(1, args.cases // 50)  # a prune case takes ~1 s
        outcomes = run(target, cases, args.seed, args.models)
        found += outcomes.bad
        if args.json:
            print(json.dumps(outcomes.as_dict()), flush=True)
        else:
            summary = ", ".join(f"{k}: {n}" for k, n in outcomes.counts.most_common())
            print(f"{target}: {sum(outcomes.counts.values())} cases in {outcomes.seconds:.1f} s ({summary})")
            for finding, example in outcomes.findings.items():
                print(f"  FINDING {finding}  [{example}]")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
