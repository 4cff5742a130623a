"""One ONNX lowering per canonical op, by op family; importing the package attaches them all.

The reference for what each op computes is the op's torch kernel (the
"torch_kernel" column); every lowering here matches it numerically, including
the corners (ceil-mode pooling, align_corners, rounding division, softplus's
threshold), and is tested against it in tests/test_onnx_lowering.py.

ONNX wants both operands of arithmetic in one element type, while the IR
follows torch's promotion; lowerings therefore cast inputs to the node's
output dtype (constants are converted in place by the builder).
"""

from graphopt.backends.onnx.lowerings import (  # noqa: F401 - each module attaches its family's lowerings
    creation, dense, elementwise, layout, norm, pooling, reduce,
)
from graphopt.backends.onnx.lowerings import patches, recurrent, selection  # noqa: F401,E402
from graphopt.backends.onnx.lowerings import quant  # noqa: F401,E402
