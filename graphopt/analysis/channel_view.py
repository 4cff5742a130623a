"""Views of the channel groups for a person: a table of groups and a Graphviz picture coloured by group."""

from __future__ import annotations

import colorsys
import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from graphopt.errors import GraphoptError
from graphopt.analysis.channels import ChannelGroup
from graphopt.ir.graph import Graph


def group_rows(groups: list[ChannelGroup]) -> list[dict[str, str]]:
    """One row per group: id, channels, units, status and the parameters it touches."""
    rows = []
    for g in groups:
        params = sorted({s.value.name for s in g.spaces if s.value.kind == "param"})
        status = "prunable" if g.prunable else "kept: " + g.reasons[0]
        if g.prunable and not g.exact:
            status += " (inexact: " + g.inexact[0] + ")"
        rows.append({
            "group": str(g.id),
            "channels": str(g.num_channels),
            "units": f"{g.num_units} x {g.unit_size}",
            "status": status,
            "members": f"{len(g.spaces)} tensors, {len(params)} params",
            "params": ", ".join(params[:4]) + (f" (+{len(params) - 4})" if len(params) > 4 else ""),
        })
    return rows


def _colour(i: int, n: int) -> str:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.45, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def to_dot(graph: Graph, groups: list[ChannelGroup]) -> str:
    """Graphviz source: nodes filled with the colour of the prunable group their output belongs to."""
    colour_of_value: dict[int, str] = {}
    prunable = [g for g in groups if g.prunable]
    for i, group in enumerate(prunable):
        for s in group.spaces:
            colour_of_value.setdefault(id(s.value), _colour(i, len(prunable)))
    lines = ["digraph graphopt {", "  rankdir=TB; node [shape=box, style=filled, fontname=Helvetica, fontsize=10];"]
    ids = {}
    for i, value in enumerate(graph.inputs):
        ids[id(value)] = f"in{i}"
        lines.append(f'  in{i} [label="{html.escape(value.name)}\\n{value.type_str()}", shape=ellipse, fillcolor="#dddddd"];')
    for i, node in enumerate(graph.nodes):
        name = f"n{i}"
        for out in node.outputs:
            ids[id(out)] = name
        colour = colour_of_value.get(id(node.outputs[0]), "#ffffff")
        label = f"{node.name}\\n{node.op} {node.outputs[0].type_str()}"
        lines.append(f'  {name} [label="{html.escape(label)}", fillcolor="{colour}"];')
        for value in node.inputs:
            if value is not None and id(value) in ids:
                lines.append(f"  {ids[id(value)]} -> {name};")
    for j, value in enumerate(graph.outputs):
        lines.append(f'  out{j} [label="output {j}", shape=ellipse, fillcolor="#dddddd"];')
        if id(value) in ids:
            lines.append(f"  {ids[id(value)]} -> out{j};")
    lines.append("}")
    return "\n".join(lines) + "\n"


PICTURE_FORMATS = (".dot", ".svg", ".png")


def check_picture_path(path: str | os.PathLike) -> Path:
    """`path` if a picture can be written there (a known suffix, an existing folder), else a GraphoptError."""
    path = Path(path)
    if path.suffix not in PICTURE_FORMATS:
        raise GraphoptError(f"cannot write a picture as {path.name!r}: use one of {', '.join(PICTURE_FORMATS)}")
    if not path.parent.is_dir():
        raise GraphoptError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise GraphoptError(f"cannot write {path}: it is a folder")
    return path


def write_picture(graph: Graph, groups: list[ChannelGroup], path: str | os.PathLike) -> Path:
    """Write the coloured graph: `.dot` as Graphviz source, `.svg`/`.png` rendered with the `dot` program.

    The file appears atomically (written under a temporary name, then renamed).
    """
    path = check_picture_path(path)
    source = to_dot(graph, groups)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".dot":
            Path(tmp).write_text(source)
        else:
            dot = shutil.which("dot")
            if dot is None:
                raise GraphoptError("rendering needs Graphviz's `dot` program (apt-get install graphviz); "
                                   "or ask for a .dot file")
            subprocess.run([dot, f"-T{path.suffix.lstrip('.')}", "-o", tmp], input=source.encode(), check=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
