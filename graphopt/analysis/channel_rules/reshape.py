"""Channel rule of reshape: axes regroup into blocks of equal element counts, the flat index is kept."""

from __future__ import annotations

import numpy as np

from graphopt.analysis.channels import Builder, Space
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir import dims as D
from graphopt.ir.graph import Node, Value


@register_channel_rule("reshape")
def _reshape(b: Builder, node: Node) -> None:
    """Axes regroup into blocks with equal element counts; within a block the flat index is kept."""
    x, out = node.inputs[0], node.output
    blocks = _reshape_blocks(list(x.shape), list(out.shape))
    if blocks is None:
        for v in (x, out):
            b.barrier(v, f"reshape %{node.name} mixes dynamic and channel axes")
        return
    for src, dst, side in ((x, out, 0), (out, x, 1)):
        for s in b.spaces_of(src):
            touched = [blk for blk in blocks if set(blk[side]) & set(s.axes)]
            if not touched:
                continue
            if any(not isinstance(v.shape[a], int) for blk in touched for v, k in ((src, side), (dst, 1 - side))
                   for a in blk[k]):
                if _coarser_view_passes(b, s, blocks, side):
                    continue  # a (positions, channels) view: its channels cross in the channel-only space
                # Channels merged with a dynamic axis ((batch, C) -> (batch*C)) cannot be followed; dropping
                # the link instead would leave the far side's reshape target unrewritten by a removal.
                # Only this space and the far side's spaces on those axes stop: the value's other spaces
                # (its channel axis beside a window partition's merged batch) still pass.
                reason = f"reshape %{node.name} merges channel axes with a dynamic axis"
                far = {a for blk in touched for a in blk[1 - side]}
                b.barriers.setdefault(id(s), reason)
                for t in b.spaces_of(dst):
                    if far & set(t.axes):
                        b.barriers.setdefault(id(t), reason)
                continue
            _couple_through_blocks(b, s, dst, touched, side)


def _coarser_view_passes(b: Builder, s: Space, blocks, side: int) -> bool:
    """True when another space of the value lies within `s`'s axes and crosses the reshape on static blocks.

    A space over positions and channels together (Swin's (H, W, C) view of a window partition) is a finer
    view of the channel space beside it: removal only ever drops whole channels, so the channel-only
    space carries everything the finer one would, and the finer one may stop at a block with the batch.
    """
    src = s.value
    for other in b.spaces_of(src):
        if other is s or not set(other.axes) < set(s.axes):
            continue
        crossing = [blk for blk in blocks if set(blk[side]) & set(other.axes)]
        if all(isinstance(v, int) for blk in crossing for v in (src.shape[a] for a in blk[side])):
            return True
    return False


def _reshape_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes with equal products: [([0], [0]), ([1, 2], [1]), ...]."""
    blocks = []
    i = j = 0
    while i < len(src) or j < len(dst):
        bi, bj = [], []
        pi = pj = 1
        if i < len(src):
            bi.append(i)
            pi = src[i]
            i += 1
        if j < len(dst):
            bj.append(j)
            pj = dst[j]
            j += 1
        while not _dims_eq(pi, pj):
            if not (isinstance(pi, int) and isinstance(pj, int)):
                return _symbolic_blocks(src, dst)
            if pi < pj and i < len(src):
                bi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                bj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return None
        # absorb trailing size-1 axes into this block
        while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            bi.append(i)
            i += 1
        while j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            bj.append(j)
            j += 1
        blocks.append((bi, bj))
    return blocks


def _dims_eq(a, b) -> bool:
    return D.dims_equal(a, b)


def _symbolic_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Blocks when symbolic dims are involved: match them one to one, static runs in between."""
    sym_src = [i for i, d in enumerate(src) if not isinstance(d, int)]
    sym_dst = [j for j, d in enumerate(dst) if not isinstance(d, int)]
    if len(sym_src) != len(sym_dst) or any(not D.dims_equal(src[i], dst[j]) for i, j in zip(sym_src, sym_dst)):
        # e.g. (batch, seq, C) -> (batch*seq, C): the symbolic run is one block
        return _coarse_blocks(src, dst)
    blocks: list[tuple[list[int], list[int]]] = []
    pi = pj = 0
    for i, j in list(zip(sym_src, sym_dst)) + [(len(src), len(dst))]:
        sub = _reshape_blocks(src[pi:i], dst[pj:j]) if (i > pi or j > pj) else []
        if sub is None:
            return None
        blocks += [([a + pi for a in bi], [c + pj for c in bj]) for bi, bj in sub]
        if i < len(src):
            blocks.append(([i], [j]))
        pi, pj = i + 1, j + 1
    return blocks


