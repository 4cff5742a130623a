"""Pass infrastructure: the Pass contract, registry, textual pipelines, analyses and instruments.

    from graphopt.analysis import ChannelGroups
    from graphopt.passmanager import Pass, PassResult, PassManager, register_pass

    @register_pass("my-pass")
    class MyPass(Pass):
        threshold: float = 0.5          # an option: my-pass{threshold=0.25}

        def validate(self):             # checked when the pass is built
            if not 0 <= self.threshold <= 1:
                raise self.invalid("threshold", f"must be in [0, 1], got {self.threshold}")

        def run(self, graph, analyses):
            groups = analyses.get(ChannelGroups, graph)   # analyses are keyed by their class
            ...
            return PassResult(graph, modified=True, stats={"removed": 3})

    new_graph, report = PassManager.parse("canonicalize,my-pass{threshold=0.25}").run(graph)

See docs/passes.md for a step-by-step guide.
"""

from graphopt.analysis.base import Analysis, bindings_from_inputs
from graphopt.passmanager.analysis import AnalysisManager, PreservedAnalyses
from graphopt.passmanager.context import RunContext
from graphopt.passmanager.errors import (
    InvalidOptionError,
    PassDefinitionError,
    PassFailedError,
    PassVerificationError,
    PipelineError,
    UnknownOptionError,
    UnknownPassError,
)
from graphopt.passmanager.instruments import DumpIR, PassInstrument, Progress, Timing, Verify
from graphopt.passmanager.manager import PassManager
from graphopt.passmanager.options import option
from graphopt.passmanager.pass_base import Pass, PassResult, Tolerance
from graphopt.passmanager.pipeline import NamedPipeline, parse_steps
from graphopt.passmanager.registry import list_passes, lookup, register_pass, register_pipeline, unregister
from graphopt.passmanager.report import PassRecord, PipelineReport

__all__ = [
    "Pass", "PassResult", "Tolerance", "option", "register_pass", "register_pipeline", "unregister", "lookup",
    "list_passes", "PassManager", "RunContext", "NamedPipeline", "parse_steps",
    "Analysis", "AnalysisManager", "PreservedAnalyses", "bindings_from_inputs",
    "PassInstrument", "Timing", "DumpIR", "Verify", "Progress", "PassRecord", "PipelineReport",
    "PipelineError", "UnknownPassError", "UnknownOptionError", "InvalidOptionError", "PassDefinitionError",
    "PassFailedError",
    "PassVerificationError",
]
