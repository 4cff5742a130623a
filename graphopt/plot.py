"""The report plot: latency against accuracy (or output drift) per stage, and params per layer before/after.

`plot_stages(stages, path)` writes a PNG with two panels:

- left: one point per stage, latency (ms) on x, accuracy (higher is better) or output drift
  (lower is better) on y, labelled with the stage name and its parameter count;
- right: parameters per layer, the first stage's bars ("before") beside the last stage's ("after").

A stage is a `Stage` or any object or mapping with `name`, `latency` (seconds), `accuracy`
(a fraction, or None) or `drift` (relative output error, or None) and `params` (layer name ->
parameter count, in model order). matplotlib is an optional dependency (`pip install
graphopt[plot]`); it is drawn with the Agg back-end, so no display is needed. This module
imports nothing heavy from graphopt (no torch), so a report loaded from an artifact plots too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from graphopt.errors import GraphoptError

INSTALL_HINT = "pip install graphopt[plot]"


class PlotDependencyError(GraphoptError, ImportError):
    """matplotlib is not installed: plots need the [plot] extra."""


@dataclass
class Stage:
    """One point of the plot: a model after some steps."""

    name: str
    latency: float  # seconds, median
    accuracy: float | None = None  # fraction of correct predictions, or None
    drift: float | None = None  # relative output error against the first stage, or None
    params: Mapping[str, int] = field(default_factory=dict)  # layer -> parameters, in model order
    params_total: int | None = None  # the model's parameter count (default: the sum of `params`)

    @property
    def total_params(self) -> int:
        return int(self.params_total if self.params_total is not None else sum(self.params.values()))


def params_per_layer(named_shapes: Any) -> dict[str, int]:
    """Parameters per layer from (weight name, shape) pairs: weights of rank >= 2 (the layers' own: biases and
    norm scales are not drawn), keyed by the layer's name, in the order given."""
    import math

    layers: dict[str, int] = {}
    for name, shape in named_shapes:
        if len(shape) >= 2 and ".weight" in f"{name}.":
            layer = name.split(".weight")[0]
            layers[layer] = layers.get(layer, 0) + math.prod(int(d) for d in shape)
    return layers


def require_matplotlib() -> None:
    """Raise PlotDependencyError (one line, with the install command) when matplotlib is missing."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        found = False
    if not found:
        raise PlotDependencyError(f"plotting needs matplotlib: {INSTALL_HINT}")


def as_stage(stage: Any) -> Stage:
    """A Stage from a Stage, a mapping or an object with the same fields."""
    if isinstance(stage, Stage):
        return stage
    get = stage.get if isinstance(stage, Mapping) else (lambda key, default=None: getattr(stage, key, default))
    name, latency = get("name"), get("latency")
    if name is None or latency is None:
        raise GraphoptError(f"a plot stage needs a name and a latency, got {stage!r:.80}")
    return Stage(str(name), float(latency), get("accuracy", None), get("drift", None), dict(get("params", None) or {}),
                 get("params_total", None))


def plot_stages(stages: Sequence[Any], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the two-panel PNG for `stages` to `path` and return its absolute path."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    points = [as_stage(s) for s in stages]
    if not points:
        raise GraphoptError("plot_stages needs at least one stage")
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the directory {path.parent} does not exist")
    accuracy = all(p.accuracy is not None for p in points)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.5]})
    _latency_panel(left, points, accuracy)
    _params_panel(right, points[0], points[-1])
    if title:
        figure.suptitle(title, fontsize=12)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
    return path.resolve()


def _latency_panel(axes, points: list[Stage], accuracy: bool) -> None:
    colours = [f"C{i}" for i in range(len(points))]
    xs = [p.latency * 1e3 for p in points]
    ys = [(p.accuracy * 100 if accuracy else (p.drift or 0.0)) for p in points]
    axes.plot(xs, ys, color="0.75", linestyle="--", zorder=1)
    for index, (x, y, point, colour) in enumerate(zip(xs, ys, points, colours)):
        axes.scatter([x], [y], s=90, color=colour, zorder=2, label=f"{point.name}: {point.total_params:,} params")
        axes.annotate(f"{point.total_params / 1e3:,.0f}k", (x, y), textcoords="offset points",
                      xytext=(8, 8 if index % 2 == 0 else -14), fontsize=8, color=colour)
    axes.set_xlabel("latency, median (ms)")
    axes.set_ylabel("test accuracy (%)" if accuracy else "output drift vs first stage (relative)")
    axes.set_title("latency vs " + ("accuracy (up and left is better)" if accuracy
                                     else "output drift (down and left is better)"), fontsize=10)
    axes.set_xlim(left=0, right=max(xs) * 1.35 if max(xs) > 0 else 1)
    if accuracy:
        low = min(ys)
        axes.set_ylim(max(0.0, low - max(5.0, (100 - low) * 0.5)), 100.5)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right" if accuracy else "upper right")


def _params_panel(axes, before: Stage, after: Stage) -> None:
    import numpy as np

    layers = list(before.params) + [name for name in after.params if name not in before.params]
    if not layers:
        axes.text(0.5, 0.5, "no per-layer parameters", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    xs = np.arange(len(layers))
    width = 0.42
    axes.bar(xs - width / 2, [before.params.get(n, 0) for n in layers], width, label=f"{before.name}: "
             f"{before.total_params:,}", color="C0")
    axes.bar(xs + width / 2, [after.params.get(n, 0) for n in layers], width, label=f"{after.name}: "
             f"{after.total_params:,}", color="C3")
    axes.set_xticks(xs)
    axes.set_xticklabels([_short(n) for n in layers], rotation=70, ha="right", fontsize=7)
    axes.set_ylabel("parameters")
    axes.set_title("parameters per layer, before and after", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)


def _short(name: str) -> str:
    """A layer name short enough for a tick label."""
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name if len(name) <= 28 else "…" + name[-27:]
