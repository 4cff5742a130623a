"""`drop-layers`: depth pruning, dropping whole residual blocks ranked by how little they change their input.

Removing a residual block deletes its branch and keeps the stream: the merge's
readers read the skip value, and the branch becomes dead code. On deep
transformers this gives the most latency per point of accuracy lost (LLM-Drop,
ShortGPT, SLEB). Blocks come from the `ResidualBlocks` analysis, so any
architecture with residual merges works; `recover=True` then refits the
nearest following affine pieces by least squares (recover.py).
"""

from __future__ import annotations

import math
import time
from typing import Literal

from graphopt.analysis.cost import estimate_cost
from graphopt.analysis.residual_blocks import BlockReport, ResidualBlock, ResidualBlocks, find_blocks
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.ir.interpreter import run_graph
from graphopt.passmanager import AnalysisManager, Pass, PassResult, RunContext, option, register_pass
from graphopt.progress import ProgressBar

from graphopt import __version__

from ..prune.recipe import structure_hash
from .recipe import DropRecipe
from .recover import recover
from .removal import drop_block
from .report import BlockRow, DropReport
from .scores import MEASURED, Baseline, measured_scores, resolve_metric, similarity_scores


@register_pass("drop-layers")
class DropLayers(Pass):
    """Drop the least important residual blocks (transformer layers, attention/MLP sub-layers, CNN blocks)."""

    verify_tolerance = "shape"  # dropping changes outputs by design; shapes must stay
    requires = (ResidualBlocks,)

    count: int | None = option(None, "how many blocks to drop (default 1 when neither fraction nor blocks is given)")
    fraction: float | None = option(None, "instead of count: this fraction of the candidate blocks (rounded down)")
    granularity: Literal["layer", "attention", "mlp", "any"] = option(
        "layer", "candidates: outermost blocks (whole layers, CNN blocks), attention or MLP sub-layers, or any block")
    metric: Literal["auto", "kl", "loss", "cosine", "angular"] = option(
        "auto", "ranking: kl (output distribution change, measured), loss (measured loss or relative output "
                "change), cosine (1 - cos(input, output), Block Influence) or angular; auto: kl when the output "
                "is logits, else loss")
    blocks: list[str] = option([], "drop these blocks by name instead of ranking")
    iterative: bool | None = option(None, "choose greedily, re-scoring the remaining blocks after each drop "
                                          "(default: yes for the measured metrics kl and loss, no for cosine "
                                          "and angular)")
    recover: bool = option(False, "refit the nearest following affine pieces by least squares on calibration data")
    damp: float = option(0.01, "recover: ridge term, relative to the mean diagonal of X^T X")
    progress: bool = option(True, "a progress bar over the greedy steps on stderr")

    def validate(self) -> None:
        """Ranges and exclusive options, checked when the pass is built (before tracing, in `optimize`)."""
        if self.count is not None and self.count < 1:
            raise self.invalid("count", f"must be at least 1, got {self.count}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise self.invalid("fraction", f"the fraction of blocks to drop must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.fraction is not None:
            raise self.invalid("fraction", "give count or fraction, not both")
        if self.blocks and (self.count is not None or self.fraction is not None):
            raise self.invalid("blocks", "blocks names what to drop; do not give count or fraction with it")
        if self.blocks and (self.iterative or "metric" in self._given):
            raise self.invalid("blocks", "blocks named by hand are not ranked: iterative and metric do not apply")
        if self.damp < 0.0:
            raise self.invalid("damp", f"the ridge term cannot be negative, got {self.damp}")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        start = time.perf_counter()
        context = analyses.context
        found = analyses.get(ResidualBlocks, graph)
        bindings = context.bindings(graph)
        cost = estimate_cost(graph, bindings=bindings)
        metric, report_metric = self._metric(graph)
        report = DropReport(report_metric, self.granularity, params_before=cost.total_params,
                            params_after=cost.total_params, macs_before=cost.total_macs, macs_after=cost.total_macs)
        candidates = [b for b in found.select(self.granularity) if b.droppable]
        report.message = self._nothing_to_do(found, candidates)
        if report.message:
            return PassResult(graph, modified=False, stats=report)

        baseline = self._baseline(graph, context) if metric in MEASURED and not self.blocks else None
        scores = self._scores(graph, found.select(self.granularity), context, metric, baseline)
        structure = structure_hash(graph)
        original = graph.clone() if self.recover else None
        if self.blocks:
            chosen, replaced = [self._named(found, name) for name in self.blocks], {}
            for block in chosen:
                drop_block(graph, block, replaced)
        else:
            wanted = self._how_many(len(candidates))
            if wanted == 0:
                report.message = (f"fraction={self.fraction} of {len(candidates)} candidate blocks rounds down to 0")
                self._fill(report, found, scores, [])
                return PassResult(graph, modified=False, stats=report)
            iterative = self.iterative if self.iterative is not None else metric in MEASURED
            chosen = self._drop_iteratively(graph, wanted, context, metric, baseline, scores) if iterative else \
                self._drop_ranked(graph, candidates, scores, wanted)
            if len(chosen) < wanted:
                report.message = f"only {len(chosen)} of {wanted} blocks could be dropped without overlapping"
        if original is not None:
            report.recovery = recover(original, graph, [b.merge for b in chosen], context.calibration_batches(),
                                      damp=self.damp)
        self._check_runs(graph, context)
        after = estimate_cost(graph, bindings=bindings)
        report.params_after, report.macs_after = after.total_params, after.total_macs
        # blocks found after earlier drops (iterative) are named as in the graph the pass received
        names = {(b.merge, b.kind): b.name for b in found}
        self._fill(report, found, scores, [names.get((b.merge, b.kind), b.name) for b in chosen])
        report.seconds = time.perf_counter() - start
        recipe = DropRecipe(structure, report.dropped, __version__)
        graph.meta["drop_recipes"] = [*graph.meta.get("drop_recipes", []), recipe]
        return PassResult(graph, modified=True, stats=report)

    # ------------------------------------------------------------ choosing
    def _nothing_to_do(self, found: BlockReport, candidates: list[ResidualBlock]) -> str:
        """Why nothing can be dropped ("" when something can); asking for more than there is is an error."""
        if not found.blocks:
            return "no residual blocks found in the graph: nothing to drop"
        if not candidates and not self.blocks:
            why = "; ".join(f"{b.name}: {b.why_not}" for b in found.select(self.granularity) if not b.droppable)
            return (f"no droppable block at granularity {self.granularity!r} among {len(found.blocks)} blocks"
                    + (f" ({why})" if why else ""))
        if self.count is not None and self.count > len(candidates):
            raise GraphoptError(f"drop-layers: count={self.count}, but the graph has only {len(candidates)} droppable "
                                f"blocks at granularity {self.granularity!r}: {', '.join(b.name for b in candidates)}")
        return ""

    def _how_many(self, available: int) -> int:
        if self.fraction is not None:
            return int(math.floor(self.fraction * available + 1e-9))
        return self.count if self.count is not None else 1

    @staticmethod
    def _named(found: BlockReport, name: str) -> ResidualBlock:
        block = found.get(name)
        if block is None:
            raise GraphoptError(f"drop-layers: no block named {name!r}; blocks: {', '.join(b.name for b in found)}")
        if not block.droppable:
            raise GraphoptError(f"drop-layers: block {name!r} cannot be dropped: {block.why_not}")
        return block

    def _metric(self, graph: Graph) -> tuple[str, str]:
        """(the metric in force, how the report names it)."""
        return ("cosine", "named blocks") if self.blocks else resolve_metric(graph, self.metric)

    @staticmethod
    def _baseline(graph: Graph, context: RunContext) -> Baseline:
        """The dense model's outputs (and loss, with labelled calibration data and a run loss) once for all scores."""
        if context.loss is not None:
            pairs = context.calibration_batches(targets=True)
            return Baseline(graph, [p[0] for p in pairs], [p[1] for p in pairs], context.loss)
        return Baseline(graph, context.calibration_batches())

    def _scores(self, graph: Graph, blocks: list[ResidualBlock], context: RunContext, metric: str,
                baseline: Baseline | None) -> dict[str, float]:
        """The metric for every block of the granularity (none for hand-named blocks without data)."""
        if self.blocks and context.calibration_data is None and context.example_inputs is None:
            return {}
        if baseline is not None:
            droppable = [b for b in blocks if b.droppable]
            batches = [p[0] for p in context.calibration_batches(targets=True)] if baseline.loss is not None \
                else context.calibration_batches()
            return measured_scores(graph, droppable, batches, baseline, metric)
        return similarity_scores(graph, blocks, context.calibration_batches(), metric)

    @staticmethod
    def _drop_ranked(graph: Graph, candidates: list[ResidualBlock], scores: dict[str, float],
                     wanted: int) -> list[ResidualBlock]:
        """Drop the `wanted` lowest-scored blocks, skipping any that overlaps one already chosen."""
        chosen, used = [], set()
        for block in sorted(candidates, key=lambda b: scores[b.name]):
            if len(chosen) == wanted:
                break
            span = set(block.nodes)
            if span & used:
                continue
            chosen.append(block)
            used |= span
        replaced: dict = {}
        for block in chosen:
            drop_block(graph, block, replaced)
        return chosen

    def _drop_iteratively(self, graph: Graph, wanted: int, context: RunContext, metric: str,
                          baseline: Baseline | None, first: dict[str, float]) -> list[ResidualBlock]:
        """Greedy: find and score the blocks of the current graph, drop the lowest, repeat. A measured metric
        scores each candidate together with the blocks already dropped (against the dense model), as SLEB does;
        `first` holds the scores of the graph as received (the first step's)."""
        chosen = []
        bar = ProgressBar(f"drop-layers ({metric}, greedy)", wanted, enabled=self.progress and baseline is not None)
        for step in range(wanted):
            found = find_blocks(graph, bindings=context.bindings(graph))
            candidates = [b for b in found.select(self.granularity) if b.droppable]
            if not candidates:
                break
            scores = first if step == 0 else self._scores(graph, candidates, context, metric, baseline)
            best = min(candidates, key=lambda b: scores[b.name])
            drop_block(graph, best)
            chosen.append(best)
            bar.step()
        return chosen

    # ------------------------------------------------------------ finishing
    @staticmethod
    def _check_runs(graph: Graph, context: RunContext) -> None:
        """graphopt never returns a broken model: the dropped graph must verify and run on the example inputs."""
        graph.verify()
        if context.example_inputs is None:
            return
        try:
            run_graph(graph, context.example_inputs)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bug in dropping, reported as such
            raise RuntimeError(f"drop-layers: the dropped graph fails on the example inputs: {exc}") from exc

    @staticmethod
    def _fill(report: DropReport, found: BlockReport, scores: dict[str, float], dropped: list[str]) -> None:
        report.dropped = dropped
        report.rows = [BlockRow(b.name, b.kind, b.params, b.macs, scores.get(b.name), b.name in dropped,
                                b.droppable, b.why_not) for b in found]