def _coarse_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Fallback: peel static blocks off the end; everything before them is one block.

    (batch, seq, heads, d) -> (batch*seq, heads*d), GPT-2's Conv1D input: the static suffix (heads, d)
    -> (heads*d) is its own block, so the channel axes are followed while (batch, seq) -> (batch*seq)
    stays one block.
    """
    blocks: list[tuple[list[int], list[int]]] = []
    i, j = len(src), len(dst)  # exclusive ends of what is not yet in a block
    while i > 0 and j > 0 and isinstance(src[i - 1], int) and isinstance(dst[j - 1], int):
        block = _static_block_from_end(src, dst, i, j)
        if block is None:
            break
        blocks.insert(0, block)
        i, j = block[0][0], block[1][0]
    if i > 0 or j > 0:
        blocks.insert(0, (list(range(i)), list(range(j))))
    return blocks


def _static_block_from_end(src: list, dst: list, i: int, j: int) -> tuple[list[int], list[int]] | None:
    """The shortest runs src[a:i], dst[c:j] of static axes with equal products, or None."""
    a, c = i - 1, j - 1
    pi, pj = src[a], dst[c]
    while pi != pj:
        if pi < pj and a > 0 and isinstance(src[a - 1], int):
            a -= 1
            pi *= src[a]
        elif pj < pi and c > 0 and isinstance(dst[c - 1], int):
            c -= 1
            pj *= dst[c]
        else:
            return None
    return list(range(a, i)), list(range(c, j))


def _couple_through_blocks(b: Builder, s: Space, dst: Value, touched, side: int) -> None:
    src = s.value
    src_axes = [a for blk in touched for a in blk[side]]
    if not all(isinstance(dst.shape[a], int) for blk in touched for a in blk[1 - side]):
        return
    dst_axes = [a for blk in touched for a in blk[1 - side] if dst.shape[a] > 1]
    # enumerate full coordinates of the touched src axes; the flat index within a block is kept
    sizes = [src.shape[a] for a in src_axes]
    coords = np.indices(sizes).reshape(len(sizes), -1)
    total = coords.shape[1]
    src_key = np.zeros(total, dtype=np.int64)  # the src atom of each coordinate (projected onto s.axes)
    for axis, size in zip(s.axes, s.sizes):
        src_key = src_key * size + coords[src_axes.index(axis)]
    dst_coord: dict[int, np.ndarray] = {}
    for blk in touched:
        flat = np.zeros(total, dtype=np.int64)
        for axis in blk[side]:
            flat = flat * src.shape[axis] + coords[src_axes.index(axis)]
        dst_sizes = [dst.shape[a] for a in blk[1 - side]]
        for axis, part in zip(blk[1 - side], np.unravel_index(flat, dst_sizes) if dst_sizes else []):
            dst_coord[axis] = part
    dst_sorted = sorted(dst_axes)
    dst_key = np.zeros(total, dtype=np.int64)
    for axis in dst_sorted:
        dst_key = dst_key * dst.shape[axis] + dst_coord[axis]
    bijective = set(s.axes) >= {a for a in src_axes if src.shape[a] > 1}
    if bijective and (id(dst), tuple(dst_sorted)) not in b.spaces:
        ids = np.empty(total, dtype=np.int64)
        ids[dst_key] = s.atoms[src_key]
        b.space(dst, dst_sorted, ids=ids)
        return
    d = b.space(dst, dst_sorted)
    if d is not None and b.once("reshape", id(s), id(d)):
        b.union(s.atoms[src_key], d.atoms[dst_key])
