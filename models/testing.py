"""Tiny local models and hub/GGUF fixtures for tests (no network, seconds to build).

- ``tiny_config(arch)``: small configs of the supported decoder families.
- ``save_tiny_model(arch, path, tokenizer)``: a random-init model saved as an HF directory.
- ``write_hub_cache(cache_dir, repo_id, revisions)``: lay directories out like the HF hub
  cache (``models--org--name/{blobs,refs,snapshots}``), one snapshot per revision.
- ``write_llama_gguf(model, tokenizer, path)``, ``write_gpt2_gguf(...)``: export a Llama or
  GPT-2 model to F32 GGUF in the tensor layout llama.cpp writes and transformers reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

_TINY: dict[str, dict[str, Any]] = {
    "gpt_neox": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "rotary_pct": 0.25,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "max_position_embeddings": 128,
    },
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    },
    "gemma2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "sliding_window": 64,
    },
    "gemma3_text": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "sliding_window": 64,
    },
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
}


def tiny_config(arch: str, vocab_size: int = 512, **overrides: Any) -> PretrainedConfig:
    """A small config of ``arch`` (``gpt_neox``, ``llama``, ``gemma2``, ``gemma3_text``, ``gpt2``)."""
    kwargs = {
        **_TINY[arch],
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 1,
        **overrides,
    }
    return AutoConfig.for_model(arch, **kwargs)


def save_tiny_model(
    arch: str,
    path: str | Path,
    tokenizer: Any = None,
    seed: int = 0,
    vocab_size: int | None = None,
    **overrides: Any,
) -> Path:
    """Build a random-init ``arch`` model, save it (and ``tokenizer``) to ``path``.

    The vocabulary is ``vocab_size``, else the tokenizer's length, else 512.
    """
    vocab = vocab_size or (len(tokenizer) if tokenizer is not None else 512)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab, **overrides))
    model.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return Path(path)


def write_hub_cache(cache_dir: str | Path, repo_id: str, revisions: dict[str, Path]) -> Path:
    """Lay out model directories like the HF hub cache, one snapshot per revision.

    Files go to ``blobs/<sha256>``, snapshots symlink to them, and ``refs/<revision>``
    holds the snapshot's (synthetic) commit hash, exactly as ``huggingface_hub``
    leaves a downloaded repo.

    Args:
        cache_dir: The cache root (what ``cache_dir=`` / ``HF_HUB_CACHE`` points to).
        repo_id: ``org/name``.
        revisions: Revision name (``step3000``, ``main``) -> directory with its files.

    Returns:
        The repo's cache directory ``<cache_dir>/models--org--name``.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    for revision, source in revisions.items():
        files = sorted(p for p in Path(source).rglob("*") if p.is_file())
        commit = _commit_hash(repo_id, revision, files, Path(source))
        for file in files:
            _link_blob(repo, commit, file, file.relative_to(source))
        ref = repo / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return repo


def _commit_hash(repo_id: str, revision: str, files: list[Path], root: Path) -> str:
    h = hashlib.sha1(f"{repo_id}@{revision}".encode())
    for file in files:
        h.update(str(file.relative_to(root)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _link_blob(repo: Path, commit: str, file: Path, rel: Path) -> None:
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        shutil.copyfile(file, blob)
    link = repo / "snapshots" / commit / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(os.path.relpath(blob, link.parent), link)


def _permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves); transformers undoes it."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_llama_gguf(model: PreTrainedModel, tokenizer: Any, path: str | Path) -> Path:
    """Export a ``LlamaForCausalLM`` and its byte-level BPE tokenizer to an F32 GGUF file.

    Args:
        model: The Llama model.
        tokenizer: A fast byte-level BPE tokenizer (e.g. the suite tokenizer).
        path: Output ``.gguf`` file.

    Returns:
        ``path``.
    """
    import gguf

    cfg = model.config

    def llama_layout(name: str, data: np.ndarray) -> np.ndarray:
        if name.endswith("attn_q"):
            return _permute_qk(data, cfg.num_attention_heads)
        if name.endswith("attn_k"):
            return _permute_qk(data, cfg.num_key_value_heads)
        return data

    return _write_gguf(model, tokenizer, path, gguf.MODEL_ARCH.LLAMA, _gguf_hparams, llama_layout)


def write_gpt2_gguf(model: PreTrainedModel, tokenizer: Any, path: str | Path) -> Path:
    """Export a ``GPT2LMHeadModel`` and its byte-level BPE tokenizer to an F32 GGUF file.

    llama.cpp stores GPT-2's ``Conv1D`` weights (``c_attn``, ``c_proj``, ``c_fc``) transposed.

    Args:
        model: The GPT-2 model.
        tokenizer: A fast byte-level BPE tokenizer.
        path: Output ``.gguf`` file.

    Returns:
        ``path``.
    """
    import gguf

    conv1d = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")

    def gpt2_layout(name: str, data: np.ndarray) -> np.ndarray:
        return data.T if name.endswith(conv1d) and data.ndim == 2 else data

    return _write_gguf(model, tokenizer, path, gguf.MODEL_ARCH.GPT2, _gguf_gpt2_hparams, gpt2_layout)


def _write_gguf(model: PreTrainedModel, tokenizer: Any, path: str | Path, arch: Any,
                hparams: Any, layout: Any) -> Path:
    """Write ``model``'s tensors (``layout(gguf_name, array)`` each) under llama.cpp's names."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    hparams(writer, cfg)
    _gguf_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tied = bool(cfg.get_text_config().tie_word_embeddings)
    for hf_name, tensor in model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(base)
        if gguf_name is None or (gguf_name == "output" and tied):  # llama.cpp writes no tied head
            continue
        data = layout(gguf_name, tensor.detach().to(torch.float32).cpu().numpy())
        writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _gguf_gpt2_hparams(writer: Any, cfg: PretrainedConfig) -> None:
    writer.add_name("tiny-gpt2")
    writer.add_file_type(0)  # all F32
    writer.add_block_count(cfg.n_layer)
    writer.add_context_length(cfg.n_positions)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
    writer.add_head_count(cfg.n_head)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    writer.add_vocab_size(cfg.vocab_size)


def _gguf_hparams(writer: Any, cfg: PretrainedConfig) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_name("tiny-llama")
    writer.add_file_type(0)  # all F32
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg.vocab_size)


def _gguf_tokenizer(writer: Any, tokenizer: Any) -> None:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
