"""RunContext: what a pipeline run has besides the graph (sample inputs, calibration data, loss) and where it is.

Passes read it as `analyses.context`, instruments receive it as `ctx`. It is
kept apart from the analysis manager so the cache holds analyses only, and
so data-driven passes (Taylor scores, reconstruction) and shape-dependent
analyses (cost) see one description of the data the user gave.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from graphopt.analysis.base import bindings_from_inputs
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph


@dataclass
class RunContext:
    """The inputs of one run (set by the caller) and its progress (set by the PassManager, for instruments).

    `example_inputs` bind symbolic dims and are the sample the Verify
    instrument compares outputs on; `calibration_data` holds model inputs per
    item, or `(inputs, target)` pairs when `loss(output, target)` is given;
    `explicit_bindings` size symbols by name and win over the example inputs.
    """

    example_inputs: Sequence[Any] | None = None
    calibration_data: Iterable[Any] | None = None
    loss: Callable[[Any, Any], Any] | None = None
    explicit_bindings: Mapping[str, int] = field(default_factory=dict)
    # progress, written by the PassManager as it goes
    pipeline: str = ""
    input_graph: Graph | None = None
    history: list[str] = field(default_factory=list)  # pass texts that completed, in order
    step_index: int = 0  # position of the current top-level step
    step_count: int = 0
    pass_index: int = 0  # executions so far, nested passes included (numbering for IR dumps)
    path: str = ""  # "canonicalize/fold-constants" for a pass inside a named pipeline
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.example_inputs is not None and not isinstance(self.example_inputs, (list, tuple)):
            self.example_inputs = (self.example_inputs,)
        if self.example_inputs is not None:
            self.example_inputs = tuple(self.example_inputs)
        if self.calibration_data is not None:
            self.calibration_data = list(self.calibration_data)  # a generator must survive several passes
        self.explicit_bindings = dict(self.explicit_bindings)

    def bindings(self, graph: Graph) -> dict[str, int]:
        """Sizes for the graph's symbolic dims: explicit bindings, else read off the example inputs.

        A symbol bound by neither is left out; analyses document what they assume
        for it (cost counts it as 1, i.e. reports per-sample figures).
        """
        env: dict[str, int] = {}
        if self.example_inputs is not None:
            env.update(bindings_from_inputs(graph, self.example_inputs))
        env.update(self.explicit_bindings)
        return env

    def calibration_batches(self, *, targets: bool = False) -> list[tuple[Any, ...]] | list[tuple[tuple, Any]]:
        """Calibration batches as model-input tuples (or `(inputs, target)` pairs with `targets=True`).

        Items of `calibration_data` are model inputs (a tensor or a tuple of
        them); when a `loss` is set they are `(inputs, target)` pairs, the
        target being what `loss(output, target)` compares the output with.
        Without calibration data the example inputs are the one batch.
        """
        if self.calibration_data is None:
            if self.example_inputs is None:
                raise GraphoptError("this pass needs calibration data: give calibration_data (or example inputs)")
            items = [((tuple(self.example_inputs), None) if self.loss is not None else self.example_inputs)]
        else:
            items = list(self.calibration_data)
        if not items:
            raise GraphoptError("calibration_data is empty")
        pairs = []
        for i, item in enumerate(items):
            if self.loss is not None:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise GraphoptError(
                        f"calibration item {i}: with a loss, each item must be an (inputs, target) pair")
                inputs, target = item
            else:
                inputs, target = item, None
            pairs.append((tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), target))
        return pairs if targets else [inputs for inputs, _ in pairs]
