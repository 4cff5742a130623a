"""The CPU build pipeline: Relax module -> VM executable, with tuned schedules applied from the database.

The module is put in inference form (BatchNorm and other composite ops
decomposed into arithmetic on constants, which FoldConstant folds into the
weights), convolutions optionally converted to another layout, then legalized
to TIR and fused once: the fused PrimFuncs are both the tuning tasks and what
the build looks up in the database, so the keys match by construction.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from graphopt.errors import GraphoptError

LAYOUTS = {
    None: None,
    "NCHW": None,
    # NHWC activations with OHWI weights: channel-last keeps the innermost loop on channels,
    # which vectorises over AVX-512 lanes without a layout search.
    "NHWC": {"relax.nn.conv2d": ["NHWC", "OHWI"]},
}


def prepare(mod: tvm.IRModule, layout: str | None = None) -> tvm.IRModule:
    """Inference-form Relax: composite ops decomposed, constants folded, convolutions in `layout`."""
    if layout not in LAYOUTS:
        raise GraphoptError(f"layout must be one of {sorted(k for k in LAYOUTS if k)} or None, not {layout!r}")
    passes = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
    ]
    if LAYOUTS[layout]:
        passes += [relax.transform.ConvertLayout(LAYOUTS[layout]), relax.transform.FoldConstant()]
    passes.append(relax.transform.DeadCodeElimination(["main"]))
    with tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def fuse(mod: tvm.IRModule, target: tvm.target.Target, *, prepack: bool = True) -> tvm.IRModule:
    """Legalize to TIR and fuse (FuseOps + FuseTIR): each remaining PrimFunc is one tuning task.

    prepack: mark the weights as layout-free, so that a tuned schedule may choose the weight
    layout its loops read best (MetaSchedule's RewriteLayout); `build` then transforms the
    weights once, at compile time, instead of the kernel reading them strided at every call.
    """
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential([
            *_passes('library_dispatch_passes', target),
            *_passes('legalize_passes', target),
            *([relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else []),
        ])(mod)


def build(fused: tvm.IRModule, target: tvm.target.Target, database: ms.database.Database) -> relax.VMExecutable:
    """Apply the database's schedules to the fused module (default schedules elsewhere) and build it.

    A schedule that rewrote a layout-free weight's layout leaves a preprocessing block in its
    kernel; SplitLayoutRewritePreproc moves it into a function of its own, which FoldConstant
    evaluates on the bound weights, so the executable holds them pre-packed.
    """

    @tvm.transform.module_pass(opt_level=0)
    def _lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return tvm.transform.Sequential([
            relax.transform.MetaScheduleApplyDatabase(enable_warning=False),
            relax.transform.SplitLayoutRewritePreproc(),
            relax.transform.LiftTransformParams(),
            relax.transform.FoldConstant(),
            *_passes('dataflow_lower_passes', target),
            *_passes('finalize_passes', target),
        ])(mod)

    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax.build(fused, target=target, relax_pipeline=_lower)


def _passes(name: str, target: tvm.target.Target) -> list:
    # relax.pipeline dispatches on the target kind, but in 0.27 some of its CPU entries
    # point at names the cpu_generic package does not re-export: take them from its module.
    try:
        return list(getattr(relax.pipeline, name)(target))
    except AttributeError:
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        return list(getattr(cpu, name)(target))
