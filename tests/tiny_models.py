"""Small real-library models the tests share (built from random configs, never downloaded)."""

from __future__ import annotations

import pytest
import torch


def tiny_bert():
    """A one-layer transformers BertModel (hidden 16, vocabulary 64), seeded: its output is a dict-like
    ModelOutput, which is what the tests of output structure need."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    return transformers.BertModel(config).eval()
