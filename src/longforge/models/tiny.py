"""Tiny randomly initialised models of the real architectures (seeded), for fast tests."""
from __future__ import annotations

import torch

TINY_MODELS = ("tiny-gemma3", "tiny-llama", "tiny-qwen2")


def tiny_config(name: str, vocab_size: int = 512, **overrides):
    """Config of a tiny model with the real architecture's features (GQA, sliding layers)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=8192)
    if name == "tiny-gemma3":
        # Like Gemma 3: sliding-window layers with a full-attention layer every few.
        cfg = Gemma3TextConfig(**{**common, "num_hidden_layers": 6}, sliding_window=32,
                               layer_types=["sliding_attention", "sliding_attention",
                                            "full_attention", "sliding_attention",
                                            "sliding_attention", "full_attention"],
                               query_pre_attn_scalar=16)
    elif name == "tiny-llama":
        cfg = LlamaConfig(**common)
    elif name == "tiny-qwen2":
        cfg = Qwen2Config(**common, use_sliding_window=False)
    else:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {TINY_MODELS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(name: str, seed: int = 0, vocab_size: int = 512, **overrides):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(name, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()
