"""TVM back-end on every zoo model (tiny config): untuned builds match torch within 1e-4.

Untuned builds are slow to run but quick to make (about 2-6 s a model on 2 cores); tuning is
tested on small graphs in test_tvm.py. Every build here must warn that it is untuned.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnx")

import torch  # noqa: E402

from graphopt.backends import tvm as gtvm  # noqa: E402

from conftest import traced_zoo_model  # noqa: E402


@pytest.fixture(scope="module")
def tvm_work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tvm_zoo_db")


def test_zoo_model_compiles_and_matches_torch(zoo_name, tvm_work_dir):
    model, inputs, graph = traced_zoo_model(zoo_name)
    with pytest.warns(gtvm.UntunedWarning, match="no tuning records"):
        module = gtvm.compile(graph, example_inputs=inputs, work_dir=tvm_work_dir, progress=False)
    with torch.no_grad():
        expected = model(*inputs)
    got = module(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
