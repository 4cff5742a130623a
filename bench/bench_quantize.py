"""Quantization: accuracy on real data (digits CNN), speed on ONNX Runtime (zoo base models) and model file sizes.

Usage: python bench/bench_quantize.py [--part accuracy|speed|all|ort-quantizer|pruned-int8|outliers] [--epochs 12]
                                      [--models resnet50 mobilenet_v2 bert] [--batches 1 32] [--runs 5]
                                      [--warmup 2] [--threads 1] [--steps 2000] [--lr 2e-3]

Accuracy: the residual CNN of bench/bench_prune_accuracy.py trained on scikit-learn's digits (same split,
seed 0), then `graphopt.optimize(..., quantize="int8", backend="onnx")` calibrated on the first 512
training images (batches of 128), measured on the 450 test images through ONNX Runtime's integer
kernels; and pruned to 50 % of its MACs (l2 + reconstruction) then int8, against the same pruned model in fp32.

`--part ort-quantizer`: the same speed comparison with a third column, ONNX Runtime's own `quantize_static`
on the exported fp32 model (convnets). `--part pruned-int8`: dense fp32 vs pruned to half the MACs (fp32,
then + int8), each one `graphopt.optimize` call, on ONNX Runtime (the issue's 6x goal on ResNet-50).

`--part outliers`: activation outliers on real text. The zoo's Llama (RMSNorm, RoPE, grouped-query attention,
SwiGLU) at d_model 128, 4 layers, 4 heads / 2 kv heads, MLP 344, trained as a character LM on the standard
library's docstrings with bench/bench_drop_layers.py's corpus and loop (`load_text`, `train_lm`: `--steps`
steps of 16 sequences of 64, AdamW, peak `--lr`). Per linear layer's input, over the calibration data (the
first 256 training sequences): max|x| against the median per-channel absmax. Then, all on ONNX Runtime,
the held-out next-character accuracy and cross-entropy (`text_measure`), the logits' cosine to fp32's and the
share of equal argmaxes, for fp32, graphopt int8-dynamic (plain, SmoothQuant alpha 0.5 and 0.8) and ORT's
stock `quantize_dynamic` (default options) on the exported fp32 model, as exported and after ORT's
`quant_pre_process`.

Speed: each model at zoo size `base`, traced and canonicalised, run by ONNX Runtime (optimization level
all, `--threads` intra-op threads) in fp32 and quantized (convnets: int8 static, calibrated on two
random batches of 4; BERT: int8 static, int8-dynamic and int4-weight), timed in alternation, median
of `--runs` calls after `--warmup`. Sizes: each model exported to a .onnx file (weights included).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

import graphopt
from graphopt import models_zoo
from graphopt.backends import onnx as onnx_backend
from graphopt.passmanager import PassManager
from graphopt.passes import Quantize

HERE = Path(__file__).resolve().parent


def _bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not a package), loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _prune_bench():
    """bench/bench_prune_accuracy.py: its digits data, CNN, training loop and accuracy."""
    return _bench_module("bench_prune_accuracy")


# ------------------------------------------------------------------ accuracy
def accuracy_rows(epochs: int = 12, calibration: int = 512, seed: int = 0) -> list[tuple[str, float]]:
    """(row name, test accuracy %) for fp32, int8, pruned fp32 and pruned + int8."""
    pb = _prune_bench()
    data = pb.load_digits(seed)
    torch.manual_seed(seed)
    model = pb.train(pb.DigitsResNet(), data, epochs, 3e-3, seed)
    example = (data.x_train[:2],)
    batches = [(x,) for x in data.x_train[:calibration].split(128)]
    prune = {"target_macs": 0.5, "reconstruct": True}
    rows = [("fp32", pb.accuracy(model, data.x_test, data.y_test))]
    int8 = graphopt.optimize(copy.deepcopy(model), example, quantize="int8", calibration_data=batches, backend="onnx")
    rows.append(("int8 static (ONNX Runtime)", pb.accuracy(int8, data.x_test, data.y_test)))
    pruned = graphopt.optimize(copy.deepcopy(model), example, prune=prune, calibration_data=batches, backend="onnx")
    rows.append(("pruned 50 % MACs, fp32", pb.accuracy(pruned, data.x_test, data.y_test)))
    both = graphopt.optimize(copy.deepcopy(model), example, prune=prune, quantize="int8", calibration_data=batches,
                             backend="onnx")
    rows.append(("pruned 50 % MACs + int8 (ONNX Runtime)", pb.accuracy(both, data.x_test, data.y_test)))
    return rows


# ------------------------------------------------------------------ speed and size
def interleaved_medians(fns: list[Callable[[], object]], runs: int, warmup: int) -> list[float]:
    """Median milliseconds per function, timed in alternation: bench/bench_onnx.py's timer."""
    return _bench_module("bench_onnx").interleaved_medians(fns, runs, warmup)


