"""Functions MetaSchedule runs in its builder and runner worker processes: tvm imports only.

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


def alloc_arguments(device, args_info, alloc_repeat):
    """The runner's argument allocation: random floats, as MetaSchedule's default, but zero integers.

    Random int64 arguments are out-of-range indices for a gather (`take`, the embedding lookup):
    every candidate of BERT's embedding task crashed the runner. Index 0 is always valid.
    """
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    random_fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)

    def fill(tensor):
        dtype = str(tensor.dtype)
        if dtype.startswith(("int", "uint", "bool")) or random_fill is None:
            tensor.copyfrom(np.zeros(tuple(tensor.shape), dtype=dtype))
        else:
            random_fill(tensor)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)
