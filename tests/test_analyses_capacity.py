"""Information capacity: hand-computed capacities and FLOPs, Pythia's published counts, live NLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from scalelens.analyses.capacity import ModelShape, flops_per_token, information_capacity
from scalelens.errors import ScalelensError
from scalelens.measure.capacity import (
    CapacitySettings,
    mean_context,
    mean_nll,
    measure_capacity,
    model_shape,
    predicted_bytes,
)
from scalelens.measure.massive import MassiveSettings
from scalelens.measure.text import probe_sequences
from scalelens.models.load import load_model
from scalelens.models.pythia import pythia_config
from scalelens.models.suite import read_manifest
from scalelens.models.testing import tiny_config
from scalelens.probes.prompts import as_prompts, tokenize

# DESIGN.md section 5: non-embedding parameters of the Pythia sizes.
PYTHIA_NON_EMBEDDING = {
    "70m": 18_915_328, "160m": 85_056_000, "410m": 302_311_424, "1b": 805_736_448,
    "1.4b": 1_208_602_624, "2.8b": 2_517_652_480, "6.9b": 6_444_163_072, "12b": 11_327_027_200,
}


def test_capacity_of_hand_computed_inputs():
    # 400 bytes over 100 tokens = 32 bits/token; NLL 2 bits; 2^20 FLOPs; b = -24
    res = information_capacity(2 * math.log(2), 100, 400, 2.0**20, bias=-24.0)
    assert res.text_bits_per_token == 32.0
    assert res.nll_bits_per_token == pytest.approx(2.0, abs=1e-12)
    assert res.compression_gain_bits == pytest.approx(30.0, abs=1e-12)
    assert res.log2_flops_per_token == 20.0
    assert res.information_capacity == pytest.approx((32 - 2 - 24) / 20, abs=1e-12)
    d = res.to_dict()
    assert d["information_capacity"] == pytest.approx(0.3) and d["flops"] is None and d["bias"] == -24.0


def test_capacity_is_linear_in_the_bias():
    a = information_capacity(3.0, 50, 300, 1e9, bias=0.0)
    b = information_capacity(3.0, 50, 300, 1e9, bias=-27.0)
    assert b.information_capacity == pytest.approx(a.information_capacity - 27.0 / math.log2(1e9))
    gain = a.compression_gain_bits
    assert (gain + b.bias) / b.log2_flops_per_token == pytest.approx(b.information_capacity)


def test_pythia_70m_flops_by_hand():
    shape = model_shape(pythia_config("70m"))
    assert shape == ModelShape(512, 6, 8, 8, 64, 2048, 50304, gated_mlp=False)
    f = flops_per_token(shape, context=127.5)  # 256-token sequences: mean (T - 1) / 2
    assert f.attention_proj == 6 * 8 * 512**2 == 12_582_912
    assert f.mlp == 6 * 4 * 512 * 2048 == 25_165_824  # GELU MLP: 4 d d_ff, not 6
    assert f.attention_context == 6 * 4 * 512 * 127.5 == 1_566_720
    assert f.lm_head == 2 * 512 * 50304 == 51_511_296
    assert f.total == 90_826_752


@pytest.mark.parametrize("size", sorted(PYTHIA_NON_EMBEDDING))
def test_pythia_matmul_flops_are_twice_the_published_non_embedding_params(size):
    shape = model_shape(pythia_config(size))
    f = flops_per_token(shape, context=0.0)
    d, n_layers = shape.d_model, shape.n_layers
    # besides the matrices: per layer biases (3d qkv + d dense + 4d fc_in + d fc_out) and two
    # layer norms (4d), plus the final layer norm (2d)
    others = 13 * d * n_layers + 2 * d
    assert f.attention_proj + f.mlp == 2 * (PYTHIA_NON_EMBEDDING[size] - others)


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama", "gemma2", "gemma3_text"])
def test_layer_flops_equal_twice_the_layer_matrices(arch):
    """proj + mlp FLOPs = 2 x the decoder layers' matrix entries, gated MLPs and GQA included."""
    config = tiny_config(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.h
    matrices = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
    f = flops_per_token(model_shape(config), context=0.0)
    assert f.attention_proj + f.mlp == 2 * matrices
    assert f.lm_head == 2 * config.get_text_config().hidden_size * config.vocab_size



def test_opt_with_projected_embeddings_counts_the_matrices_it_multiplies_by():
    """OPT-350m's embeddings are narrower than its residual stream: the LM head is
    word_embed_proj_dim wide, and project_in/project_out cost a matrix each (counted as
    2 x the entries of every matrix a token's forward pass multiplies by)."""
    config = OPTConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                       num_attention_heads=4, word_embed_proj_dim=32)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    decoder = model.model.decoder
    layers = sum(p.numel() for p in decoder.layers.parameters() if p.ndim == 2)
    projections = decoder.project_in.weight.numel() + decoder.project_out.weight.numel()
    f = flops_per_token(model_shape(config), context=0.0)
    assert f.attention_proj + f.mlp == 2 * layers
    assert f.lm_head == 2 * model.lm_head.weight.numel() == 2 * 32 * 320
    assert f.embed_proj == 2 * projections == 4 * 64 * 32
    assert f.total == 2 * (layers + projections + model.lm_head.weight.numel())
    same = OPTConfig(hidden_size=64, word_embed_proj_dim=64)  # OPT-125m and up: no projections
    assert model_shape(same).d_embed is None and flops_per_token(model_shape(same), 0.0).embed_proj == 0