def variants(name: str) -> list[tuple[str, dict]]:
    """The quantized variants timed against fp32: every layer quantized (keep_float=0), since the speed of the
    integer kernels is what is measured, and the error guard keeps some layers of these random-weight models
    float (BERT base int4: 29 of 74)."""
    if name == "bert":
        return [("int8", {"mode": "int8", "keep_float": 0}), ("int8-dynamic", {"mode": "int8-dynamic", "keep_float": 0}),
                ("int4-weight", {"mode": "int4-weight", "keep_float": 0})]
    return [("int8", {"mode": "int8", "keep_float": 0})]


def file_mb(graph, directory: Path, stem: str) -> float:
    path = onnx_backend.export(graph, directory / f"{stem}.onnx", external_data=False)
    return path.stat().st_size / 2**20


def speed_rows(name: str, batches: list[int], runs: int, warmup: int, threads: int, size: str = "base") -> list[str]:
    """Markdown rows: per quantized variant and batch, fp32 ms, quantized ms, speed-up; and file sizes."""
    model, example = models_zoo.get(name, size, batch_size=2)
    graph = graphopt.trace(model, example, dynamic=models_zoo.spec(name).dynamic_axes)
    graph, _ = PassManager.parse("canonicalize").run(graph, example)
    calibration = [models_zoo.get(name, size, batch_size=4, seed=s)[1] for s in (1, 2)]
    fp32 = onnx_backend.compile(graph, threads=threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"fp32": file_mb(graph, Path(tmp), "fp32")}
        for label, options in variants(name):
            quantized, _ = PassManager([Quantize(progress=False, **options)]).run(graph, example,
                                                                               calibration_data=calibration)
            sizes[label] = file_mb(quantized, Path(tmp), label)
            run = onnx_backend.compile(quantized, threads=threads)
            for batch in batches:
                inputs = models_zoo.get(name, size, batch_size=batch, seed=3)[1]
                f_ms, q_ms = interleaved_medians([lambda: fp32(*inputs), lambda: run(*inputs)], runs, warmup)
                rows.append(f"| {name} | {label} | {batch} | {f_ms:.1f} | {q_ms:.1f} | {f_ms / q_ms:.2f}x |")
    size_text = ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items())
    rows.append(f"| {name} | file sizes | | {size_text} | | |")
    return rows


