"""Sweep Hugging Face transformers architectures through graphopt and Torch-Pruning; write the coverage table.

Usage: python bench/bench_sweep.py [--families bert gpt2 vit ...] [--limit N] [--budget-s 3000]
           [--timeout-s 300] [--tp-timeout-s 30] [--out docs/coverage_models.md] [--no-tp]
           [--records bench/results/sweep_records.jsonl [--redo failed|all]]

A full sweep takes hours on two cores: `--records` appends every measured model to a JSON-lines file
and skips the models already in it, so a sweep stopped by its budget continues where it stopped, and
`--redo failed` measures again only the models that failed a graphopt stage (after a fix).

Every model type in transformers' MODEL_MAPPING whose base model takes `input_ids` (text) or
`pixel_values` (vision) is a candidate; audio, video, time-series and multimodal families (a
config with sub-configs: text + vision/audio towers) are listed as skipped with the reason. Each
model is built offline from a small random config (`SMALL_TEXT` / `SMALL_VISION`, plus `OVERRIDES`
per family where those keys do not make it small), `torch.manual_seed(0)`, never a download.

Per model, in its own subprocess with a timeout (`--timeout-s`), so one hang or crash cannot stop
the sweep; the child writes its record after every stage, so a timeout still says where it stopped:
- trace: `graphopt.trace` on a batch-2 example (batch axis dynamic; "ok (batch static)" when torch.export
  fell back to static shapes, with its warning as the reason: the graph then runs at batch 2 only);
- batch 1: `graphopt.trace` on a batch-1 example: is the batch axis still symbolic?
- round trip: `to_module(graph)` equals the original at batch 2 and, if the batch axis is dynamic, at
  batch 1 (rtol = atol = 1e-4);
- prune heads / within heads: `graphopt.optimize(model, x, prune={"ratio": 0.5, "heads": ...})`
  (verify=True), then the pruned model runs at batch 2 (and batch 1 when dynamic) with the original
  output shape;
  the cell gives pruned params / dense params;
- ORT: the pruned (heads) graph, or the traced graph where pruning failed, on ONNX Runtime equals
  the same graph on torch (rtol = atol = 1e-4);
- Torch-Pruning (`--no-tp` to leave out; `--tp-timeout-s` inside the child): `MetaPruner` with L2
  magnitude importance at ratio 0.5 and default options (it is given no head counts: a user's first
  try); whether it prunes without error, whether its pruned model runs, and whether it equals its
  masked original (the same model with the removed output channels of every pruned layer zeroed).

The output is a markdown table (one row per model, then a summary of counts and percentages)
written to `--out` with the command line and the date.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

TOLERANCE = 1e-4  # rtol and atol of every comparison: float32 reassociation, nothing more
SEQ = 16
# Keys that make most families small; a config class that does not know a key keeps it as an unused attribute.
SMALL_TEXT: dict[str, Any] = dict(
    vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, head_dim=8, max_position_embeddings=128, pad_token_id=0, d_model=32, d_ff=64, d_kv=8,
    num_layers=2, num_decoder_layers=2, num_heads=4, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, n_embd=32,
    n_layer=2, n_head=4, n_inner=64, n_positions=128, ffn_dim=64, embedding_size=32, num_experts=4,
    num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
)
SMALL_VISION: dict[str, Any] = dict(
    image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, embed_dim=16, depths=[1, 1], num_heads=[2, 4], hidden_sizes=[16, 32], window_size=4,
    embedding_size=16, out_features=None, out_indices=None,
)
_MLA: dict[str, Any] = dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                           num_key_value_heads=4, n_routed_experts=4, n_group=2, topk_group=1, index_topk=8,
                           index_head_dim=16, index_n_heads=2)
# Families whose defaults the keys above do not shrink, or shrink into an invalid config.
OVERRIDES: dict[str, dict[str, Any]] = {
    "swin": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "swinv2": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4),
    "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1]),
    "convnextv2": dict(hidden_sizes=[16, 32], depths=[1, 1]),
    "resnet": dict(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16),
    "regnet": dict(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16, groups_width=8),
    # three stages: LeViT's down_ops are built for three
    "levit": dict(image_size=64, patch_size=16, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
                  depths=[1, 1, 1], key_dim=[8, 8, 8]),
    "mobilevit": dict(image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]),
    "mobilevitv2": dict(image_size=128, width_multiplier=0.5),  # 64 pools to 2x2 before its last 4x4 patch
    "t5": dict(relative_attention_num_buckets=8),
    "reformer": dict(attn_layers=["local", "local"], axial_pos_shape=[4, 4], axial_pos_embds_dim=[16, 16],
                     local_attn_chunk_length=8),
    # rotary_dim (default 64) must fit head_dim 8
    "codegen": dict(rotary_dim=4),
    "gptj": dict(rotary_dim=4),
    # entity / pronunciation / shape embeddings keep their full vocabularies otherwise
    "luke": dict(entity_vocab_size=64, entity_emb_size=16),
    "roc_bert": dict(pronunciation_vocab_size=64, shape_vocab_size=64, pronunciation_embed_dim=16, shape_embed_dim=16),
    "bit": dict(hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16, num_groups=8),
    # per-stage lists: two stages, head counts that divide the stage widths
    "poolformer": dict(depths=[1, 1], hidden_sizes=[16, 32], patch_sizes=[4, 3], strides=[4, 2], padding=[2, 1],
                       num_encoder_blocks=2),
    "glpn": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                 strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4], decoder_hidden_size=16),
    "segformer": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                      patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4],
                      decoder_hidden_size=16),
    "pvt": dict(num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32],
                patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4]),
    "pvt_v2": dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                   strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4]),
    # image_size must be a pair
    "yolos": dict(image_size=[32, 32], num_detection_tokens=4),
    "mgp-str": dict(image_size=[32, 32], max_token_length=8),
    # multi-head latent attention (MLA): small LoRA ranks and rope / nope / value head dims, as many key-value
    # heads as heads, expert groups that divide the experts; sparse-attention indexers with small dims
    **{name: dict(_MLA) for name in ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "minicpm3", "mistral_large4_text",
                                     "sarvam_mla", "youtu", "axk1", "axk2")},
    "deepseek_v32": dict(_MLA, mlp_layer_types=["dense", "sparse"], layer_types=["indexed_attention"] * 2),
    "glm_moe_dsa": dict(_MLA, mlp_layer_types=["dense", "sparse"], layer_types=["indexed_attention"] * 2,
                        indexer_types=["full", "full"]),
    "hy_v4": dict(_MLA, mlp_layer_types=["dense", "sparse"], layer_types=["indexed_attention"] * 2,
                  indexer_types=["full", "shared"]),
    "hy_v4_vl_text": dict(_MLA, mlp_layer_types=["dense", "sparse"], layer_types=["indexed_attention"] * 2,
                          indexer_types=["full", "shared"],
                          rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[0, 1, 1])),
    "longcat_flash": dict(_MLA, head_dim=4, ffn_hidden_size=64, zero_expert_num=2, expert_ffn_hidden_size=32),
    "gemma4_text": dict(vocab_size_per_layer_input=256, hidden_size_per_layer_input=8,
                        layer_types=["sliding_attention", "full_attention"], sliding_window=8),
    "granite_docling_vision": dict(out_hidden_size=32, deepstack_visual_indexes=[]),
    "radio": dict(max_img_size=64, patch_dim=32),
    # Mamba-2 mixers: heads * head dim = expand * hidden_size
    "bamba": dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1),
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1),
    "mamba2": dict(num_heads=8, head_dim=8, expand=2, state_size=8, n_groups=1),
    "esmc": dict(num_key_value_heads=4),  # no grouped-query attention
    "zaya": dict(num_experts_per_tok=1),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=8),  # one entry per layer
    "hiera": dict(image_size=[32, 32], embed_dim=16, depths=[1, 1], num_heads=[1, 2], patch_stride=[2, 2],
                  query_stride=[2, 2], masked_unit_size=[4, 4], num_query_pool=1, patch_size=[3, 3],
                  patch_padding=[1, 1]),
    "cosmos3_edge_text": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1])),
    # multimodal-rope text towers: mrope sections that sum to half the rotary dims (head_dim 8)
    **{name: dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1]))
       for name in ("glm4v_text", "glm_image_text", "glm_ocr_text", "qwen2_vl_text", "qwen2_5_vl_text")},
    "glm4v_moe_text": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                                mrope_section=[0, 1, 1])),
    "neomme": dict(head_dim=16, embedding_rank=16, embedding_dim=16, sliding_window=8),  # rotary dims a multiple of 4
    "funnel": dict(block_sizes=[1, 1], block_repeats=[1, 1], d_head=8, d_inner=64, num_decoder_layers=1,
                   architectures=["FunnelModel"]),  # two base classes: AutoModel picks by architectures
    "dots1": dict(layer_types=["full_attention"] * 2, max_window_layers=2, n_routed_experts=4, n_shared_experts=1,
                  first_k_dense_replace=1),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "hgnet_v2": dict(embedding_size=16, depths=[1, 1], hidden_sizes=[32, 64], stem_channels=[3, 16, 16],
                     stage_in_channels=[16, 32], stage_mid_channels=[16, 16], stage_out_channels=[32, 64],
                     stage_num_blocks=[1, 1], stage_downsample=[False, True], stage_downsample_strides=[2, 2],
                     stage_light_block=[False, True], stage_kernel_size=[3, 5], stage_numb_of_layers=[2, 2]),
    "efficientnet": dict(width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320),
    "swin2sr": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, upscale=1, patch_size=1),
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
                 attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=64, moe_num_experts=4, moe_top_k=1)),
    "xmod": dict(languages=["en_XX"], default_language="en_XX"),
    "glm5_next_text": dict(_MLA, qk_rope_head_dim=0, qk_nope_head_dim=8, index_kpool=4, linear_head_dim=8,
                           linear_num_heads=4, mlp_layer_types=["dense", "sparse"],
                           layer_types=["linear_attention", "indexed_attention"], indexer_types=["full", "full"]),
    "gemma3n_text": dict(layer_types=["sliding_attention", "full_attention"], intermediate_size=[64, 64],
                         activation_sparsity_pattern=[0.0, 0.0], vocab_size_per_layer_input=256,
                         hidden_size_per_layer_input=8, laurel_rank=8, num_kv_shared_layers=0, sliding_window=8),
    "zamba2": dict(layers_block_type=["mamba", "hybrid"], hybrid_layer_ids=[1], mamba_headdim=8, mamba_d_state=8,
                   chunk_size=16, attention_hidden_size=64, attention_head_dim=16, kv_channels=8, adapter_rank=8,
                   n_mamba_heads=8, mamba_ngroups=1),
    "vits": dict(flow_size=16, spectrogram_bins=17, upsample_initial_channel=16, duration_predictor_filter_channels=16,
                 upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3],
                 resblock_dilation_sizes=[[1, 3]], prior_encoder_num_wavenet_layers=1,
                 posterior_encoder_num_wavenet_layers=1, prior_encoder_num_flows=1),
}
MAX_PARAMS = 5_000_000  # a config still this big after shrinking needs an OVERRIDES entry, not minutes of CPU
PRIORITY = ("bert", "roberta", "albert", "electra", "gpt2", "llama", "mistral", "qwen2", "gemma", "gemma3_text",
            "phi3", "opt", "bloom", "falcon", "modernbert", "t5", "bart", "mpnet", "deberta-v2", "vit", "deit",
            "swin", "beit", "convnext", "convnextv2", "levit", "mobilevit", "resnet", "regnet", "dinov2")
MULTIMODAL_MAPPINGS = ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
                       "MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES",
                       "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES",
                       "MODEL_FOR_DOCUMENT_QUESTION_ANSWERING_MAPPING_NAMES")
STAGES = ("trace", "batch1", "round_trip", "prune_heads", "prune_within", "ort", "tp_prune", "tp_match")


@dataclass
class Family:
    """A model type of transformers' MODEL_MAPPING: its modality, or why the sweep skips it."""

    name: str
    modality: str  # "text", "vision" or "" (skipped)
    skip: str = ""


