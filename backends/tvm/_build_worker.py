"""The MetaSchedule build function run in each builder worker process: tvm imports only.

The stock `default_build` imports `tvm.s_tir.tensor_intrin` first (~32 s, mostly
CUDA intrinsics), which exceeds LocalBuilder's 30 s timeout in every fresh
worker: every candidate then fails and tuning "succeeds" with no records. CPU
schedules here use no tensor intrinsics, so this build skips that import.
The module is pickled by value (see tuning.py), so a worker never imports
graphopt, and with it torch.
"""


def build_without_tensor_intrin(mod, target, _params):
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)
