"""Run the float graph over the calibration batches and summarise chosen activations (ranges, channel maxima).

One batch at a time, so memory is one batch's activations however much data
is given; a progress bar on stderr counts the batches, since calibrating a
large model on many batches takes minutes.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from graphopt.ir.graph import Graph, Value
from graphopt.ir.interpreter import GraphInterpreter
from graphopt.progress import ProgressBar


def observe(graph: Graph, batches: Sequence[tuple], watchers: dict[str, Callable[[torch.Tensor], None]],
            *, label: str = "calibrate", progress: bool = True) -> None:
    """Run `graph` on each batch; call `watchers[value name](tensor)` for every watched value it computes."""
    bar = ProgressBar(label, len(batches), enabled=progress)
    inputs = {v.name: i for i, v in enumerate(graph.inputs)}
    for batch in batches:
        for name, index in inputs.items():
            if name in watchers:
                watchers[name](batch[index])
        interp = GraphInterpreter(graph, [batch])
        for node in graph.nodes:
            interp.execute(node)
            for out in node.outputs:
                watch = watchers.get(out.name)
                if watch is not None:
                    watch(interp.value(out)[0])
        bar.step()


def outputs_on(graph: Graph, batches: Iterable[tuple]) -> list[list[torch.Tensor]]:
    """The graph's tensor outputs per batch."""
    result = []
    for batch in batches:
        outs = GraphInterpreter(graph, [batch]).run()[0]
        result.append([o for o in outs if isinstance(o, torch.Tensor)])
    return result


Watch = Callable[[torch.Tensor], None]


def channel_absmax(values: Sequence[Value]) -> tuple[dict[str, Watch], dict[str, torch.Tensor]]:
    """Watchers that record each value's max |x| per last-axis channel, and the dict they fill."""
    found: dict[str, torch.Tensor] = {}

    def watcher(name: str) -> Watch:
        def watch(x: torch.Tensor) -> None:
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
            found[name] = m if name not in found else torch.maximum(found[name], m)
        return watch

    return {v.name: watcher(v.name) for v in values}, found