def test_llama_gqa_and_gated_mlp_by_hand():
    shape = model_shape(tiny_config("llama"))  # d 32, 2 layers, 4 heads, 2 kv heads, d_head 8, d_ff 64
    assert shape.gated_mlp and shape.n_kv_heads == 2
    f = flops_per_token(shape, context=10.0)
    assert (f.attention_proj, f.mlp, f.attention_context, f.lm_head) == (12_288, 24_576, 2_560, 32_768)
    assert f.total == 72_192


def test_mean_context():
    assert mean_context(np.array([3])) == 1.0  # positions 0, 1, 2
    assert mean_context(np.array([2, 4])) == pytest.approx((0 + 1 + 0 + 1 + 2 + 3) / 6)
    assert mean_context(np.array([256])) == 127.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, 0, 10, 1e6), "at least one predicted token"),
        ((-0.1, 5, 10, 1e6), "finite number >= 0"),
        ((float("nan"), 5, 10, 1e6), "finite number >= 0"),
        ((1.0, 5, -1, 1e6), "byte count"),
        ((1.0, 5, 10, 1.0), "FLOPs per token"),
    ],
)
def test_bad_inputs_raise(args, message):
    with pytest.raises(ScalelensError, match=message):
        information_capacity(*args)


def test_bad_shapes_and_unknown_architectures_raise():
    with pytest.raises(ScalelensError, match="d_ff must be >= 1"):
        ModelShape(8, 1, 1, 1, 8, 0, 10, False)
    with pytest.raises(ScalelensError, match="context"):
        flops_per_token(ModelShape(8, 1, 1, 1, 8, 8, 10, False), -1.0)
    config = tiny_config("llama")
    config.model_type = "mamba"
    with pytest.raises(ScalelensError, match="no FLOP count for architecture 'mamba'"):
        model_shape(config)


@pytest.fixture(scope="module")
def trained(micro_suite):
    manifest = read_manifest(micro_suite)
    return load_model(micro_suite / manifest.sizes[-1], revision=f"step{manifest.steps[-1]}")


def test_live_nll_and_bytes_match_independent_computations(trained):
    text = MassiveSettings(n_sequences=3, length=40, batch_size=2)
    texts = probe_sequences(trained, None, 3, 40)
    tok = tokenize(as_prompts(texts), trained.tokenizer, trained.info.max_position)
    nll, count = mean_nll(trained, tok, batch_size=2)
    losses, counts, n_bytes = [], [], 0
    for row, n in zip(tok.ids, tok.lengths, strict=True):
        ids = torch.tensor(row[:n], dtype=torch.long)[None]
        with torch.no_grad():
            losses.append(float(trained.model(ids, labels=ids).loss))
        counts.append(int(n) - 1)
        n_bytes += len(trained.tokenizer.decode(row[1:n], clean_up_tokenization_spaces=False).encode())
    assert count == sum(counts) == int(tok.lengths.sum()) - 3
    assert nll == pytest.approx(np.average(losses, weights=counts), rel=1e-5)
    assert predicted_bytes(tok, trained.tokenizer) == n_bytes > count
    res = measure_capacity(trained, text, CapacitySettings(bias=-5.0))
    assert res.n_tokens == count and res.n_bytes == n_bytes
    assert res.nll_bits_per_token == pytest.approx(nll / math.log(2), rel=1e-6)
    assert res.flops is not None and res.flops.context == pytest.approx(mean_context(tok.lengths))
    assert res.information_capacity == pytest.approx(
        (8 * n_bytes / count - nll / math.log(2) - 5.0) / math.log2(res.flops_per_token), rel=1e-6)
