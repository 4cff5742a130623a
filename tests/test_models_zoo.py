"""Tests for graphopt.models_zoo: registry API, determinism, forward sanity and torch.export round trips."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from graphopt import models_zoo

REQUIRED = {
    "resnet18",
    "resnet50",
    "vgg_bn",
    "mobilenet_v2",
    "mobilenet_v3",
    "efficientnet",
    "resnext",
    "densenet",
    "convnext",
    "unet",
    "vit",
    "bert",
    "llama",
}
MODELS = models_zoo.list_models()

# Parameter counts of the reference implementations (torchvision / HF), checked on
# the meta device so no weights are allocated.
BASE_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnext": 25_028_904,
    "vgg_bn": 132_868_840,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3": 5_483_032,
    "efficientnet": 5_288_548,
    "densenet": 7_978_856,
    "convnext": 28_589_128,
    "regnet": 4_344_144,
    "vit": 86_567_656,
    "bert": 109_483_778,  # bert-base-uncased + 2-way classifier
}
# Normalizer-free models standardise conv weights instead of normalising activations: their
# per-channel conv gains stand in for norm affines.
NORM_FREE = {"nfnet"}
# 32 layers, 4096 hidden, 32 heads / 8 kv heads, 11008 intermediate, 32000 vocab, untied head.
LLAMA_7B_PARAMS = 5_933_109_248


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    # Tiny models gain nothing from intra-op threads, and OpenMP barriers thrash
    # (10 ms -> 1 s per build) when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _expected_output_shape(name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    batch = inputs[0].shape[0]
    if name == "llama":
        return (batch, inputs[0].shape[1], 1000)
    if name == "bert":
        return (batch, 2)
    if name == "unet":
        return (batch, 3, *inputs[0].shape[-2:])
    return (batch, 10)


def _run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def test_list_models_is_sorted_and_complete():
    assert MODELS == sorted(MODELS)
    assert REQUIRED <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_consistent(name):
    s = models_zoo.spec(name)
    assert s.name == name
    assert s.family in {"cnn", "transformer", "segmentation"}
    assert {"tiny", "base"} <= set(s.sizes)
    assert s.description and "\n" not in s.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]

    _, inputs = models_zoo.get(name)
    assert sorted(s.dynamic_axes) == list(range(len(inputs)))
    for index, axes in s.dynamic_axes.items():
        assert axes[0] == "batch"
        assert set(axes.values()) <= {"batch", "seq"}
        assert max(axes) < inputs[index].dim()
    has_seq = any("seq" in axes.values() for axes in s.dynamic_axes.values())
    assert has_seq == (name in {"bert", "llama"})


def test_get_rejects_unknown_names_and_sizes():
    with pytest.raises(KeyError) as excinfo:
        models_zoo.get("no_such_model")
    message = str(excinfo.value)
    assert all(name in message for name in MODELS)

    with pytest.raises(KeyError) as excinfo:
        models_zoo.spec("no_such_model")
    assert "resnet18" in str(excinfo.value)

    with pytest.raises(KeyError) as excinfo:
        models_zoo.get("llama", "huge")
    message = str(excinfo.value)
    assert all(size in message for size in ("tiny", "base", "7b"))


@pytest.mark.parametrize("name", MODELS)
def test_tiny_forward_is_finite_and_well_scaled(name):
    model, inputs = models_zoo.get(name)
    assert not any(m.training for m in model.modules())
    assert all(t.shape[0] == 2 for t in inputs)
    out = _run(model, inputs)
    assert out.shape == _expected_output_shape(name, inputs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # "Trained-looking" outputs: neither collapsed to ~0 nor exploding.
    assert 1e-2 < out.std().item() < 20
    assert out.abs().max().item() < 100


@pytest.mark.parametrize("name", MODELS)
def test_tiny_forward_is_fast(name):
    model, inputs = models_zoo.get(name)
    assert torch.get_num_threads() == 1
    _run(model, inputs)  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        _run(model, inputs)
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[1] < 0.05


@pytest.mark.parametrize("name", MODELS)
def test_get_is_deterministic_and_keeps_global_rng(name):
    rng_before = torch.get_rng_state()
    model_a, inputs_a = models_zoo.get(name, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    model_b, inputs_b = models_zoo.get(name, seed=0)
    model_c, inputs_c = models_zoo.get(name, seed=1)

    state_a, state_b, state_c = model_a.state_dict(), model_b.state_dict(), model_c.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for a, b in zip(inputs_a, inputs_b):
        assert torch.equal(a, b)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a if state_a[k].is_floating_point())
    assert any(not torch.equal(a, c) for a, c in zip(inputs_a, inputs_c))


@pytest.mark.parametrize("name", MODELS)
def test_norm_layers_look_trained(name):
    model, _ = models_zoo.get(name)
    norms = [
        m
        for m in model.modules()
        if "Norm" in type(m).__name__ and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]
    if name in NORM_FREE:
        gains = [m.gain for m in model.modules() if isinstance(getattr(m, "gain", None), nn.Parameter)]
        assert gains and not norms
        for gain in gains:
            assert not torch.allclose(gain, torch.ones_like(gain))
        return
    assert norms, "every zoo model has some normalisation"
    for norm in norms:
        assert not torch.allclose(norm.weight, torch.ones_like(norm.weight))
    for bn in (m for m in model.modules() if isinstance(m, _BatchNorm)):
        assert bn.running_var.min() > 0
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()


def test_batch_size_and_meta_device():
    _, inputs = models_zoo.get("bert", batch_size=5)
    assert [tuple(t.shape) for t in inputs] == [(5, 16), (5, 16)]
    assert all(t.dtype == torch.int64 for t in inputs)

    model, inputs = models_zoo.get("resnet18", "base", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" for t in inputs)


@pytest.mark.parametrize("name", sorted(BASE_PARAMS))
def test_base_sizes_match_reference_parameter_counts(name):
    model, inputs = models_zoo.get(name, "base", device="meta")
    assert sum(p.numel() for p in model.parameters()) == BASE_PARAMS[name]
    if models_zoo.spec(name).family == "cnn" or name == "vit":
        assert tuple(inputs[0].shape) == (2, 3, 224, 224)


def test_llama_sizes_on_meta():
    model, (input_ids,) = models_zoo.get("llama", "7b", device="meta")
    assert sum(p.numel() for p in model.parameters()) == LLAMA_7B_PARAMS
    attn = model.model.layers[0].self_attn
    assert attn.num_key_value_groups == 4  # 32 query heads share 8 kv heads
    assert input_ids.dtype == torch.int64 and input_ids.device.type == "meta"


def test_llama_is_causal_and_accepts_longer_sequences():
    model, (input_ids,) = models_zoo.get("llama")
    longer = torch.randint(1, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    logits = _run(model, (longer,))
    assert logits.shape == (2, 40, 1000)
    changed = longer.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 1000
    logits_changed = _run(model, (changed,))
    torch.testing.assert_close(logits_changed[:, :-1], logits[:, :-1])
    assert not torch.allclose(logits_changed[:, -1], logits[:, -1])


def test_bert_ignores_masked_tokens():
    model, (input_ids, attention_mask) = models_zoo.get("bert", batch_size=3)
    assert (attention_mask == 0).any(), "example inputs should include padding"
    logits = _run(model, (input_ids, attention_mask))
    scrambled = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, 7))
    torch.testing.assert_close(_run(model, (scrambled, attention_mask)), logits)


def _resize_dynamic_axes(name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """New inputs with a different batch (and shorter sequence) than `inputs`."""
    _, bigger = models_zoo.get(name, batch_size=inputs[0].shape[0] + 1, seed=1)
    resized = []
    for index, tensor in enumerate(bigger):
        for axis, kind in models_zoo.spec(name).dynamic_axes[index].items():
            if kind == "seq":
                tensor = tensor.narrow(axis, 0, tensor.shape[axis] - 5)
        resized.append(tensor)
    return tuple(resized)


@pytest.mark.parametrize("name", MODELS)
def test_export_with_dynamic_shapes_matches_eager(name):
    model, inputs = models_zoo.get(name)
    ep = torch.export.export(model, inputs, dynamic_shapes=models_zoo.dynamic_shapes(name))

    # The axes the spec calls dynamic must really be symbolic in the exported graph.
    user_inputs = set(ep.graph_signature.user_inputs)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    assert len(placeholders) == len(inputs)
    for index, node in enumerate(placeholders):
        shape = node.meta["val"].shape
        for axis in range(len(shape)):
            is_dynamic = axis in models_zoo.spec(name).dynamic_axes[index]
            assert isinstance(shape[axis], torch.SymInt) == is_dynamic, (index, axis)

    exported = ep.module()
    torch.testing.assert_close(_run(exported, inputs), _run(model, inputs))
    other = _resize_dynamic_axes(name, inputs)
    torch.testing.assert_close(_run(exported, other), _run(model, other))


@pytest.mark.slow
def test_llama_7b_exports_on_meta():
    model, inputs = models_zoo.get("llama", "7b", device="meta")
    ep = torch.export.export(model, inputs, dynamic_shapes=models_zoo.dynamic_shapes("llama"))
    out = next(n for n in ep.graph.nodes if n.op == "output").args[0][0].meta["val"]
    assert out.device.type == "meta"
    assert isinstance(out.shape[0], torch.SymInt) and isinstance(out.shape[1], torch.SymInt)
    assert out.shape[2] == 32000
