"""Per-layer sensitivity: the output error when only one layer is quantized, and which layers to keep float.

Quantization error is not spread evenly: a few layers (often the first conv,
the classifier, layers after activation outliers) account for most of it.
Measuring each layer alone ranks them; keeping the worst few in float buys
back most of the accuracy for a small share of the speed-up.
"""

from __future__ import annotations

from typing import Callable, Sequence

from graphopt.progress import ProgressBar

ErrorOf = Callable[[list[str]], float]  # relative output error with exactly these layers quantized


def sensitivity(names: Sequence[str], error_of: ErrorOf, *, progress: bool = True) -> dict[str, float]:
    """Layer name -> relative output error with only that layer quantized."""
    bar = ProgressBar("sensitivity", len(names), enabled=progress)
    result = {}
    for name in names:
        result[name] = error_of([name])
        bar.step()
    return result


def choose_float_layers(errors: dict[str, float], error_of: ErrorOf, *, keep_float: int = 0,
                        max_error: float | None = None) -> list[str]:
    """The layers to leave float: the `keep_float` most sensitive, or, with `max_error`, the fewest most
    sensitive ones after whose removal the error of quantizing all the rest is at most `max_error`."""
    ranked = sorted(errors, key=lambda n: -errors[n])
    if max_error is None:
        return ranked[:keep_float]
    # the error falls (roughly) monotonically as sensitive layers are kept float: bisect the count
    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi) // 2
        if error_of(ranked[mid:]) <= max_error:
            hi = mid
        else:
            lo = mid + 1
    return ranked[:lo]
