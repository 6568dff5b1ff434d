"""Tiny random-init models of every architecture in the table, built locally."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

VOCAB = 64


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over words w0..w59."""
    vocab = {f"w{i}": i for i in range(60)}
    vocab.update({"[UNK]": 60, "[PAD]": 61, "[BOS]": 62, "[EOS]": 63})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def config(arch: str):
    common = dict(vocab_size=VOCAB, max_position_embeddings=128)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.25,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            **common,
        )
    if arch == "gemma2":
        return Gemma2Config(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            sliding_window=4,
            **common,
        )
    if arch == "gemma3_text":
        return Gemma3TextConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            sliding_window=4,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=3, n_head=4)
    raise KeyError(arch)


ARCHS = ("gpt_neox", "llama", "gemma2", "gemma3_text", "gpt2")


def tiny_model(arch: str = "gpt_neox", attn: str = "sdpa", seed: int = 0):
    """A tiny random model with attention implementation ``attn``."""
    torch.manual_seed(seed)
    cfg = config(arch)
    if arch == "gemma2" and attn == "sdpa":  # Gemma 2's logit softcap has no SDPA path
        attn = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return model.eval()


def prompts(n: int = 7, base: int = 5) -> list[str]:
    """Deterministic prompts of varying length."""
    return [" ".join(f"w{(i * 7 + j * 3) % 60}" for j in range(base + i)) for i in range(n)]
