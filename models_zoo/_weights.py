"""Give freshly initialised zoo models the statistics of a trained network.

Fresh models have BatchNorm running stats of exactly 0/1, norm affines of 1/0
and LayerScale gammas near zero, which makes BN folding, norm fusion and
residual-branch passes look correct even when they are not. This module
randomises those parameters and then re-estimates BN running statistics from
a forward pass, so outputs stay O(1) while every statistic is non-trivial.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _is_norm(module: nn.Module) -> bool:
    # Hand-written norms (RMSNorm, channels-first LayerNorm) are recognised by
    # name, as there is no shared base class to test against.
    if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
        return True
    name = type(module).__name__
    return name.endswith(("Norm", "Norm2d")) and isinstance(getattr(module, "weight", None), nn.Parameter)


@torch.no_grad()
def randomize_norm_affines(model: nn.Module) -> None:
    """Scale ~ U(0.5, 1.5) and shift ~ N(0, 0.1) for every norm layer."""
    for module in model.modules():
        if not _is_norm(module):
            continue
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            weight.uniform_(0.5, 1.5)
        if isinstance(bias, torch.Tensor):
            bias.normal_(0.0, 0.1)


@torch.no_grad()
def randomize_layer_scales(model: nn.Module) -> None:
    """LayerScale gammas start near 1e-6; trained ones are O(0.1)."""
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "gamma" and param.dim() == 1:
            param.uniform_(0.1, 0.5)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Set BN running stats to the statistics of `inputs` flowing through `model`.

    Only the BN layers run in training mode, so dropout and stochastic depth
    stay off and the statistics are those an eval-mode forward will see.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    was_training = model.training
    model.eval()
    momenta = []
    for bn in bns:
        momenta.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its stats
        bn.train()
    try:
        model(*inputs)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            bn.eval()
        model.train(was_training)


def make_trained_looking(model: nn.Module, calibration_inputs: tuple[torch.Tensor, ...]) -> None:
    """Randomise norm/LayerScale parameters, then calibrate BN statistics."""
    randomize_norm_affines(model)
    randomize_layer_scales(model)
    calibrate_batchnorm(model, calibration_inputs)
