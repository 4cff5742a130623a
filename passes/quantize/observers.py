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


class BeforeActivation(Observer):
    """A value read only by a saturating activation `f` (SiLU, GELU, sigmoid, ...): the range, within the `base`
    observer's, that minimises the squared error of `f`'s output rather than of the value's.

    A conv's output is quantized before its activation when ONNX Runtime cannot fuse that activation into the
    integer conv (only ReLU / ReLU6 / clip fuse). The input's far negative tail then costs resolution for
    values SiLU maps to about 0: on EfficientNet the conv outputs in front of a SiLU made half of the int8
    error. Searching the low and then the high end (twice, 40 steps each) against `f` on a sample recovers
    part of it (tests/test_quantize.py).
    """

    STEPS = 40

    def __init__(self, base: Observer, f: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base, self.f = base, f
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(0)

    def observe(self, x: torch.Tensor) -> None:
        self.base.observe(x)
        if x.numel():
            self.samples.append(_sample(x, self.generator))

    def range(self) -> tuple[float, float]:
        lo, hi = self.base.range()
        if not self.samples or hi == lo:
            return lo, hi
        values = torch.cat(self.samples)
        exact = self.f(values)

        def error(candidate: tuple[float, float]) -> float:
            scale, zero = qparams(*candidate)
            q = (torch.clamp(torch.round(values / scale) + zero, QMIN, QMAX) - zero) * scale
            return float((self.f(q) - exact).pow(2).mean())

        best, best_error = (lo, hi), error((lo, hi))
        for _ in range(2):
            for i in range(1, self.STEPS):
                for candidate in ((lo * (1 - i / self.STEPS), best[1]), (best[0], hi * (1 - 0.9 * i / self.STEPS))):
                    e = error(candidate)
                    if e < best_error:
                        best, best_error = candidate, e
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
