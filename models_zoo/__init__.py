"""Reference architectures used by graphopt's tests and benchmarks (installed as graphopt.models_zoo).

    >>> from graphopt import models_zoo
    >>> model, inputs = models_zoo.get("resnet18", "tiny")
    >>> out = model(*inputs)

Every model is written the way real model code is (torchvision, timm and
Hugging Face idioms: in-place activations, functional calls, view/permute,
chunk/unbind, torch.cat), so the tracer and passes see realistic graphs.
Weights are deterministic for a seed and look trained: BatchNorm statistics
and norm affines are non-trivial.
"""

from __future__ import annotations

from typing import Any

import torch

from . import (  # noqa: F401  (imported to register their models)
    bert,
    convnext,
    densenet,
    efficientnet,
    levit,
    llama,
    mlp_mixer,
    mobilenet_v2,
    mobilenet_v3,
    mobilevit,
    nfnet,
    regnet,
    resnet,
    swin,
    unet,
    vgg,
    vit,
)
from ._registry import ModelSpec, get, list_models, spec

__all__ = ["ModelSpec", "dynamic_shapes", "get", "list_models", "spec"]


def dynamic_shapes(name: str) -> tuple[dict[int, Any], ...]:
    """`dynamic_shapes` for `torch.export.export(model, inputs, ...)`, one dict per input.

    Every axis listed in `spec(name).dynamic_axes` is marked `Dim.AUTO`, so
    export infers the ranges (e.g. Llama/BERT sequence length) and equalities
    (BERT's ids and mask share their sequence length) itself.
    """
    axes = spec(name).dynamic_axes
    n_inputs = max(axes) + 1 if axes else 0
    return tuple(
        {axis: torch.export.Dim.AUTO for axis in axes.get(i, {})} for i in range(n_inputs)
    )
