"""Pipeline text: parsing, printing back, typed options, errors with close matches, the registry and plug-ins."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from typing import ClassVar, Literal

import pytest

from graphopt.passmanager import (
    NamedPipeline,
    Pass,
    PassDefinitionError,
    PassManager,
    PassResult,
    PipelineError,
    UnknownOptionError,
    UnknownPassError,
    list_passes,
    lookup,
    option,
    register_pass,
    register_pipeline,
    unregister,
)
from graphopt.passmanager import registry


class ToyOptions(Pass):
    """Does nothing; declares one option of every supported type."""

    ratio: float = option(0.5, "fraction to remove")
    criterion: Literal["l1", "l2", "random"] = "l2"
    steps: int = 1
    flag: bool = False
    mode: str = "int8"
    layers: list[str] = []
    sizes: list[int] = [1, 2]
    limit: float | None = None

    def run(self, graph, analyses):
        return PassResult(graph, modified=False)


class NoOptions(Pass):
    """Does nothing, without options."""

    def run(self, graph, analyses):
        return PassResult(graph, modified=False)


@pytest.fixture(autouse=True)
def toy_passes():
    register_pass("toy-options")(ToyOptions)
    yield
    unregister("toy-options")


@pytest.mark.parametrize("text", [
    "fold-batchnorm,eliminate-dead-code,canonicalize",
    "fold-constants{max_elements=10}",
    "toy-options{ratio=0.25,criterion=l1}",
    "toy-options{criterion=random,ratio=0.5,steps=3,flag=true}",
    'toy-options{layers=[layer1.0.conv1,"a b",x/y],sizes=[],limit=none}',
    'toy-options{mode="has,comma",limit=1e-06}',
    'toy-options{mode="none",layers=["quote\\"d"]}',
    "remove-identity,toy-options{steps=-2},canonicalize,merge-reshapes",
    "",
])
def test_parse_print_round_trip(text):
    pm = PassManager.parse(text)
    assert str(pm) == text
    again = PassManager.parse(str(pm))
    assert [str(s) for s in again.steps] == [str(s) for s in pm.steps]
    assert [s.option_values() for s in again.steps if isinstance(s, Pass)] == [
        s.option_values() for s in pm.steps if isinstance(s, Pass)
    ]


def test_whitespace_and_number_spelling_normalise():
    pm = PassManager.parse("  remove-identity ,\n toy-options{ ratio = .5 , steps = 0x10 , flag=YES } ")
    assert str(pm) == "remove-identity,toy-options{ratio=0.5,steps=16,flag=true}"


def test_options_are_typed():
    (p,) = PassManager.parse('toy-options{ratio=1,steps=3,flag=false,layers=[a,b],sizes=[4,5],mode="none",limit=2}').steps
    assert p.ratio == 1.0 and isinstance(p.ratio, float)
    assert p.steps == 3 and p.flag is False
    assert p.layers == ["a", "b"] and p.sizes == [4, 5]
    assert p.mode == "none"  # quoted: a string, not None
    assert p.limit == 2.0
    defaults = ToyOptions()
    assert defaults.criterion == "l2" and defaults.limit is None and defaults.layers == []
    defaults.layers.append("x")
    assert ToyOptions().layers == []  # a list default is not shared between instances


def test_passes_built_in_python_print_as_pipeline_text():
    pm = PassManager([ToyOptions(ratio=0.75, layers=["fc"]), "eliminate-dead-code", NoOptions])
    assert str(pm) == "toy-options{ratio=0.75,layers=[fc]},eliminate-dead-code,no-options"
    parsed = PassManager.parse("toy-options{ratio=0.75,layers=[fc]}").steps[0]
    assert parsed.option_values() == ToyOptions(ratio=0.75, layers=["fc"]).option_values()
    # an option changed after construction still prints, so the text describes the pass that runs
    late = ToyOptions(steps=2)
    late.flag = True
    assert str(late) == "toy-options{steps=2,flag=true}"


def test_named_pipeline_is_one_step_that_prints_as_its_name():
    pm = PassManager.parse("canonicalize")
    (step,) = pm.steps
    assert isinstance(step, NamedPipeline)
    assert [s.name for s in step.steps] == [
        "remove-identity", "merge-reshapes", "fold-constants", "fold-batchnorm", "eliminate-dead-code"
    ]
    assert str(pm) == "canonicalize"


def test_unknown_pass_lists_close_matches():
    with pytest.raises(UnknownPassError) as info:
        PassManager.parse("remove-identity,fold-batchnrom{x=1}")
    message = str(info.value)
    assert "unknown pass 'fold-batchnrom'" in message
    assert "did you mean 'fold-batchnorm'?" in message
    # the caret points at the bad name
    assert "remove-identity,fold-batchnrom{x=1}\n" + " " * 18 + "^" in message


def test_unknown_option_lists_close_matches_and_the_pass_options():
    with pytest.raises(UnknownOptionError) as info:
        PassManager.parse("toy-options{ration=0.5}")
    message = str(info.value)
    assert "pass 'toy-options' has no option 'ration'; did you mean 'ratio'" in message
    assert "ratio (float)" in message and "criterion (one of l1, l2, random)" in message
    with pytest.raises(UnknownOptionError, match="did you mean 'max_elements'"):
        PassManager.parse("fold-constants{max_element=3}")
    with pytest.raises(UnknownOptionError, match="has no option 'rattio'; did you mean 'ratio'"):
        ToyOptions(rattio=0.2)  # keyword arguments get the same help


@pytest.mark.parametrize("text, expected", [
    ("toy-options{ratio=abc}", "option 'ratio' of pass 'toy-options' expects float: got 'abc', not a number"),
    ("toy-options{criterion=randm}", "'randm' is not one of l1, l2, random; did you mean 'random'?"),
    ("toy-options{flag=maybe}", "write true or false"),
    ("toy-options{steps=1.5}", "not an integer"),
    ("toy-options{layers=a}", "write a list as [a,b,c]"),
    ("toy-options{ratio=[1]}", "got a list"),
    ("toy-options{ratio=0.1,ratio=0.2}", "option 'ratio' is given twice"),
    ("toy-options{ratio=0.1", "expected '}' but found the end of the text"),
    ("toy-options{ratio}", "expected '=' but found '}'"),
    ("remove-identity merge-reshapes", "expected ',' between passes"),
    ("remove-identity,,merge-reshapes", "expected a pass name but found ','"),
    ('toy-options{mode="open}', "unterminated string"),
    ("toy-options{layers=[[a]]}", "lists cannot be nested"),
    ("canonicalize{max_iterations=2}", "pipeline 'canonicalize' takes no options"),
])
def test_malformed_pipelines_say_what_is_wrong(text, expected):
    with pytest.raises(PipelineError) as info:
        PassManager.parse(text)
    assert expected in str(info.value)
    assert text.split("\n")[0] in str(info.value)  # the text is quoted with a caret


def test_python_options_are_type_checked_too():
    with pytest.raises(PipelineError, match="expects int"):
        ToyOptions(steps=True)
    with pytest.raises(PipelineError, match="expects list"):
        ToyOptions(layers="fc")


def test_pass_definition_errors_are_aimed_at_the_author():
    with pytest.raises(PassDefinitionError, match="verify_tolerance='bounded' but no rtol/atol"):
        type("Quantish", (Pass,), {"verify_tolerance": "bounded", "run": lambda self, g, a: None})
    with pytest.raises(PassDefinitionError, match="option 'table': unsupported option type dict"):
        type("Bad", (Pass,), {"__annotations__": {"table": dict}, "table": {}})
    with pytest.raises(PassDefinitionError, match="'name' is reserved"):
        type("Bad2", (Pass,), {"__annotations__": {"name": str}})
    with pytest.raises(PassDefinitionError, match="already registered"):
        register_pass("toy-options")(NoOptions)
    with pytest.raises(PassDefinitionError, match="is not valid"):
        register_pass("bad name{")(NoOptions)
    with pytest.raises(PassDefinitionError, match="does not define run"):
        register_pass("no-run")(type("NoRun", (Pass,), {}))


def test_bounded_tolerance_may_come_from_an_inherited_method():
    from graphopt.passmanager import Tolerance

    class Quantize(Pass):
        verify_tolerance = "bounded"
        bits: int = 8

        def tolerance(self):
            return Tolerance("bounded", 0.0, 2.0 ** -self.bits)

        def run(self, graph, analyses):
            return PassResult(graph, False)

    class Quantize4(Quantize):
        bits: int = 4

    assert Quantize4().tolerance() == Tolerance("bounded", 0.0, 1 / 16)
    assert Quantize(bits=2).tolerance().atol == 0.25


def test_classvar_annotations_are_not_options():
    class WithConstants(Pass):
        table: ClassVar[dict] = {}
        threshold: float = 1.0

        def run(self, graph, analyses):
            return PassResult(graph, False)

    assert list(WithConstants.options) == ["threshold"]
    assert WithConstants.name == "with-constants"


def test_registry_lists_builtin_passes_with_descriptions():
    listing = list_passes()
    for name in ("fold-batchnorm", "eliminate-dead-code", "fold-constants", "remove-identity", "merge-reshapes",
                 "canonicalize"):
        assert listing[name]


def test_named_pipelines_cannot_contain_themselves():
    register_pipeline("loop-a", "remove-identity,loop-b")
    register_pipeline("loop-b", "loop-a")
    try:
        with pytest.raises(PipelineError, match="contains itself: loop-a -> loop-b -> loop-a"):
            PassManager.parse("loop-a")
    finally:
        unregister("loop-a")
        unregister("loop-b")


# ------------------------------------------------------------------ plug-ins
class PluginPass(Pass):
    """A pass shipped by another distribution."""

    level: int = 1

    def run(self, graph, analyses):
        return PassResult(graph, modified=False)


def test_entry_point_plugins_are_discovered(monkeypatch):
    module = types.ModuleType("fake_graphopt_plugin")
    module.PluginPass = PluginPass

    def register_on_import():
        @register_pass("plugin-module-pass")
        class ModulePass(NoOptions):
            """Registered when the plug-in module is imported."""

        return ModulePass

    module_two = types.ModuleType("fake_graphopt_plugin_two")
    monkeypatch.setitem(sys.modules, "fake_graphopt_plugin", module)
    monkeypatch.setitem(sys.modules, "fake_graphopt_plugin_two", module_two)
    real = importlib.metadata.entry_points

    class ImportingEntryPoint(importlib.metadata.EntryPoint):
        def load(self):
            register_on_import()
            return module_two

    def fake_entry_points(**params):
        if params.get("group") == "graphopt.passes":
            return [
                importlib.metadata.EntryPoint("plugin-pass", "fake_graphopt_plugin:PluginPass", "graphopt.passes"),
                ImportingEntryPoint("more-passes", "fake_graphopt_plugin_two", "graphopt.passes"),
                importlib.metadata.EntryPoint("broken", "no_such_module_for_graphopt:X", "graphopt.passes"),
            ]
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_loaded_groups", set())
    try:
        with pytest.warns(UserWarning, match="could not load graphopt.passes plug-in 'broken'"):
            pm = PassManager.parse("plugin-pass{level=3},plugin-module-pass")
        assert lookup("plugin-pass") is PluginPass
        assert str(pm) == "plugin-pass{level=3},plugin-module-pass"
    finally:
        unregister("plugin-pass")
        unregister("plugin-module-pass")