@dataclass
class Record:
    """One model's results: per stage "ok", "ok (...)", "FAIL", "timeout", "—" (not reached) or "skip"."""

    model: str
    modality: str
    params: int = 0
    cells: dict[str, str] = field(default_factory=lambda: {s: "—" for s in STAGES})
    reasons: dict[str, str] = field(default_factory=dict)
    graphopt_s: float = 0.0
    tp_s: float = 0.0
    commit: str = ""  # graphopt's commit when this record was measured (records accumulate across runs)

    def reason(self) -> str:
        """Each failed stage and its error, in stage order: what the table's reason column shows."""
        return "; ".join(f"{stage}: {text}" for stage, text in self.reasons.items())[:400]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _modality(forward: Any) -> str:
    params = list(inspect.signature(forward).parameters)[1:]
    first = params[0] if params else ""
    return {"input_ids": "text", "pixel_values": "vision"}.get(first, f"skip: first input '{first}'")


# Sub-config names that mean a second tower (text + vision, audio, video): a multimodal model. Others
# (MPT's attn_config, DBRX's ffn_config, DETR's backbone_config, T5Gemma's encoder) are one modality.
OTHER_MODALITY = ("text_config", "vision_config", "audio", "video", "speech", "image_model", "prompt_encoder")


def _other_modality(sub_configs: Any) -> bool:
    return any(key in name for name in sub_configs for key in OTHER_MODALITY)