def against_ort_quantizer(name: str, batches: list[int], runs: int, warmup: int, threads: int,
                          size: str = "base") -> list[str]:
    """Markdown rows: fp32, graphopt int8 and ONNX Runtime's own `quantize_static` (QDQ, per channel, U8S8,
    min-max on the same calibration batch) on the same fp32 model, in alternation."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model, example = models_zoo.get(name, size, batch_size=2)
    graph = graphopt.trace(model, example, dynamic=models_zoo.spec(name).dynamic_axes)
    graph, _ = PassManager.parse("canonicalize").run(graph, example)
    calibration = models_zoo.get(name, size, batch_size=4, seed=1)[1]
    ours, _ = PassManager([Quantize(progress=False)]).run(graph, example, calibration_data=[calibration])
    names = [v.name for v in graph.inputs]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = [dict(zip(names, (x.numpy() for x in calibration)))]

        def get_next(self):
            return self.items.pop() if self.items else None

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, ort_path = Path(tmp) / "fp32.onnx", Path(tmp) / "ort_int8.onnx"
        onnx_backend.export(graph, fp32_path, external_data=False)
        quantize_static(str(fp32_path), str(ort_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        theirs = ort.InferenceSession(str(ort_path), onnx_backend.session_options(threads),
                                      providers=["CPUExecutionProvider"])
        fp32, mine = onnx_backend.compile(graph, threads=threads), onnx_backend.compile(ours, threads=threads)
        for batch in batches:
            inputs = models_zoo.get(name, size, batch_size=batch, seed=3)[1]
            feed = dict(zip(names, (x.numpy() for x in inputs)))
            f_ms, g_ms, o_ms = interleaved_medians(
                [lambda: fp32(*inputs), lambda: mine(*inputs), lambda: theirs.run(None, feed)], runs, warmup)
            rows.append(f"| {name} | {batch} | {f_ms:.1f} | {g_ms:.1f} | {o_ms:.1f} |")
    return rows


def pruned_int8_rows(name: str, batches: list[int], runs: int, warmup: int, threads: int,
                     size: str = "base") -> list[str]:
    """Markdown rows: dense fp32, pruned to half the MACs in fp32, and pruned + int8, one optimize() call each,
    on ONNX Runtime in alternation; the speed-ups are against the dense fp32 model."""
    model, example = models_zoo.get(name, size, batch_size=2)
    model.eval()
    calibration = [models_zoo.get(name, size, batch_size=4, seed=s)[1] for s in (1, 2)]
    prune = {"target_macs": 0.5}
    variants = {
        "dense fp32": graphopt.optimize(model, example, backend="onnx").graph,
        "pruned 50 % MACs fp32": graphopt.optimize(model, example, prune=prune, backend="onnx").graph,
        "pruned 50 % MACs + int8": graphopt.optimize(model, example, prune=prune, quantize="int8",
                                                     calibration_data=calibration, backend="onnx").graph,
    }
    runs_by_label = {label: onnx_backend.compile(graph, threads=threads) for label, graph in variants.items()}
    rows = []
    for batch in batches:
        inputs = models_zoo.get(name, size, batch_size=batch, seed=3)[1]
        fns = [lambda run=run: run(*inputs) for run in runs_by_label.values()]
        times = interleaved_medians(fns, runs, warmup)
        for label, ms in zip(runs_by_label, times):
            rows.append(f"| {name} | {label} | {batch} | {ms:.1f} | {times[0] / ms:.2f}x |")
    return rows


# ------------------------------------------------------------------ activation outliers: a character Llama
def _text_bench():
    """bench/bench_drop_layers.py: its text corpus, language-model training and measures."""
    _prune_bench()  # bench_drop_layers imports from it by name
    return _bench_module("bench_drop_layers")


def char_llama(vocab: int, seed: int = 0, dim: int = 128, layers: int = 4, length: int = 64) -> torch.nn.Module:
    """The zoo's Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU) at a character LM's size."""
    zoo, _ = models_zoo.get("llama", "tiny")
    config = dataclasses.replace(zoo.config, vocab_size=vocab, hidden_size=dim, intermediate_size=dim * 43 // 16,
                                 num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=length)
    torch.manual_seed(seed)
    return type(zoo)(config)


def activation_outliers(model: torch.nn.Module, batches: list[tuple]) -> list[tuple[str, float, float, int, float]]:
    """Per distinct linear-layer input, over `batches`: (the layers reading it, max|x|, median per-channel
    absmax, the channel of max|x|, their ratio), largest ratio first. Layers sharing an input (q/k/v,
    gate/up) are one row."""
    found: dict[str, torch.Tensor] = {}
    readers: dict[str, list[str]] = {}
    seen: dict[int, tuple[str, torch.Tensor]] = {}  # id -> (first reader, the tensor, kept so ids stay unique)

    def hook(name: str):
        def record(module, args, output) -> None:
            x = args[0]
            key = seen.setdefault(id(x), (name, x))[0]  # the first layer to read this tensor names it
            if key == name:
                m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0)
                found[key] = m if key not in found else torch.maximum(found[key], m)
            if name not in readers.setdefault(key, []):
                readers[key].append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for batch in batches:
                seen.clear()
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for key, absmax in found.items():
        names = readers[key]
        prefix = names[0].rsplit(".", 1)[0] + "." if len(names) > 1 else ""
        label = prefix + "/".join(n.removeprefix(prefix) for n in names) if prefix else names[0]
        median = float(absmax.median())
        rows.append((label, float(absmax.max()), median, int(absmax.argmax()), float(absmax.max()) / median))
    return sorted(rows, key=lambda r: -r[4])


def _logits(run, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([torch.as_tensor(run(xb)).float() for xb in x.split(batch_size)])


def outlier_rows(text, steps: int = 2000, batch: int = 16, lr: float = 2e-3, calibration: int = 256,
                 alphas: tuple[float, ...] = (0.5, 0.8), seed: int = 0, threads: int = 1, layers: int = 4):
    """A character Llama trained on `text` (bench_drop_layers' Text); its activation outliers and, on ONNX
    Runtime, its held-out accuracy in fp32, graphopt int8-dynamic (plain and SmoothQuant at each alpha) and
    ONNX Runtime's stock `quantize_dynamic` on the same exported fp32 model.

    Returns (outlier rows as `activation_outliers`, accuracy rows: (variant, next-char accuracy %,
    cross-entropy nats/char, cosine of the test logits to fp32's, % of argmaxes equal to fp32's, what was
    quantized), train seconds).
    """
    import collections
    import time

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tb = _text_bench()
    model = char_llama(len(text.vocab), seed, layers=layers, length=text.x_train.shape[1])
    start = time.perf_counter()
    tb.train_lm(model, text, steps, lr, seed, batch)
    seconds = time.perf_counter() - start
    batches = [(x,) for x in text.x_train[:calibration].split(64)]
    outliers = activation_outliers(model, batches)
    example = (text.x_train[:2],)
    variants = {"fp32": None, "graphopt int8-dynamic": {"mode": "int8-dynamic"},
                **{f"graphopt int8-dynamic + smooth {a}": {"mode": "int8-dynamic", "smooth": a} for a in alphas}}
    graphs, notes = {}, {}
    for label, options in variants.items():
        optimized = graphopt.optimize(model, example, quantize=None if options is None else
                                      {**options, "progress": False}, calibration_data=batches, backend="onnx")
        graphs[label] = optimized.graph
        report = optimized.report.quantize[0] if optimized.report.quantize else None
        notes[label] = "" if report is None else (f"{len(report.quantized)} linears int8, {len(report.left_float)} "
                                                  f"left float, {len(report.smoothed)} inputs smoothed")
    runs = {label: onnx_backend.compile(graph, threads=threads) for label, graph in graphs.items()}
    # ONNX Runtime's own dynamic quantizer, default options (weights QInt8 per tensor, activations uint8 per
    # tensor at run time, every op type it knows, MatMulConstBOnly: only MatMuls by a constant initializer), on
    # the exported fp32 model as is, and after the pre-processing its warning asks for (quant_pre_process,
    # defaults: symbolic shape inference and ORT's basic graph optimizations, which fold constant Transposes)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, pre_path = Path(tmp) / "fp32.onnx", Path(tmp) / "fp32_pre.onnx"
        onnx_backend.export(graphs["fp32"], fp32_path, external_data=False)
        quant_pre_process(str(fp32_path), str(pre_path))
        for label, source in (("ORT quantize_dynamic (defaults)", fp32_path),
                              ("ORT quant_pre_process + quantize_dynamic (defaults)", pre_path)):
            ort_path = Path(tmp) / f"{source.stem}_dynamic.onnx"
            quantize_dynamic(str(source), str(ort_path))
            ops = collections.Counter(node.op_type for node in onnx.load(str(ort_path)).graph.node)
            session = ort.InferenceSession(str(ort_path), onnx_backend.session_options(threads),
                                           providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            runs[label] = lambda x, s=session, n=name: torch.from_numpy(s.run(None, {n: x.numpy()})[0])
            notes[label] = (f"{ops['MatMulInteger']} MatMulInteger, {ops['DynamicQuantizeLinear']} "
                            f"DynamicQuantizeLinear, {ops['MatMul']} MatMul float"
                            + (", embedding Gather int8" if ops["DequantizeLinear"] else ""))
    reference = _logits(runs["fp32"], text.x_test)
    rows = []
    for label, run in runs.items():
        logits = _logits(run, text.x_test)
        acc, loss = tb.text_measure(run, text.x_test, text.y_test)
        cos = float(torch.nn.functional.cosine_similarity(logits.flatten().double(), reference.flatten().double(),
                                                          dim=0))
        agree = float((logits.argmax(-1) == reference.argmax(-1)).float().mean()) * 100
        rows.append((label, acc, loss, cos, agree, notes.get(label, "")))
    return outliers, rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["accuracy", "speed", "all", "ort-quantizer", "pruned-int8", "outliers"],
                        default="all")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "bert"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000, help="outliers: training steps of the character Llama")
    parser.add_argument("--lr", type=float, default=2e-3, help="outliers: peak learning rate")
    args = parser.parse_args()
    if args.part in ("accuracy", "all"):
        print("| digits CNN | test accuracy % |\n|---|---|", flush=True)
        for row, acc in accuracy_rows(args.epochs):
            print(f"| {row} | {acc:.2f} |", flush=True)
    if args.part == "ort-quantizer":
        print("| model | batch | fp32 ms | graphopt int8 ms | ORT quantize_static int8 ms |\n|---|---|---|---|---|")
        for name in args.models:
            for row in against_ort_quantizer(name, args.batches, args.runs, args.warmup, args.threads):
                print(row, flush=True)
    if args.part == "pruned-int8":
        print("| model | variant | batch | ms | vs dense fp32 |\n|---|---|---|---|---|", flush=True)
        for name in args.models:
            for row in pruned_int8_rows(name, args.batches, args.runs, args.warmup, args.threads):
                print(row, flush=True)
    if args.part == "outliers":
        torch.set_num_threads(args.threads)
        text = _text_bench().load_text()
        print(f"text: {text.description}\n{args.steps} steps of 16 sequences, peak lr {args.lr}", flush=True)
        outliers, rows, seconds = outlier_rows(text, args.steps, lr=args.lr, threads=args.threads)
        print(f"trained in {seconds:.0f} s\n\n| linear input (readers) | max abs x | median channel absmax | "
              f"channel | ratio |\n|---|---|---|---|---|")
        for label, top, median, channel, ratio in outliers:
            print(f"| {label} | {top:.2f} | {median:.2f} | {channel} | {ratio:.1f} |")
        print("\n| variant (ONNX Runtime) | next-char acc. % | cross-entropy | cosine to fp32 | argmax = fp32 % | "
              "quantized |\n|---|---|---|---|---|---|")
        for label, acc, loss, cos, agree, note in rows:
            print(f"| {label} | {acc:.2f} | {loss:.4f} | {cos:.5f} | {agree:.2f} | {note} |", flush=True)
    if args.part in ("speed", "all"):
        import onnxruntime

        print(f"\nONNX Runtime {onnxruntime.__version__}, {args.threads} thread(s), "
              f"median of {args.runs} after {args.warmup} warm-up\n")
        print("| model | quantized | batch | fp32 ms | quantized ms | speed-up |", flush=True)
        print("|---|---|---|---|---|---|", flush=True)
        for name in args.models:
            for row in speed_rows(name, args.batches, args.runs, args.warmup, args.threads):
                print(row, flush=True)


if __name__ == "__main__":
    main()
