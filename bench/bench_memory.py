"""Peak resident memory of tracing, channel analysis and prune planning on a 7B-size decoder, on the meta device.

Usage: python bench/bench_memory.py [--layers 32] [--hidden 4096] [--seq 128]

The zoo's Llama at 4096 hidden (11008 MLP, 32 heads) is built on the `meta` device, so no weight is
allocated: what is measured is graphopt's own memory, the IR and the analyses, which must not grow
with the weights. Stages, each followed by the process's peak resident set size (`ru_maxrss`, which
only grows, so each figure is the peak so far):

1. import graphopt and build the model on meta;
2. `graphopt.trace` (torch.export and import);
3. `channel_groups` (heads and within heads);
4. the prune pass at ratio 0.5 with removal (`safety=false`: the safety net runs the model, which meta
   tensors cannot do numerically), scored by a criterion that reads no weight data (the channel index:
   meta tensors have no values, and the plan's memory does not depend on the scores' values).

Goal (issue 17): under 2 GB for the 32-layer model.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def peak_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []

    def stage(name: str) -> None:
        rows.append((name, peak_mb(), time.perf_counter() - start))

    import numpy as np
    import torch

    import graphopt
    from graphopt import models_zoo
    from graphopt.analysis import channel_groups
    from graphopt.models_zoo.llama import LlamaConfig, LlamaForCausalLM
    from graphopt.passes.prune import CRITERIA, Prune, register_criterion
    from graphopt.passmanager import PassManager

    config = LlamaConfig(num_hidden_layers=args.layers, hidden_size=args.hidden,
                         intermediate_size=int(args.hidden * 2.6875), num_attention_heads=args.hidden // 128,
                         num_key_value_heads=args.hidden // 128)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).eval()
    ids = torch.zeros(2, args.seq, dtype=torch.long, device="meta")
    params = sum(p.numel() for p in model.parameters())
    stage(f"import + build on meta ({params / 1e9:.2f} B params)")
    graph = graphopt.trace(model, (ids,), dynamic=models_zoo.spec("llama").dynamic_axes)
    stage(f"trace ({len(graph.nodes)} IR nodes)")
    heads = channel_groups(graph)
    within = channel_groups(graph, heads=False)
    stage(f"channel groups ({len(heads)} with heads, {len(within)} within heads)")
    if "bench-channel-index" not in CRITERIA:
        register_criterion("bench-channel-index")(lambda group: np.arange(group.num_channels, dtype=np.float64))
    pruned, report = PassManager([Prune(ratio=0.5, criterion="bench-channel-index", safety=False)]).run(graph)
    stats = report.stats("prune")[0]
    stage(f"prune plan + removal at 0.5 ({pruned.num_params() / 1e9:.2f} B params left)")
    print(f"Llama {args.layers} layers, hidden {args.hidden}, sequence {args.seq}, on meta "
          f"({len(stats.decisions) if hasattr(stats, 'decisions') else '?'} group decisions)\n")
    print("| stage | peak RSS so far | elapsed |")
    print("|---|---|---|")
    for name, mb, seconds in rows:
        print(f"| {name} | {mb:,.0f} MB | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
