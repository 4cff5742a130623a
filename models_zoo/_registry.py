"""Registry of zoo architectures: specs, per-size configs and the `get` builder.

Architecture modules register a factory with `@register(...)`; the public
functions in `graphopt.models_zoo` are thin wrappers around this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, TypeVar

import torch
from torch import nn

from ._weights import make_trained_looking

AxisKind = str  # "batch" | "seq"


class InputSpec(Protocol):
    """How to make example inputs for one size of a model."""

    def make(self, batch_size: int) -> tuple[torch.Tensor, ...]: ...

    def dynamic_axes(self) -> dict[int, dict[int, AxisKind]]: ...

    def numel_per_sample(self) -> int: ...


@dataclass(frozen=True)
class ImageInputs:
    """A single float image batch of shape (B, channels, height, width)."""

    height: int
    width: int
    channels: int = 3

    def make(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch_size, self.channels, self.height, self.width),)

    def dynamic_axes(self) -> dict[int, dict[int, AxisKind]]:
        return {0: {0: "batch"}}

    def numel_per_sample(self) -> int:
        return self.channels * self.height * self.width


@dataclass(frozen=True)
class TokenInputs:
    """int64 token ids of shape (B, seq_len), optionally with an attention mask.

    Rows after the first get right-padding (pad id 0, mask 0) so masks are not
    trivially all-ones; the first row is always full so no row is fully masked.
    """

    vocab_size: int
    seq_len: int
    attention_mask: bool = False

    def make(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        # Start at 1 so that id 0 only ever means padding.
        ids = torch.randint(1, self.vocab_size, (batch_size, self.seq_len), dtype=torch.int64)
        if not self.attention_mask:
            return (ids,)
        mask = torch.ones(batch_size, self.seq_len, dtype=torch.int64)
        step = max(1, self.seq_len // 8)
        for row in range(1, batch_size):
            pad = min(self.seq_len - 1, (row % 4) * step)
            if pad:
                mask[row, -pad:] = 0
                ids[row, -pad:] = 0
        return (ids, mask)

    def dynamic_axes(self) -> dict[int, dict[int, AxisKind]]:
        axes = {0: "batch", 1: "seq"}
        n_inputs = 2 if self.attention_mask else 1
        return {i: dict(axes) for i in range(n_inputs)}

    def numel_per_sample(self) -> int:
        return self.seq_len


@dataclass(frozen=True)
class Size:
    """One named size of a model: constructor kwargs plus its example inputs."""

    inputs: InputSpec
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def size(inputs: InputSpec, **kwargs: Any) -> Size:
    """Shorthand used by the architecture modules' size tables."""
    return Size(inputs=inputs, kwargs=kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a zoo model.

    `dynamic_axes` maps input index -> {axis: "batch" | "seq"} for the axes that
    may vary between calls (and may be exported as dynamic).
    """

    name: str
    family: str
    sizes: tuple[str, ...]
    description: str
    dynamic_axes: dict[int, dict[int, AxisKind]] = field(hash=False, compare=True)


@dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    factory: Callable[..., nn.Module]
    size_table: Mapping[str, Size]


_REGISTRY: dict[str, _Entry] = {}

_F = TypeVar("_F", bound=Callable[..., nn.Module])


def register(
    name: str,
    *,
    family: str,
    description: str,
    sizes: Mapping[str, Size],
) -> Callable[[_F], _F]:
    """Decorator: register `factory(**size.kwargs) -> nn.Module` under `name`."""
    if "tiny" not in sizes:
        raise ValueError(f"model {name!r} must define a 'tiny' size")

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        # Every size of a model takes the same kind of input, so tiny speaks for all.
        spec = ModelSpec(
            name=name,
            family=family,
            sizes=tuple(sizes),
            description=description,
            dynamic_axes=sizes["tiny"].inputs.dynamic_axes(),
        )
        _REGISTRY[name] = _Entry(spec=spec, factory=factory, size_table=dict(sizes))
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def spec(name: str) -> ModelSpec:
    """The static description of `name`; KeyError listing the choices if unknown."""
    stored = _entry(name).spec
    # A fresh dict each time, so a caller editing it cannot corrupt the registry.
    axes = {index: dict(axis_kinds) for index, axis_kinds in stored.dynamic_axes.items()}
    return dataclasses.replace(stored, dynamic_axes=axes)


def _size(entry: _Entry, size_name: str) -> Size:
    try:
        return entry.size_table[size_name]
    except KeyError:
        choices = ", ".join(entry.spec.sizes)
        raise KeyError(
            f"unknown size {size_name!r} for model {entry.spec.name!r}; choose one of: {choices}"
        ) from None


def _calibration_batch(inputs: InputSpec) -> int:
    # Enough samples for stable BN statistics on small inputs, but keep the
    # one-off calibration forward of a 224x224 model cheap.
    return max(2, min(8, (1 << 16) // max(1, inputs.numel_per_sample())))


def get(
    name: str,
    size: str = "tiny",
    *,
    batch_size: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build model `name` at `size` in eval mode, with example inputs (batch first).

    Weights and inputs depend only on `seed`. With `device="meta"` the model is
    built without allocating weights (for tracing very large configs) and the
    norm randomisation / BN calibration is skipped.
    """
    entry = _entry(name)
    cfg = _size(entry, size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    on_meta = device.type == "meta"

    # fork_rng keeps the caller's global RNG stream untouched by building a model.
    # Only the CPU generator is seeded: weights and inputs are always drawn on
    # CPU (then moved), so they are identical whatever the target device, and
    # torch.manual_seed would also reseed (unrestored) CUDA generators.
    with torch.random.fork_rng(devices=[]), torch.device("meta" if on_meta else "cpu"):
        torch.default_generator.manual_seed(seed)
        model = entry.factory(**cfg.kwargs)
        with torch.device("cpu"):
            inputs = cfg.inputs.make(batch_size)
            if not on_meta:
                make_trained_looking(model, cfg.inputs.make(_calibration_batch(cfg.inputs)))
    model.eval()
    if device.type not in ("cpu", "meta"):
        model = model.to(device)
    return model, tuple(t.to(device) for t in inputs)
