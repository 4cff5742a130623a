"""Accuracy and latency of layer dropping on real data: residual CNNs and small transformers on digits, a character LM.

Usage: python bench/bench_drop_layers.py [--seeds 0 1 2] [--drops 1 2 3 4 5] [--epochs 15] [--calibration 512]
                                         [--draws 5] [--repeat 50] [--threads 1]
                                         [--models cnn cnn3 transformer transformer12 charlm]
                                         [--steps 2000] [--batch 16] [--text-calibration 256] [--cache DIR]

Data: scikit-learn's digits, split and standardised as in bench/bench_prune_accuracy.py (its
`load_digits` and `train` are reused: 1,347 training / 450 test images, Adam, cosine decay, batch 64).
Models:

- `cnn`: stem conv 1->32, six residual blocks at 32 channels (conv-bn-relu-conv-bn + identity, ReLU),
  global average pooling, linear;
- `cnn3`: three stages of different widths: stem conv 1->16, two identity blocks at 16 channels
  (8x8), a strided projection block to 32 channels (4x4) and two identity blocks, a strided
  projection block to 64 channels (2x2) and two identity blocks, pooling, linear: 8 candidate blocks
  (dropping a projection block keeps its strided 1x1 shortcut);
- `transformer`: each image's 8 rows are 8 tokens of 8 pixels; linear embedding to 64 + learned
  positions, six pre-norm layers (4-head attention, GELU MLP x2), final LayerNorm, mean over tokens,
  linear. The 6 whole layers are the blocks (`granularity="layer"`);
- `transformer12`: the same transformer with 12 layers.

Text (`charlm`): a character-level causal language model trained on next-character prediction.
Corpus (`stdlib_documents`, `load_text`): the docstrings of the Python standard library running the
bench (`sysconfig.get_paths()["stdlib"]`, here CPython 3.11.7): every `*.py` file under it, sorted by
path, except those under `test/`, `tests/`, `idle_test/`, `lib2to3/` and `site-packages/`; a file's
document is the `ast.get_docstring` of its module, classes and functions in `ast.walk` order, joined by
blank lines (files without docstrings skipped: 576 documents, 1.76 M characters). Every 10th document
in path order is held out (57 modules, 0.23 M characters), the other 519 (1.53 M characters) are the
training text; each side is concatenated and cut into non-overlapping sequences of 64 + 1 characters
(23,961 training sequences); the test set is 256 sequences evenly spaced over the held-out text
(16,384 predicted characters). Vocabulary: the training text's 106 characters plus one id for any
other. Model: token embedding + learned positions, 8 pre-norm causal layers (d_model 128, 4-head
attention, GELU MLP x4), final LayerNorm, linear head to [batch, 64, vocab] logits (1.62 M
parameters); trained with AdamW (weight decay 0.01, peak learning rate 2e-3, 100 warm-up steps then
cosine decay, gradient clipping at 1) for `--steps` steps of `--batch` random training sequences
(2,000 x 16 x 64 = 2.0 M characters, about 1.3 passes over the training text). Metric: held-out
next-character accuracy (argmax) and cross-entropy (nats per character; perplexity = exp). The
calibration data is the first `--text-calibration` training sequences (in batches of 64), and the
labelled loss ranking uses the next-character cross-entropy over all positions. Nothing was tuned on
the held-out text.

For each number of dropped blocks k, graphopt ranks the blocks of the trained model (`drop-layers` on
the traced graph) on calibration data, the first `--calibration` training images (the LM: sequences,
its 8 whole layers being the blocks), and the dropped model's accuracy is measured on the held-out
test images (held-out text), without fine-tuning. Rankings: kl, greedy (the default: each step drops
the block whose removal, with the blocks already dropped, changes the model's output distribution least,
KL divergence from the dense model on calibration data), kl one-shot (each block scored alone), cosine
(1 - cos(block input, output), ShortGPT's Block Influence), angular, loss (the relative change of the
logits when the block alone is dropped), labelled loss (the cross-entropy increase on the labelled
calibration data; one-shot, and greedy as SLEB), iterative cosine (re-scored after each drop) and loss,
greedy. Baselines: the last k blocks, and k random blocks (mean of `--draws` draws). Every set of
dropped blocks, ranked or not, is measured twice: as dropped, and with `recover=True` (`blocks=[...]`
and the least-squares refit on the same calibration images), so recovery's gain is not credited to a
ranking. Latency (skipped with `--repeat 0`): `graphopt.optimize` of the dense model and of the model
with k blocks dropped by the default ranking, torch back-end, a batch of 256 test images, median of `--repeat`
rounds after warm-up, the models timed in turns in each round, in one run.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.analysis.residual_blocks import find_blocks
from graphopt.backends.torch import to_module
from graphopt.passes.drop_layers import DropLayers
from graphopt.passmanager import PassManager
from graphopt.timing import median_seconds

from bench_prune_accuracy import Block, Digits, accuracy, load_digits, train


class DigitsCNN(nn.Module):
    """Six identity residual blocks at 32 channels on 8x8 digits."""

    def __init__(self, width: int = 32, depth: int = 6, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width, width) for _ in range(depth)))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class DigitsCNN3(nn.Module):
    """Three stages (16, 32, 64 channels at 8x8, 4x4, 2x2), two droppable identity blocks in each."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(1, a, 3, 1, 1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        self.blocks = nn.Sequential(Block(a, a), Block(a, a), Block(a, b, 2), Block(b, b), Block(b, b),
                                    Block(b, c, 2), Block(c, c), Block(c, c))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(attended.transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    """A pre-norm transformer layer: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, dim: int, heads: int, mlp: int = 2, causal: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """Each image's rows as 8 tokens of 8 pixels, six pre-norm layers, mean-pooled classifier."""

    def __init__(self, dim: int = 64, depth: int = 6, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, 8, dim) * 0.02)
        self.layers = nn.Sequential(*(Layer(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        return self.head(self.norm(self.layers(tokens)).mean(dim=1))


class CharLM(nn.Module):
    """A pre-norm causal decoder over characters: [batch, seq] ids -> [batch, seq, vocab] next-character logits."""

    def __init__(self, vocab: int, dim: int = 128, depth: int = 8, heads: int = 4, mlp: int = 4,
                 length: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.layers = nn.Sequential(*(Layer(dim, heads, mlp, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.layers(self.embed(x) + self.position[:, :x.shape[1]])))


@dataclass
class Text:
    """Character sequences: x [N, length] ids, y the same shifted by one (next characters); train and held-out."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    vocab: list[str]
    description: str


def stdlib_documents() -> list[tuple[str, str]]:
    """(module path, its docstrings joined) for every .py file of the standard library, sorted by path.

    The docstrings of the module, its classes and functions (`ast.get_docstring`, so cleaned of
    indentation), in `ast.walk` order, joined by blank lines. Test packages, lib2to3 and
    site-packages are left out; files that do not parse or have no docstring are skipped.
    """
    import ast
    import pathlib
    import sysconfig

    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3"}
    documents = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        text = "\n\n".join(d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node)))
        if text:
            documents.append((str(path.relative_to(root)), text))
    return documents


def load_text(length: int = 64, test_sequences: int = 256, held_out_every: int = 10) -> Text:
    """The standard library's docstrings as non-overlapping character sequences, split by module.

    Every `held_out_every`-th module (in path order) is held out; the others are concatenated, each
    ended by a blank line, and cut into sequences of `length` + 1 characters (input and next-character
    target). The vocabulary is the training text's characters, plus one id for any other character.
    `test_sequences` sequences evenly spaced over the held-out text are the test set.
    """
    documents = stdlib_documents()
    train_docs = [text for i, (_, text) in enumerate(documents) if i % held_out_every != held_out_every - 1]
    test_docs = [text for i, (_, text) in enumerate(documents) if i % held_out_every == held_out_every - 1]
    train_text, test_text = ("".join(t + "\n\n" for t in docs) for docs in (train_docs, test_docs))
    vocab = ["<unk>", *sorted(set(train_text))]
    index = {c: i for i, c in enumerate(vocab)}

    def sequences(text: str) -> torch.Tensor:
        ids = torch.tensor([index.get(c, 0) for c in text])
        n = (len(ids) - 1) // length
        return ids[:n * length + 1].unfold(0, length + 1, length)

    train_seqs, test_seqs = sequences(train_text), sequences(test_text)
    test_seqs = test_seqs[torch.linspace(0, len(test_seqs) - 1, test_sequences).round().long()]
    description = (f"{len(documents)} standard-library modules' docstrings ({len(train_text) + len(test_text):,} "
                   f"characters): {len(train_docs)} modules, {len(train_text):,} characters, {len(train_seqs):,} "
                   f"sequences for training; {len(test_docs)} held-out modules, {len(test_text):,} characters, "
                   f"{test_sequences} sequences of {length} for the test; vocabulary {len(vocab)}")
    return Text(train_seqs[:, :-1], train_seqs[:, 1:], test_seqs[:, :-1], test_seqs[:, 1:], vocab, description)


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of [batch, seq, vocab] logits against [batch, seq] next characters."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_lm(module: nn.Module, data: Text, steps: int, lr: float, seed: int, batch_size: int = 32,
             warmup: int = 100) -> nn.Module:
    """AdamW on random training sequences (seeded), linear warm-up then cosine decay; returns `module`."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    module.train()
    for _ in range(steps):
        batch = torch.randint(len(data.x_train), (batch_size,), generator=generator)
        optimizer.zero_grad()
        next_char_loss(module(data.x_train[batch]), data.y_train[batch]).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return module.eval()


def text_measure(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """Next-character accuracy (%) and mean cross-entropy (nats per character) of `model` on (x, y)."""
    if isinstance(model, nn.Module):
        model.eval()
    correct, loss = 0.0, 0.0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(xb)
            correct += float((logits.argmax(dim=-1) == yb).sum())
            loss += float(F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum"))
    return correct / y.numel() * 100, loss / y.numel()


RANKINGS = (  # method -> drop-layers options (besides count); "labelled" ones get the cross-entropy loss
    ("kl, greedy (default)", {}),
    ("kl, one-shot", {"metric": "kl", "iterative": False}),
    ("cosine", {"metric": "cosine"}),
    ("angular", {"metric": "angular"}),
    ("loss", {"metric": "loss", "iterative": False}),
    ("labelled loss", {"metric": "loss", "labelled": True, "iterative": False}),
    ("labelled loss, greedy", {"metric": "loss", "labelled": True}),
    ("iterative cosine", {"metric": "cosine", "iterative": True}),
    ("loss, greedy", {"metric": "loss"}),
)


@dataclass
class Row:
    method: str
    k: int
    accuracy: float  # test accuracy as dropped
    recovered: float  # the same blocks dropped with recover=True
    spread: str = ""  # the random draws
    dropped: list[str] = field(default_factory=list)
    is_last: bool = False  # the ranking chose exactly the last k blocks
    loss: float | None = None  # language model: held-out cross-entropy (nats per character) as dropped
    loss_recovered: float | None = None  # ... and with recover=True


@dataclass
class ModelResult:
    name: str
    dense_acc: float
    blocks: list[str]
    scores: dict[str, dict[str, float]]  # metric -> block -> score
    rows: list[Row]
    latency: dict[int, float]  # k -> median seconds (0: dense)
    params: dict[int, int]
    train_seconds: float
    dense_loss: float | None = None


def mean(values):
    values = list(values)
    return sum(values) / len(values)


class Dropper:
    """Drops blocks of one traced graph and measures it on the test set, each (blocks, recover) pair once.

    `measure(module)` returns (test accuracy %, test loss or None); `loss` is the labelled rankings' loss.
    """

    def __init__(self, graph, example, calibration, labelled, measure, loss=F.cross_entropy) -> None:
        self.graph, self.example, self.measure, self.loss = graph, example, measure, loss
        self.calibration, self.labelled = calibration, labelled
        self.cache: dict[tuple[frozenset[str], bool], tuple[float, float | None]] = {}

    def run(self, **options):
        options.setdefault("progress", False)
        if options.pop("labelled", False):
            return PassManager([DropLayers(**options)]).run(self.graph, self.example, calibration_data=self.labelled,
                                                            loss=self.loss)
        return PassManager([DropLayers(**options)]).run(self.graph, self.example, calibration_data=self.calibration)

    def rank(self, k: int, **options) -> list[str]:
        """The blocks the ranking `options` drops for count=k (that set measured as a side effect)."""
        dropped, report = self.run(count=k, **options)
        names = report.stats("drop-layers")[0].dropped
        key = (frozenset(names), False)
        if key not in self.cache:
            self.cache[key] = self.measure(to_module(dropped))
        return names

    def result(self, names: list[str], recover: bool) -> tuple[float, float | None]:
        key = (frozenset(names), recover)
        if key not in self.cache:
            dropped, _ = self.run(blocks=list(names), recover=recover)
            self.cache[key] = self.measure(to_module(dropped))
        return self.cache[key]

    def row(self, method: str, k: int, sets: list[list[str]], last: list[str], spread: bool = False) -> Row:
        """A row for `method`: the mean over `sets` (one set for a ranking) as dropped and with recover=True."""
        plain = [self.result(s, False) for s in sets]
        recovered = [self.result(s, True) for s in sets]
        has_loss = plain[0][1] is not None
        return Row(method, k, mean(a for a, _ in plain), mean(a for a, _ in recovered),
                   " / ".join(f"{a:.1f}" for a, _ in plain) if spread else "",
                   [] if spread else list(sets[0]), not spread and set(sets[0]) == set(last),
                   mean(v for _, v in plain) if has_loss else None,
                   mean(v for _, v in recovered) if has_loss else None)


def evaluate(name: str, model: nn.Module, data: Digits | Text, *, drops: list[int], calibration: int, draws: int,
             seed: int, repeat: int, train_seconds: float) -> ModelResult:
    example = (data.x_train[:2],)
    graph = graphopt.trace(model, example)
    graph, _ = PassManager.parse("simplify").run(graph, example)
    text = isinstance(data, Text)
    batch = 64 if text else 128
    calib = [(x,) for x in data.x_train[:calibration].split(batch)]
    labelled = list(zip(calib, data.y_train[:calibration].split(batch)))
    if text:
        dropper = Dropper(graph, example, calib, labelled, lambda m: text_measure(m, data.x_test, data.y_test),
                          next_char_loss)
    else:
        dropper = Dropper(graph, example, calib, labelled, lambda m: (accuracy(m, data.x_test, data.y_test), None))
    blocks = [b.name for b in find_blocks(graph).select("layer") if b.droppable]
    scores = {}
    for metric, options in (("kl", {"metric": "kl"}), ("cosine", {"metric": "cosine"}),
                            ("labelled loss", {"metric": "loss", "labelled": True})):
        _, report = dropper.run(count=1, **options)
        scores[metric] = {r.name: r.score for r in report.stats("drop-layers")[0].rows if r.score is not None}
    rows = []
    rng = random.Random(seed)
    for k in drops:
        last = blocks[-k:]
        for method, options in RANKINGS:
            rows.append(dropper.row(method, k, [dropper.rank(k, **options)], last))
        rows.append(dropper.row("last k", k, [last], last))
        rows.append(dropper.row(f"random (mean of {draws})", k, [rng.sample(blocks, k) for _ in range(draws)], last,
                                spread=True))
    latency, params = measure_latency(model, data, drops, calib, repeat) if repeat else ({}, {})
    dense_acc, dense_loss = dropper.measure(model)
    return ModelResult(name, dense_acc, blocks, scores, rows, latency, params, train_seconds, dense_loss)


def measure_latency(model: nn.Module, data: Digits, drops: list[int], calib, repeat: int):
    """Median latency of the optimized dense model and of each dropped one, on 256 test images.

    The models are timed in turns (one call each per round, after warm-up), so load from other
    processes on a shared machine falls on all of them alike.
    """
    x = data.x_test[:256]
    modules, params = {}, {}
    for k in [0, *drops]:
        optimized = graphopt.optimize(model, (data.x_train[:2],), drop_layers=k or None,
                                      calibration_data=calib if k else None)
        modules[k] = optimized.torch_module(trainable=False).eval()
        params[k] = optimized.report.params_after
    times: dict[int, list[float]] = {k: [] for k in modules}
    with torch.no_grad():
        for module in modules.values():
            median_seconds(module, x, repeat=1, warmup=3)
        for _ in range(repeat):
            for k, module in modules.items():
                times[k].append(median_seconds(module, x, repeat=1, warmup=0))
    return {k: statistics.median(t) for k, t in times.items()}, params


def print_result(result: ModelResult) -> None:
    dense_loss = "" if result.dense_loss is None else (f", cross-entropy {result.dense_loss:.3f} nats/char "
                                                       f"(perplexity {math.exp(result.dense_loss):.2f})")
    print(f"\n### {result.name}: dense test accuracy {result.dense_acc:.1f} %{dense_loss} "
          f"(trained in {result.train_seconds:.1f} s), {len(result.blocks)} blocks\n", flush=True)
    for metric, scores in result.scores.items():
        print(f"{metric} scores:", ", ".join(f"{b} {scores[b]:.3f}" for b in result.blocks if b in scores))
    lm = result.dense_loss is not None
    print("\n| blocks dropped | method | test acc. (%) | + recover |" + (" test CE | + recover |" if lm else "")
          + " dropped |\n|---|---|---|---|" + ("---|---|" if lm else "") + "---|")
    for row in result.rows:
        detail = row.spread if row.spread else ", ".join(row.dropped) + (" (= last k)" if row.is_last else "")
        losses = f" {row.loss:.3f} | {row.loss_recovered:.3f} |" if lm else ""
        print(f"| {row.k} | {row.method} | {row.accuracy:.1f} | {row.recovered:.1f} |{losses} {detail} |")
    if result.latency:
        print("\n| blocks dropped | params | latency, batch 256 (median) | speed-up |\n|---|---|---|---|")
        for k, seconds in result.latency.items():
            print(f"| {k} | {result.params[k]:,} | {seconds * 1e3:.2f} ms | {result.latency[0] / seconds:.2f}x |")
    print(flush=True)


MODELS = {  # key -> (name, factory, learning rate)
    "cnn": ("residual CNN", DigitsCNN, 3e-3),
    "cnn3": ("residual CNN, 3 stages", DigitsCNN3, 3e-3),
    "transformer": ("transformer", DigitsTransformer, 1e-3),
    "transformer12": ("transformer, 12 layers", lambda: DigitsTransformer(depth=12), 1e-3),
}
TEXT_MODELS = {  # key -> (name, factory of the vocabulary size, peak learning rate)
    "charlm": ("character LM, 8 layers", CharLM, 2e-3),
}


def trained(key: str, seed: int, args: argparse.Namespace, make, fit) -> nn.Module:
    """`fit(make())`, or with `--cache DIR` the weights saved by an earlier run with the same settings (training
    is deterministic, so a cached model is the one this run would train)."""
    if not args.cache:
        return fit(make())
    settings = f"steps{args.steps}_batch{args.batch}" if key in TEXT_MODELS else f"epochs{args.epochs}"
    path = os.path.join(args.cache, f"{key}_seed{seed}_{settings}.pt")
    if os.path.exists(path):
        model = make()
        model.load_state_dict(torch.load(path))
        return model.eval()
    model = fit(make())
    os.makedirs(args.cache, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def run(seed: int, args: argparse.Namespace, text: Text | None) -> list[ModelResult]:
    data = load_digits(seed) if set(args.models) & set(MODELS) else None
    results = []
    for key in args.models:
        torch.manual_seed(seed)
        start = time.perf_counter()
        if key in TEXT_MODELS:
            name, factory, lr = TEXT_MODELS[key]
            model = trained(key, seed, args, lambda: factory(len(text.vocab)),
                            lambda m: train_lm(m, text, args.steps, lr, seed, args.batch))
            result = evaluate(name, model, text, drops=args.drops, calibration=args.text_calibration,
                              draws=args.draws, seed=seed, repeat=args.repeat,
                              train_seconds=time.perf_counter() - start)
        else:
            name, factory, lr = MODELS[key]
            model = trained(key, seed, args, factory, lambda m: train(m, data, args.epochs, lr, seed))
            result = evaluate(name, model, data, drops=args.drops, calibration=args.calibration, draws=args.draws,
                              seed=seed, repeat=args.repeat, train_seconds=time.perf_counter() - start)
        results.append(result)
        print_result(result)
    return results


def across_seeds(all_results: list[list[ModelResult]]) -> None:
    """Mean test accuracy per model, method and k over the seeds (as dropped / with recover=True)."""
    n = len(all_results)
    print(f"\n### mean over {n} seeds: test acc. (%) as dropped / with recover=True; "
          f"'= last' counts the seeds where the ranking chose exactly the last k blocks\n")
    for i, first in enumerate(all_results[0]):
        dense = mean(r[i].dense_acc for r in all_results)
        drops = sorted({row.k for row in first.rows})
        methods = list(dict.fromkeys(row.method for row in first.rows))
        tables = [("accuracy", "recovered", "test acc. (%)", 1)]
        if first.dense_loss is not None:
            dense_loss = mean(r[i].dense_loss for r in all_results)
            print(f"{first.name} (dense {dense:.1f} %, cross-entropy {dense_loss:.3f} nats/char)\n")
            tables.append(("loss", "loss_recovered", "test cross-entropy (nats/char)", 3))
        else:
            print(f"{first.name} (dense {dense:.1f})\n")
        for plain_field, recovered_field, title, digits in tables:
            if len(tables) > 1:
                print(f"{title}, as dropped / with recover=True:\n")
            print("| method | " + " | ".join(f"k={k}" for k in drops) + " |\n|---|" + "---|" * len(drops))
            for method in methods:
                cells = []
                for k in drops:
                    j = next(j for j, row in enumerate(first.rows) if row.method == method and row.k == k)
                    plain = mean(getattr(r[i].rows[j], plain_field) for r in all_results)
                    recovered = mean(getattr(r[i].rows[j], recovered_field) for r in all_results)
                    same = sum(r[i].rows[j].is_last for r in all_results)
                    ranked = method != "last k" and not method.startswith("random")
                    tag = f" (= last {same}/{n})" if ranked else ""
                    cells.append(f"{plain:.{digits}f} / {recovered:.{digits}f}{tag}")
                print(f"| {method} | " + " | ".join(cells) + " |")
            print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--drops", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="numbers of blocks to drop")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--calibration", type=int, default=512, help="training images for scores and recovery")
    parser.add_argument("--steps", type=int, default=2000, help="language model: training steps")
    parser.add_argument("--batch", type=int, default=16, help="language model: training sequences per step")
    parser.add_argument("--text-calibration", type=int, default=256,
                        help="language model: training sequences for scores and recovery")
    parser.add_argument("--draws", type=int, default=5, help="random draws per k")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per latency (0: no latency)")
    parser.add_argument("--models", nargs="+", choices=[*MODELS, *TEXT_MODELS], default=["cnn", "transformer"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="", help="directory of trained weights to reuse (and fill)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.epochs} epochs, calibration "
          f"{args.calibration} training images, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = None
    if set(args.models) & set(TEXT_MODELS):
        text = load_text()
        print(f"text: {text.description}; {args.steps} steps of {args.batch} sequences, calibration "
              f"{args.text_calibration} training sequences")
    results = [run(seed, args, text) for seed in args.seeds]
    if len(results) > 1:
        across_seeds(results)


if __name__ == "__main__":
    main()
