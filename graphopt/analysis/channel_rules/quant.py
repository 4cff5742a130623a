"""Channel rules of the quantization ops: barriers, on purpose.

A quantized graph is the end of the pipeline (prune first, then quantize):
removing channels through a quantize / dequantize pair would also have to
slice its per-channel scales and zero points, and the int8 weights of a
`matmul_nbits` are blocked along their input axis. Nothing needs that yet, so
the analysis stops at these ops instead of guessing.
"""

from graphopt.analysis.rule_columns import BARRIER, register_channel_rule

for _op in ("quantize_linear", "dequantize_linear", "dynamic_quantize_linear", "matmul_nbits"):
    register_channel_rule(_op)(BARRIER)
