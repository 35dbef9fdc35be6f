"""Tiny transformer backbones for tests: saved like a hub model directory, built in seconds."""

from __future__ import annotations

from pathlib import Path

import torch


def bert_dir(path: Path, hidden: int = 32) -> Path:
    """A 2-layer BERT without dropout, random weights (seed 0) saved in ``path``: a local
    model directory ``--backbone`` accepts, its weights loading as "pretrained"."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        vocab_size=8,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    return path
