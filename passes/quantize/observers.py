"""Calibration observers: the range [lo, hi] an activation is quantized over, from the values seen on data.

Why several: min-max keeps every value representable, so one outlier stretches
the step for all others; a percentile clips the tail; MSE picks the clipping
range that minimises the quantization error of the values actually seen (the
trade-off between clipping and rounding). Observers see one batch at a time and
keep a bounded summary, so calibration memory does not grow with the data.
"""

from __future__ import annotations

from typing import Callable

import torch

SAMPLE = 1 << 16  # values kept per batch by the observers that need a sample
QMIN, QMAX = 0, 255  # uint8 activations (with int8 weights: the U8S8 kernels ONNX Runtime prefers on x86;
# with int8 activations its optimizer converts them to uint8 itself, and did not where a tensor also fed a float op)


class Observer:
    """Sees activation tensors one batch at a time; `range()` is the [lo, hi] to quantize over (lo <= 0 <= hi)."""

    def observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMax(Observer):
    """The smallest and largest value seen."""

    def __init__(self) -> None:
        self.lo, self.hi = 0.0, 0.0

    def observe(self, x: torch.Tensor) -> None:
        if x.numel():
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        return self.lo, self.hi


def _sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = x.detach().reshape(-1).float()
    if flat.numel() <= SAMPLE:
        return flat
    return flat[torch.randint(flat.numel(), (SAMPLE,), generator=generator)]


class Percentile(Observer):
    """The `percentile`-th and (100 - percentile)-th percentiles, averaged over batches."""

    def __init__(self, percentile: float = 99.99) -> None:
        self.q = percentile / 100.0
        self.los: list[float] = []
        self.his: list[float] = []
        self.generator = torch.Generator().manual_seed(0)

    def observe(self, x: torch.Tensor) -> None:
        if not x.numel():
            return
        sample = _sample(x, self.generator)
        self.los.append(float(torch.quantile(sample, 1.0 - self.q)))
        self.his.append(float(torch.quantile(sample, self.q)))

    def range(self) -> tuple[float, float]:
        if not self.los:
            return 0.0, 0.0
        return min(0.0, sum(self.los) / len(self.los)), max(0.0, sum(self.his) / len(self.his))


class MSE(Observer):
    """The clipping of the min-max range that minimises the mean squared quantization error on a sample."""

    CANDIDATES = 40

    def __init__(self) -> None:
        self.minmax = MinMax()
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(0)

    def observe(self, x: torch.Tensor) -> None:
        self.minmax.observe(x)
        if x.numel():
            self.samples.append(_sample(x, self.generator))

    def range(self) -> tuple[float, float]:
        lo, hi = self.minmax.range()
        if not self.samples or hi == lo:
            return lo, hi
        values = torch.cat(self.samples)
        best, best_error = (lo, hi), float("inf")
        for i in range(self.CANDIDATES):
            shrink = 1.0 - 0.9 * i / self.CANDIDATES
            cand = (lo * shrink, hi * shrink)
            scale, zero = qparams(*cand)
            q = torch.clamp(torch.round(values / scale) + zero, QMIN, QMAX)
            error = float(((q - zero) * scale - values).pow(2).mean())
            if error < best_error:
                best, best_error = cand, error
        return best


OBSERVERS: dict[str, Callable[..., Observer]] = {"minmax": MinMax, "percentile": Percentile, "mse": MSE}


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 (scale, zero_point) covering [lo, hi] with 0 exact.

    A range starting at 0 (after a ReLU) gets zero_point 0, which lets
    ONNX Runtime drop the ReLU in front of the quantize node.
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (QMAX - QMIN)
    if scale <= 0.0:
        return 1.0, 0
    zero = int(round(QMIN - lo / scale))
    return scale, max(QMIN, min(QMAX, zero))