def families() -> list[Family]:
    """Every MODEL_MAPPING model type, classified by its base model's first input and its config."""
    import transformers
    from transformers.models.auto import modeling_auto as auto
    from transformers import CONFIG_MAPPING

    multimodal = set().union(*(getattr(auto, name, {}) for name in MULTIMODAL_MAPPINGS))
    found = []
    for name, cls_name in auto.MODEL_MAPPING_NAMES.items():
        cls_name = cls_name[0] if isinstance(cls_name, (tuple, list)) else cls_name
        try:
            modality = _modality(getattr(transformers, cls_name).forward)
            sub_configs = getattr(CONFIG_MAPPING[name], "sub_configs", {}) or {}
        except Exception as exc:  # a family that cannot even be imported here (a missing optional package)
            found.append(Family(name, "", f"skip: {_first_line(exc)}"))
            continue
        if modality.startswith("skip"):
            found.append(Family(name, "", modality + " (audio, video, time series or other)"))
        elif name in multimodal or _other_modality(sub_configs):
            found.append(Family(name, "", f"skip: multimodal (sub-configs {', '.join(sorted(sub_configs))})"))
        else:
            found.append(Family(name, modality))
    return found


def small_config(name: str, modality: str) -> Any:
    """The family's config built from the small keys and its OVERRIDES entry."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[name]
    keys = dict(SMALL_TEXT if modality == "text" else SMALL_VISION)
    keys.update(OVERRIDES.get(name, {}))
    # Only keys the config takes: a stray one is stored as-is, or refused (Falcon's head_dim is a property).
    # An alias (attribute_map: Swin's num_attention_heads -> num_heads) must not overwrite the key it names.
    params = inspect.signature(cls.__init__).parameters
    named = [p for p in list(params.values())[1:] if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    aliases = getattr(cls, "attribute_map", {}) or {}
    return cls(**{k: v for k, v in keys.items()
                  if (not named or k in params or k in aliases) and aliases.get(k) not in keys})


class HFWrapper(torch.nn.Module):
    """The model called by keyword with the sweep's inputs; returns last_hidden_state, else the first output.

    One tensor out keeps the comparisons (and Torch-Pruning's output check) the same for every family.
    """

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys)
        accepts = set(inspect.signature(model.forward).parameters)
        self.extra = {k: False for k in ("use_cache", "output_attentions", "output_hidden_states") if k in accepts}

    # Named parameters, not *inputs: torch.export cannot match a per-input dynamic axis to a varargs tuple.
    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (first,) if second is None else (first, second)
        out = self.model(**dict(zip(self.keys, inputs)), **self.extra)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.to_tuple()[0] if hasattr(out, "to_tuple") else out[0]
        while isinstance(hidden, (tuple, list)):  # per-stage feature maps (HGNet-V2), per-head logits (MGP-STR)
            hidden = hidden[-1]
        return hidden


def _untie_zero_weights(model: torch.nn.Module) -> None:
    """Give matrices that a family initialises to zero (AFMoE's router) small random values, as training would.

    With all-zero router logits every expert ties, and which k of equal scores top-k returns is up to the
    kernel: torch and ONNX Runtime then pick different experts, a difference of the random init, not of the
    lowering. Vectors (biases, gains, LayerScale) keep their init.
    """
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and param.numel() and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


class TooLarge(Exception):
    """The small config still builds a model over MAX_PARAMS (found on the meta device, before allocating it)."""


def build(name: str, modality: str) -> tuple[Any, tuple, tuple]:
    """The wrapped model of a family and its batch-1 and batch-2 examples (the batch-1 one is row 0)."""
    from transformers import AutoModel

    config = small_config(name, modality)
    try:  # count first, on the meta device: a config the small keys do not shrink can take gigabytes
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    except Exception:  # some models' init code cannot run on meta: build it and count after
        size = 0
    if size > MAX_PARAMS:
        raise TooLarge(f"{size:,} params with the small config: needs an OVERRIDES entry")
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    _untie_zero_weights(model)
    if modality == "text":
        vocab = max(4, min(getattr(config, "vocab_size", 256) or 256, 256))
        ids = torch.randint(3, vocab, (2, SEQ))
        keys = ["input_ids"]
        inputs: tuple = (ids,)
        if getattr(config, "is_encoder_decoder", False):
            keys.append("decoder_input_ids")
            inputs = (ids, torch.randint(3, vocab, (2, SEQ // 2)))
    else:
        size = getattr(config, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        inputs = (torch.randn(2, getattr(config, "num_channels", 3), size, size),)
        keys = ["pixel_values"]
    return HFWrapper(model, keys).eval(), tuple(t[:1] for t in inputs), inputs


def _close(a: torch.Tensor, b: torch.Tensor) -> str:
    """"" when `a` equals `b` within TOLERANCE, else what differs."""
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    if not torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
        return f"max abs diff {(a - b).abs().max().item():.3g}"
    return ""


class Child:
    """One model's stages, run in the child process; the record is written after each stage."""

    def __init__(self, name: str, modality: str, path: str) -> None:
        self.record = Record(name, modality)
        self.path = path

    def save(self) -> None:
        Path(self.path).write_text(json.dumps(asdict(self.record)))

    def stage(self, stage: str, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` -> (cell, value); a raised error marks the stage FAIL with its first line."""
        self.record.cells[stage] = "timeout"  # what the parent reads if the child is killed in this stage
        self.save()
        try:
            cell, value = fn(*args)
        except _Failed as failed:
            cell, value = failed.cell, None
            self.record.reasons[stage] = str(failed)
        except _Static as static:
            cell, value = "ok (batch static)", static.graph
            self.record.reasons[stage] = str(static)
        except Exception as exc:
            cell, value = "FAIL", None
            self.record.reasons.setdefault(stage, _first_line(exc))
        self.record.cells[stage] = cell
        if cell.startswith("FAIL") and stage not in self.record.reasons:
            self.record.reasons[stage] = cell[len("FAIL ("):-1] if cell.startswith("FAIL (") else "failed"
        self.save()
        return value


def _trace(model: torch.nn.Module, inputs: tuple) -> tuple[str, Any]:
    """Trace at batch 2; a graph whose batch axis fell back to static is "ok (batch static)", with the warning."""
    import graphopt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = graphopt.trace(model, inputs)
    if graph.symbols():
        return "ok", graph
    said = [" ".join(str(w.message).split())[:300] for w in caught if "static" in str(w.message)]
    raise _Static(graph, said[0] if said else "graph.symbols() == {}")


class _Static(Exception):
    """The trace succeeded but with static shapes: Child.stage records it as ok, with the reason."""

    def __init__(self, graph: Any, why: str) -> None:
        super().__init__(why)
        self.graph = graph


def _batch1(model: torch.nn.Module, x1: tuple, x2: tuple) -> tuple[str, Any]:
    """Trace at batch 1; the graph must keep the batch axis and then compute the batch-2 output too."""
    import graphopt
    from graphopt.backends.torch import to_module

    graph = graphopt.trace(model, x1)
    if not graph.symbols():
        return "FAIL (batch fixed: graph.symbols() == {})", graph
    with torch.no_grad():
        diff = _close(to_module(graph)(*x2), model(*x2))
    return (f"FAIL ({diff} at batch 2)" if diff else "ok"), graph


def _round_trip(graph: Any, model: torch.nn.Module, x1: tuple, x2: tuple) -> tuple[str, Any]:
    """The batch-2 trace as a torch module equals the original at batch 2 and, its batch axis dynamic, at 1."""
    from graphopt.backends.torch import to_module

    module = to_module(graph)
    with torch.no_grad():
        for batch, x in ((2, x2), (1, x1))[:2 if graph.symbols() else 1]:
            diff = _close(module(*x), model(*x))
            if diff:
                return f"FAIL ({diff} at batch {batch})", None
    return "ok", None


def _prune(model: torch.nn.Module, x1: tuple, x2: tuple, heads: bool) -> tuple[str, Any]:
    """optimize(prune 0.5); the pruned model must run at batch 2 (and 1 if dynamic) with the original output shape."""
    import graphopt

    optimized = graphopt.optimize(model, x2, prune={"ratio": 0.5, "heads": heads})
    with torch.no_grad():
        for x in (x2, x1)[:2 if optimized.graph.symbols() else 1]:
            want, got = model(*x), optimized(*x)
            if got.shape != want.shape:
                return f"FAIL (pruned output {tuple(got.shape)} != {tuple(want.shape)})", None
    kept = optimized.report.params_after / max(optimized.report.params_before, 1)
    return f"ok ({kept:.0%} params)", optimized


def _ort(graph: Any, x2: tuple, what: str) -> tuple[str, Any]:
    from graphopt.backends.onnx import first_difference, runtime
    from graphopt.backends.torch import to_module

    with torch.no_grad():
        diff = _close(runtime.compile(graph, threads=1)(*x2), to_module(graph)(*x2))
    if not diff:
        return f"ok ({what})", None
    found = first_difference(graph, x2, rtol=TOLERANCE, atol=TOLERANCE)  # which node, and why
    if found is None:
        raise _Failed(f"FAIL ({what}: {diff})", f"{what}: {diff}; no single node differs beyond the tolerance")
    if found.tie_order:
        raise _Failed(f"FAIL ({what}: top-k tie order)", f"{what}: {diff}; {found}")
    raise _Failed(f"FAIL ({what}: {diff})", f"{what}: {diff}; first differs at {found}")


class _Failed(Exception):
    """A stage that failed with a short cell and a longer reason (Child.stage records both)."""

    def __init__(self, cell: str, reason: str) -> None:
        super().__init__(reason)
        self.cell = cell


class _Alarm:
    """SIGALRM after `seconds` raises TimeoutError in the stage that runs (Torch-Pruning hangs on some models)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def _raise(self, *_: Any) -> None:
        raise TimeoutError(f"no result within {self.seconds} s")

    def __enter__(self) -> "_Alarm":
        signal.signal(signal.SIGALRM, self._raise)
        signal.alarm(self.seconds)
        return self

    def __exit__(self, *_: Any) -> None:
        signal.alarm(0)


def _mask_out_channels(module: torch.nn.Module, idxs: Sequence[int]) -> None:
    """Zero the output channels `idxs` of one layer: what Torch-Pruning's removal should equal."""
    idx = torch.as_tensor(list(idxs), dtype=torch.long)
    dim = 1 if isinstance(module, (torch.nn.Embedding, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)) else 0
    with torch.no_grad():
        for pname in ("weight", "bias"):
            param = getattr(module, pname, None)
            if isinstance(param, torch.Tensor) and param.dim() > (dim if pname == "weight" else 0):
                param.index_fill_(dim if pname == "weight" else 0, idx, 0.0)


def _tp_prune(model: torch.nn.Module, x2: tuple, seconds: int) -> tuple[str, Any]:
    """Torch-Pruning's MetaPruner at 0.5 on a copy; returns (pruned, masked original) for _tp_match."""
    import torch_pruning as tp

    pruned, masked = copy.deepcopy(model), copy.deepcopy(model)
    names = {m: n for n, m in pruned.named_modules()}
    masked_modules = dict(masked.named_modules())
    with _Alarm(seconds):
        pruner = tp.pruner.MetaPruner(pruned, x2, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5)
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                if "out_channels" in getattr(dep.handler, "__name__", "") and dep.target.module in names:
                    _mask_out_channels(masked_modules[names[dep.target.module]], idxs)
            group.prune()
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    return f"ok ({after / max(before, 1):.0%} params)", (pruned, masked)


def _tp_match(pruned: torch.nn.Module, masked: torch.nn.Module, x2: tuple) -> tuple[str, Any]:
    with torch.no_grad():
        try:
            got = pruned(*x2)
        except Exception as exc:
            return f"FAIL (pruned model does not run: {_first_line(exc)})", None
        want = masked(*x2)
    if got.shape != want.shape:
        return f"n/a (runs; output {tuple(want.shape)} -> {tuple(got.shape)})", None
    diff = _close(got, want)
    return (f"FAIL ({diff})" if diff else "ok"), None


def run_child(name: str, modality: str, path: str, tp_seconds: int | None) -> Record:
    """Every stage of one model, in this process (the parent runs this in a subprocess)."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    child = Child(name, modality, path)
    record = child.record
    try:
        model, x1, x2 = build(name, modality)
        with torch.no_grad():  # a model that fails eagerly has a bad small config: not graphopt's failure
            model(*x2), model(*x1)
    except TooLarge as exc:
        record.cells = {s: "skip" for s in STAGES}
        record.reasons["build"] = str(exc)
        child.save()
        return record
    except Exception as exc:
        record.cells = {s: "skip" for s in STAGES}
        record.reasons["build"] = f"the model does not build or run eagerly with the small config: {_first_line(exc)}"
        child.save()
        return record
    record.params = sum(p.numel() for p in model.parameters())
    if record.params > MAX_PARAMS:
        record.cells = {s: "skip" for s in STAGES}
        record.reasons["build"] = f"{record.params:,} params with the small config: needs an OVERRIDES entry"
        child.save()
        return record
    start = time.perf_counter()
    graph = child.stage("trace", _trace, model, x2)
    child.stage("batch1", _batch1, model, x1, x2)
    pruned = None
    if graph is not None:
        child.stage("round_trip", _round_trip, graph, model, x1, x2)
        pruned = child.stage("prune_heads", _prune, model, x1, x2, True)
        child.stage("prune_within", _prune, model, x1, x2, False)
        ort_graph, what = (pruned.graph, "pruned") if pruned is not None else (graph, "dense")
        child.stage("ort", _ort, ort_graph, x2, what)
    record.graphopt_s = time.perf_counter() - start
    if tp_seconds:
        start = time.perf_counter()
        both = child.stage("tp_prune", _tp_prune, model, x2, tp_seconds)
        record.tp_s = time.perf_counter() - start
        if both is not None:
            child.stage("tp_match", _tp_match, *both, x2)
    child.save()
    return record


def run_isolated(family: Family, timeout_s: float, tp_seconds: int | None) -> Record:
    """`run_child` in a subprocess; a timeout or crash keeps the stages the child had recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "record.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", family.name, family.modality, path,
               str(tp_seconds or 0)]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        problem, timed_out = "", False
        try:
            done = subprocess.run(cmd, timeout=timeout_s, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                problem = f"child exited {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"
        except subprocess.TimeoutExpired:
            problem, timed_out = f"timeout after {timeout_s:g} s", True
        if not os.path.exists(path):
            return Record(family.name, family.modality, reasons={"child": problem or "no record written"},
                          cells={s: "FAIL" for s in STAGES})
        record = Record(**json.loads(Path(path).read_text()))
    if problem:
        stuck = [s for s, cell in record.cells.items() if cell == "timeout"]
        for stage in stuck:  # the stage the child was in when it was killed or crashed
            record.cells[stage] = "timeout" if timed_out else "FAIL"
        record.reasons[stuck[0] if stuck else "child"] = problem
    return record


COLUMNS = (("trace", "trace"), ("batch1", "batch 1"), ("round_trip", "round trip"), ("prune_heads", "prune heads"),
           ("prune_within", "prune within heads"), ("ort", "ORT"), ("tp_prune", "TP prune"),
           ("tp_match", "TP = masked"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(records: Sequence[Record]) -> str:
    """One markdown row per model: stage cells, times, and the first failure of each stage."""
    head = ("| model | kind | params | " + " | ".join(title for _, title in COLUMNS)
            + " | graphopt s | TP s | commit | reason |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        cells = " | ".join(_cell(r.cells.get(key, "—")) for key, _ in COLUMNS)
        lines.append(f"| {r.model} | {r.modality} | {r.params:,} | {cells} | {r.graphopt_s:.1f} | {r.tp_s:.2f} | "
                     f"{r.commit or '?'} | {_cell(r.reason())} |")
    return "\n".join(lines)


def summary(records: Sequence[Record]) -> str:
    """Per stage: how many of the models that were built passed, as a count and a percentage."""
    built = [r for r in records if r.cells.get("trace") != "skip"]
    lines = [f"Models built: {len(built)} of {len(records)} run "
             f"({len(records) - len(built)} did not build from the small config or were too large).", "",
             "| stage | ok | of | % |", "|---|---|---|---|"]
    for key, title in COLUMNS:
        done = [r for r in built if r.cells.get(key) not in ("skip",)]
        if key.startswith("tp"):  # measured without Torch-Pruning (--no-tp): not a failure of either tool
            done = [r for r in done if r.cells.get("tp_prune") != "—"]
        ok = sum(1 for r in done if r.cells.get(key, "").startswith("ok"))
        pct = f"{100 * ok / len(done):.0f} %" if done else "—"
        lines.append(f"| {title} | {ok} | {len(done)} | {pct} |")
    broken = [r.model for r in built if r.cells["prune_heads"].startswith("FAIL (pruned output")]
    lines += ["", f"Pruned models that did not run or changed the output shape: {len(broken)}"
              + (f" ({', '.join(broken)})" if broken else "") + "."]
    return "\n".join(lines)


def document(records: Sequence[Record], skipped: Sequence[Family], not_run: Sequence[str], command: str) -> str:
    import transformers

    try:
        import torch_pruning
        tp_version = torch_pruning.__version__
    except ImportError:
        tp_version = "not installed"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    reasons: dict[str, list[str]] = {}
    for fam in skipped:
        reasons.setdefault(fam.skip, []).append(fam.name)
    skip_lines = "\n".join(f"- {reason}: {', '.join(names)}" for reason, names in sorted(reasons.items()))
    return f"""# Coverage on Hugging Face transformers models

Generated by `bench/bench_sweep.py` (see its docstring for what each column checks) on {date}:

    {command}

graphopt at commit {head or "?"} when the document was written; each row was measured at the commit in its
"commit" column (`--records` keeps rows from earlier runs; other changes may have landed in the working tree),
torch {torch.__version__}, transformers {transformers.__version__}, torch-pruning {tp_version}; small random
configs, `torch.manual_seed(0)` (weight matrices a family initialises to zero, such as a router, get small random
values: all-zero router logits tie every expert), no downloads; one CPU thread per model. Comparisons: rtol = atol = {TOLERANCE:g}.
Cells: `ok`, `FAIL`, `timeout`, `—` (not reached: an earlier stage failed), `skip`; `n/a` in "TP = masked"
means Torch-Pruning's model ran but pruned the output width, so it cannot be compared with the original.
"ok (batch static)" in "trace": torch.export could not keep the batch axis dynamic and graphopt fell back to
static shapes (the reason column quotes its warning); round trip and prune are then checked at batch 2 only.
"batch 1" traces a batch-1 example and asks that the batch axis stay symbolic and the graph match at batch 2.
"ORT" runs the pruned (heads) graph, or the traced one where pruning failed, on ONNX Runtime. Rows measured
without Torch-Pruning (`--no-tp`) have "—" in its columns and are left out of its rows in the summary.

## Summary

{summary(records)}

## Models

{table(records)}

## Not run in this sweep

Families that were candidates but were not run within the time budget ({len(not_run)}): {', '.join(not_run) or 'none'}.

Skipped families ({len(skipped)}), by reason:

{skip_lines}
"""


def order(candidates: Sequence[Family], chosen: Sequence[str] | None) -> list[Family]:
    """The families to run: `chosen` in its order, else the PRIORITY ones first, then alphabetically."""
    by_name = {f.name: f for f in candidates}
    if chosen:
        unknown = [n for n in chosen if n not in by_name]
        if unknown:
            raise SystemExit(f"not a text or vision family here: {', '.join(unknown)}")
        return [by_name[n] for n in chosen]
    first = [by_name[n] for n in PRIORITY if n in by_name]
    return first + sorted((f for f in candidates if f.name not in PRIORITY), key=lambda f: f.name)


def _commit() -> str:
    """graphopt's commit: of the checkout graphopt is imported from (the script may run from a copy)."""
    import graphopt

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(graphopt.__file__).resolve().parent)
    return done.stdout.strip() or "?"


def load_records(path: str | None) -> dict[str, Record]:
    """The records of an earlier run (`--records`), by model; a missing file is an empty sweep."""
    if not path or not os.path.exists(path):
        return {}
    records = (Record(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip())
    return {r.model: r for r in records}  # a model measured again: the last line wins


def failed(record: Record) -> bool:
    return any(cell.startswith(("FAIL", "timeout")) for key, cell in record.cells.items() if not key.startswith("tp"))


def sweep(fams: Sequence[Family], timeout_s: float, tp_seconds: int | None, budget_s: float,
          log: Any = None, records_path: str | None = None) -> tuple[list[Record], list[str]]:
    """Run each family isolated until the budget is spent; returns the records and the families not run.

    With `records_path`, each record is appended to that JSON-lines file as soon as it is measured, so
    a sweep can be stopped at any time and continued by a later run (see `--records`).
    """
    start, records, commit = time.monotonic(), [], _commit()
    for index, fam in enumerate(fams):
        if time.monotonic() - start > budget_s:
            return records, [f.name for f in fams[index:]]
        record = run_isolated(fam, timeout_s, tp_seconds)
        record.commit = commit
        records.append(record)
        if records_path:
            with open(records_path, "a") as out:
                out.write(json.dumps(asdict(record)) + "\n")
        if log is not None:
            print(f"[{time.monotonic() - start:6.0f}s] {fam.name}: "
                  + " ".join(f"{k}={v.split(' ')[0]}" for k, v in record.cells.items()), file=log, flush=True)
    return records, []


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        name, modality, path, tp_seconds = argv[1:5]
        run_child(name, modality, path, int(tp_seconds) or None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", help="run these model types only (default: all candidates)")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many families")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no model after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="kill one model's subprocess after this")
    parser.add_argument("--tp-timeout-s", type=int, default=30, help="Torch-Pruning's own time limit per model")
    parser.add_argument("--no-tp", action="store_true", help="leave out the Torch-Pruning columns")
    parser.add_argument("--out", default=None, help="write the markdown document here (default: print it)")
    parser.add_argument("--records", default=None,
                        help="JSON-lines file of measured models: those already in it are not run again (see "
                             "--redo), each new one is appended when measured, and the document covers them all")
    parser.add_argument("--redo", choices=("none", "failed", "all"), default="none",
                        help="with --records: measure again the models that failed a graphopt stage, or all")
    args = parser.parse_args(argv)
    found = families()
    candidates = [f for f in found if f.modality]
    known = load_records(args.records)
    keep = {name: r for name, r in known.items()
            if args.redo == "none" or (args.redo == "failed" and not failed(r))}
    fams = [f for f in order(candidates, args.families) if f.name not in keep]
    not_run = [f.name for f in fams[args.limit:]] if args.limit is not None else []
    fams = fams[:args.limit] if args.limit is not None else fams
    records, over_budget = sweep(fams, args.timeout_s, None if args.no_tp else args.tp_timeout_s, args.budget_s,
                                 log=sys.stderr, records_path=args.records)
    if not args.families:
        not_run = over_budget + not_run
    rank = {f.name: i for i, f in enumerate(order(candidates, None))}
    everything = {**keep, **{r.model: r for r in records}}
    records = sorted(everything.values(), key=lambda r: rank.get(r.model, len(rank)))
    command = "python bench/bench_sweep.py " + " ".join(argv)
    text = document(records, [f for f in found if not f.modality], not_run, command.strip())
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    else:
        print(text)


if __name__ == "__main__":
    main()
