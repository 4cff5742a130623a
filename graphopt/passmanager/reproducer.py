"""Crash reproducers: the pipeline and the graphs a failing pass saw, written so a bug can be reported and replayed.

Only graphopt's own failures get one (a pass crashing, or breaking the graph):
an error a pass raised on purpose about its input, such as missing calibration
data, is the user's to fix, and a reproducer would only suggest a bug report.
Weights are not pickled unless asked for: they can be large and private, and
most pass bugs replay on the structure alone (weights on the meta device).
"""

from __future__ import annotations

import os
import tempfile

from graphopt.errors import GraphoptError, ShapeError, VerificationError
from graphopt.ir.graph import Graph
from graphopt.passmanager.context import RunContext
from graphopt.passmanager.errors import PassVerificationError

_README = """graphopt pass '{pass_text}' failed.
input.ir is the graph given to PassManager.run and pipeline.txt the whole pipeline;
before_failing_pass.ir is the graph the failing pass received. graph.pt is that graph {weights}.
Replay with:
    import torch; from graphopt.passmanager import PassManager
    graph = torch.load('graph.pt', weights_only=False)
    PassManager.parse(open('failing_pass.txt').read().strip()).run(graph)
"""


def deserves_reproducer(exc: BaseException, stage: str) -> bool:
    """True for graphopt's own failures; False for a GraphoptError a pass raised about its input."""
    if stage != "run" or not isinstance(exc, GraphoptError):
        return True
    # a pass that built an ill-typed node or graph has a bug, whatever it raised
    return isinstance(exc, (VerificationError, ShapeError, PassVerificationError))


def write_reproducer(
    directory: str | os.PathLike | bool,
    ctx: RunContext,
    pass_text: str,
    snapshot: Graph | None,
    exc: BaseException,
    *,
    weights: bool = False,
) -> str | None:
    """Write pipeline + graphs into a fresh folder under `directory` (True: the temp dir); its path, or None.

    Never raises: a failure here must not hide the pass's error.
    """
    try:
        parent = None if directory is True else os.fspath(directory)
        folder = tempfile.mkdtemp(prefix="graphopt-reproducer-", dir=parent)
        files = {
            "pipeline.txt": ctx.pipeline + "\n",
            "failing_pass.txt": pass_text + "\n",
            "passes_before.txt": "".join(f"{p}\n" for p in ctx.history),
            "error.txt": f"{type(exc).__name__}: {exc}\n",
            "input.ir": (ctx.input_graph.format(source=True) + "\n") if ctx.input_graph is not None else "",
            "README.txt": _README.format(
                pass_text=pass_text,
                weights="with its weights" if weights else
                "with its weights on the meta device (shapes only; PassManager(reproducer_weights=True) keeps them)",
            ),
        }
        if snapshot is not None:
            files["before_failing_pass.ir"] = snapshot.format(source=True) + "\n"
        for name, content in files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
                fh.write(content)
        if snapshot is not None:
            _save_graph(snapshot, os.path.join(folder, "graph.pt"), weights)
        return folder
    except Exception:
        return None


def _save_graph(graph: Graph, path: str, weights: bool) -> None:
    try:
        import torch

        if not weights:
            graph = graph.clone()  # tensors are shared: replace them on the copy only
            for value in graph.weights.values():
                if value.data is not None:
                    value.set_data(value.data.to("meta"))
        torch.save(graph, path)
    except Exception:  # noqa: S110 - the text files are the reproducer; the pickle is a bonus
        pass
