"""PassManager.run: the caller's graph is never touched, failures name the pass, instruments see every pass."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn as nn

import graphopt
from graphopt.passmanager import (
    DumpIR,
    Pass,
    PassFailedError,
    PassInstrument,
    PassManager,
    PassResult,
    Progress,
    Timing,
    Tolerance,
    Verify,
    register_pass,
    register_pipeline,
    unregister,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(y).mean((2, 3)).view(-1, 4).view(-1, 4))


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    inputs = (torch.randn(2, 3, 8, 8),)
    return graphopt.trace(model, inputs), inputs


TEST_PASSES = []


def test_pass(name):
    def wrap(cls):
        register_pass(name)(cls)
        TEST_PASSES.append(name)
        return cls

    return wrap


test_pass.__test__ = False  # a helper, not a test


@test_pass("relu-to-sigmoid")
class ReluToSigmoid(Pass):
    """Changes the function: an 'exact' pass with a bug."""

    def run(self, graph, analyses):
        hits = graph.find_nodes("relu")
        for node in hits:
            graph.replace_node(node, graph.create_node("sigmoid", node.inputs, before=node, meta=node.meta).output)
        return PassResult(graph, modified=bool(hits))


@test_pass("relu-to-sigmoid-shape")
class ReluToSigmoidShape(ReluToSigmoid):
    verify_tolerance = "shape"


@test_pass("nudge-fc")
class NudgeFc(Pass):
    """Adds `amount` to the classifier bias: within a bounded tolerance or not, depending on the amount."""

    verify_tolerance = "bounded"
    rtol = 0.0
    atol = 0.01
    amount: float = 1e-3

    def run(self, graph, analyses):
        bias = graph.node("fc").inputs[2]
        bias.set_data(bias.data + self.amount)
        return PassResult(graph, modified=True)


@test_pass("crash")
class Crash(Pass):
    """Edits the graph half-way, then raises."""

    def run(self, graph, analyses):
        graph.nodes[0].attrs["padding"] = [0, 0]
        raise ValueError("boom in crash")


@test_pass("needs-data")
class NeedsData(Pass):
    """Refuses its input on purpose, as a pass does when the user forgot calibration data."""

    def run(self, graph, analyses):
        analyses.context.calibration_batches()
        return PassResult(graph, modified=False)


@test_pass("count-nodes")
class CountNodes(Pass):
    """Reports statistics through its result; `limit` is validated when the pass is built."""

    limit: int = 100

    def validate(self):
        if self.limit < 1:
            raise self.invalid("limit", f"must be positive, got {self.limit}")

    def run(self, graph, analyses):
        return PassResult(graph, modified=False, stats={"nodes": len(graph.nodes)})


@test_pass("silent-edit")
class SilentEdit(Pass):
    """Changes the graph but says it did not."""

    def run(self, graph, analyses):
        graph.nodes[0].attrs["note"] = "edited"
        return PassResult(graph, modified=False)


@test_pass("break-types")
class BreakTypes(Pass):
    """Leaves an output typed wrongly, which the structural verifier catches."""

    def run(self, graph, analyses):
        graph.nodes[0].outputs[0].shape = (1, 2, 3)
        return PassResult(graph, modified=True)


@test_pass("bad-return")
class BadReturn(Pass):
    def run(self, graph, analyses):
        return graph


@test_pass("write-into-weight")
class WriteIntoWeight(Pass):
    """Follows the contract: replaces tensors rather than writing into them."""

    def run(self, graph, analyses):
        w = graph.node("fc").inputs[1]
        w.set_data(w.data * 1.0)
        return PassResult(graph, modified=True)


@pytest.fixture(scope="module", autouse=True)
def cleanup():
    yield
    for name in TEST_PASSES:
        unregister(name)


# ------------------------------------------------------------------ running
def test_callers_graph_is_never_mutated(traced):
    graph, inputs = traced
    before = graph.format(source=True)
    new, report = PassManager.parse("canonicalize,write-into-weight").run(graph, inputs)
    assert graph.format(source=True) == before
    assert new is not graph and len(new.nodes) < len(graph.nodes)
    assert report.modified


def test_report_records_every_pass(traced):
    graph, inputs = traced
    _, report = PassManager.parse("remove-identity,fold-batchnorm,fold-batchnorm").run(graph, inputs)
    rows = report.records
    assert [r.path for r in rows] == ["remove-identity", "fold-batchnorm", "fold-batchnorm"]
    assert rows[0].nodes_before == len(graph.nodes) and rows[0].nodes_after == len(graph.nodes) - 1
    assert rows[1].modified and not rows[2].modified  # nothing left to fold the second time
    assert rows[1].weights_after < rows[1].weights_before
    table = report.table()
    assert "fold-batchnorm" in table and f"{len(graph.nodes)} -> {len(graph.nodes) - 1}" in table
    assert table.splitlines()[-1].startswith("total") and "2 modified the graph" in table


def test_named_pipeline_runs_to_a_fixed_point(traced):
    graph, inputs = traced
    _, report = PassManager.parse("canonicalize").run(graph, inputs)
    paths = [r.path for r in report]
    assert paths[0] == "canonicalize/remove-identity"
    # the last round changed nothing, every earlier round changed something
    last_round = max(r.iteration for r in report)
    assert last_round >= 1 and not any(r.modified for r in report if r.iteration == last_round)
    assert "(round 2)" in report.table()


def test_fixed_point_stops_after_max_iterations(traced):
    graph, _ = traced
    register_pipeline("touch-forever", "write-into-weight", fixed_point=True, max_iterations=3)
    try:
        _, report = PassManager.parse("touch-forever").run(graph)
        assert [r.iteration for r in report] == [0, 1, 2]
    finally:
        unregister("touch-forever")


def test_pass_can_be_called_directly_in_place(traced):
    graph, _ = traced
    copy = graph.clone()
    result = graphopt.passmanager.lookup("remove-identity")()(copy)
    assert result.modified and result.graph is copy and not copy.find_nodes("dropout")


# ------------------------------------------------------------------ failures
def test_failing_pass_leaves_callers_graph_and_names_the_pass(traced, tmp_path):
    graph, _ = traced
    before = graph.format(source=True)
    pm = PassManager.parse("remove-identity,canonicalize,crash,fold-batchnorm", reproducer_dir=tmp_path)
    with pytest.raises(PassFailedError) as info:
        pm.run(graph)
    err = info.value
    assert graph.format(source=True) == before
    assert err.pass_name == "crash" and err.stage == "run"
    assert err.previous[0] == "remove-identity" and "fold-batchnorm" in err.previous
    assert isinstance(err.__cause__, ValueError) and isinstance(err.cause, ValueError)
    message = str(err)
    assert "pass 'crash' failed: ValueError: boom in crash" in message
    assert "passes that ran before it: remove-identity, remove-identity, merge-reshapes" in message
    assert err.reproducer and err.reproducer in message and err.reproducer.startswith(str(tmp_path))

    files = set(os.listdir(err.reproducer))
    assert {"pipeline.txt", "failing_pass.txt", "input.ir", "before_failing_pass.ir", "error.txt"} <= files
    read = lambda name: open(os.path.join(err.reproducer, name)).read()  # noqa: E731
    assert read("pipeline.txt").strip() == str(pm)
    assert read("input.ir").strip() == before
    # the graph the failing pass saw: canonicalised, and without the crash's half-done edit
    assert "batch_norm" not in read("before_failing_pass.ir") and "padding=[0,0]" not in read("before_failing_pass.ir")
    # replaying the saved graph reproduces the failure; its weights are not pickled by default
    saved = torch.load(os.path.join(err.reproducer, "graph.pt"), weights_only=False)
    assert saved.format(source=True) == read("before_failing_pass.ir").rstrip("\n")
    assert all(v.data.device.type == "meta" for v in saved.weights.values())
    assert all(v.data.device.type == "cpu" for v in graph.weights.values())  # only the saved copy
    with pytest.raises(PassFailedError, match="boom in crash"):
        PassManager.parse(read("failing_pass.txt"), reproducer_dir=None).run(saved)


def test_reproducer_keeps_the_weights_when_asked(traced, tmp_path):
    graph, _ = traced
    with pytest.raises(PassFailedError) as info:
        PassManager.parse("crash", reproducer_dir=tmp_path, reproducer_weights=True).run(graph)
    saved = torch.load(os.path.join(info.value.reproducer, "graph.pt"), weights_only=False)
    assert torch.equal(saved.weights["conv.weight"].data, graph.weights["conv.weight"].data)


def test_a_pass_refusing_its_input_writes_no_reproducer(traced, tmp_path):
    graph, _ = traced
    with pytest.raises(PassFailedError, match="needs calibration data") as info:
        PassManager.parse("needs-data", reproducer_dir=tmp_path).run(graph)
    assert info.value.reproducer is None and "bug report" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_pass_statistics_travel_in_the_report(traced):
    graph, _ = traced
    _, report = PassManager.parse("count-nodes,remove-identity,count-nodes").run(graph)
    assert report.stats("count-nodes") == [{"nodes": len(graph.nodes)}, {"nodes": len(graph.nodes) - 1}]
    assert report.records[0].stats == {"nodes": len(graph.nodes)}
    (rewrites,) = report.stats("remove-identity")  # a rewrite pass reports what each rule did
    assert rewrites.rewrites == 1 and rewrites.modified


def test_options_are_validated_when_the_pass_is_built(traced):
    from graphopt.passmanager import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="pass 'count-nodes', option 'limit': must be positive, got 0") as info:
        PassManager.parse("remove-identity,count-nodes{limit=0}")
    assert info.value.option == "limit"
    assert str(info.value).splitlines()[-1].index("^") == len("  remove-identity,count-nodes{")  # at the option
    with pytest.raises(InvalidOptionError, match="must be positive"):
        CountNodes(limit=-1)
    late = CountNodes()
    late.limit = 0  # assigned after construction: caught before the run does any work
    with pytest.raises(InvalidOptionError, match="must be positive"):
        PassManager([late]).run(traced[0])


def test_first_pass_failure_and_no_reproducer(traced):
    graph, _ = traced
    with pytest.raises(PassFailedError) as info:
        PassManager.parse("crash", reproducer_dir=None).run(graph)
    assert "none (it ran first)" in str(info.value) and info.value.reproducer is None


def test_structural_verification_after_each_pass(traced):
    graph, _ = traced
    with pytest.raises(PassFailedError) as info:
        PassManager.parse("remove-identity,break-types", reproducer_dir=None).run(graph)
    assert info.value.stage == "verify" and info.value.pass_name == "break-types"
    assert "caught by verification" in str(info.value) and "VerificationError" in str(info.value)
    # with verify_each off the broken graph gets through (that is what the option is for)
    PassManager.parse("break-types", verify_each=False).run(graph)


def test_ill_formed_input_is_reported_before_any_pass_runs(traced):
    broken = traced[0].clone()
    broken.nodes[0].outputs[0].shape = (7,)
    with pytest.raises(graphopt.VerificationError, match="failed verification"):
        PassManager.parse("crash").run(broken)


def test_pass_must_return_a_pass_result(traced):
    with pytest.raises(PassFailedError, match="must return PassResult"):
        PassManager.parse("bad-return", reproducer_dir=None).run(traced[0])


# ------------------------------------------------------------------ instruments
def test_verify_catches_a_pass_that_changes_the_outputs(traced):
    graph, inputs = traced
    with pytest.raises(PassFailedError) as info:
        PassManager.parse("canonicalize,relu-to-sigmoid", instruments=[Verify()], reproducer_dir=None).run(graph, inputs)
    assert info.value.pass_name == "relu-to-sigmoid" and info.value.stage == "Verify"
    assert "beyond its exact tolerance" in str(info.value)


def test_verify_shape_tolerance_accepts_changed_values_only(traced):
    graph, inputs = traced
    verify = Verify()
    PassManager.parse("relu-to-sigmoid-shape", instruments=[verify]).run(graph, inputs)
    assert verify.checked == ["relu-to-sigmoid-shape"]


def test_verify_bounded_tolerance_uses_the_pass_rtol_atol(traced):
    graph, inputs = traced
    assert NudgeFc().tolerance() == Tolerance("bounded", 0.0, 0.01)
    PassManager.parse("nudge-fc{amount=0.001}", instruments=[Verify()]).run(graph, inputs)
    with pytest.raises(PassFailedError, match=r"beyond its bounded\(rtol=0.0, atol=0.01\) tolerance"):
        PassManager.parse("nudge-fc{amount=0.1}", instruments=[Verify()], reproducer_dir=None).run(graph, inputs)


def test_verify_catches_a_dishonest_modified_flag(traced):
    with pytest.raises(PassFailedError, match="returned modified=False but changed the graph"):
        PassManager.parse("silent-edit", instruments=[Verify()], reproducer_dir=None).run(traced[0])


def test_verify_synthesises_inputs_when_none_are_given(traced):
    graph, _ = traced
    verify = Verify()
    PassManager.parse("canonicalize", instruments=[verify]).run(graph)
    assert "canonicalize/fold-batchnorm" in verify.checked


def test_verify_on_a_meta_device_graph_checks_structure_only():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout())
    graph = graphopt.trace(model.eval(), (torch.empty(2, 3, 8, 8, device="meta"),))
    verify = Verify()
    new, report = PassManager.parse("canonicalize", instruments=[verify]).run(graph)
    assert report.modified and not new.find_nodes("batch_norm") and verify.checked == []
    assert new.node("0").inputs[1].data.device.type == "meta"


def test_dump_ir_writes_only_after_changes(traced, tmp_path):
    graph, inputs = traced
    dump = DumpIR(tmp_path / "ir", before=True)
    PassManager.parse("fold-constants,remove-identity,fold-batchnorm,fold-batchnorm", instruments=[dump]).run(graph)
    names = sorted(os.listdir(tmp_path / "ir"))
    assert names == ["000-input.ir", "002-remove-identity-before.ir", "002-remove-identity.ir",
                     "003-fold-batchnorm-before.ir", "003-fold-batchnorm.ir"]
    assert (tmp_path / "ir" / "000-input.ir").read_text().strip() == graph.format(source=True)
    assert "dropout" not in (tmp_path / "ir" / "002-remove-identity.ir").read_text()


def test_timing_and_progress(traced):
    graph, _ = traced
    timing, stream, summary = Timing(), io.StringIO(), io.StringIO()
    timing.stream = summary
    PassManager.parse("remove-identity,canonicalize", instruments=[timing, Progress(stream)]).run(graph)
    assert len(timing.seconds["remove-identity"]) >= 3 and timing.total("fold-batchnorm") > 0
    assert "remove-identity" in summary.getvalue()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] remove-identity (")
    assert lines[1].startswith("[2/2] canonicalize/remove-identity")
    assert lines[-1].startswith("[2/2] done:")


def test_custom_instrument_sees_nested_passes_in_order(traced):
    class Recorder(PassInstrument):
        def __init__(self):
            self.events = []

        def before_pipeline(self, graph, ctx):
            self.events.append("start")

        def before_pass(self, pass_, graph, ctx):
            self.events.append(f"before {ctx.path}")

        def after_pass(self, pass_, graph, result, ctx):
            self.events.append(f"after {ctx.path} {result.modified}")

        def on_failure(self, pass_, error, ctx):
            self.events.append(f"failed {ctx.path}")

        def after_pipeline(self, graph, report, ctx):
            self.events.append("end")

    recorder = Recorder()
    PassManager.parse("fold-batchnorm", instruments=[recorder]).run(traced[0])
    assert recorder.events == ["start", "before fold-batchnorm", "after fold-batchnorm True", "end"]
    recorder.events.clear()
    with pytest.raises(PassFailedError):
        PassManager.parse("remove-identity,crash", instruments=[recorder], reproducer_dir=None).run(traced[0])
    assert recorder.events == ["start", "before remove-identity", "after remove-identity True", "before crash",
                               "failed crash"]


def test_instrument_failure_is_reported_against_the_pass():
    class Explodes(PassInstrument):
        def after_pass(self, pass_, graph, result, ctx):
            raise RuntimeError("instrument bug")

    g = graphopt.ir.Graph("g")
    x = g.add_input("x", (2,), torch.float32)
    g.outputs = [g.create_node("identity", [x]).output]
    with pytest.raises(PassFailedError, match="pass 'remove-identity' failed in instrument Explodes"):
        PassManager.parse("remove-identity", instruments=[Explodes()], reproducer_dir=None).run(g)
