from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, OPTConfig

from scalelens.errors import ScalelensError
from scalelens.models.params import count_parameters
from scalelens.models.presets import checkpoint_steps
from scalelens.models.pythia import PYTHIA_CONFIGS, PYTHIA_STEPS, pythia_config, pythia_revision
from scalelens.models.testing import tiny_config

# Published Pythia counts (non-embedding, total).
PYTHIA_TABLE = {
    "70m": (18_915_328, 70_426_624),
    "160m": (85_056_000, 162_322_944),
    "410m": (302_311_424, 405_334_016),
    "1b": (805_736_448, 1_011_781_632),
    "1.4b": (1_208_602_624, 1_414_647_808),
    "2.8b": (2_517_652_480, 2_775_208_960),
    "6.9b": (6_444_163_072, 6_857_302_016),
    "12b": (11_327_027_200, 11_846_072_320),
}


@pytest.mark.parametrize("size", sorted(PYTHIA_TABLE))
def test_pythia_counts_match_the_published_table(size):
    total, non_embedding = count_parameters(pythia_config(size))
    assert (non_embedding, total) == PYTHIA_TABLE[size]


@pytest.mark.parametrize("size", sorted(PYTHIA_TABLE))
def test_pythia_configs_have_pythia_shape(size):
    cfg = pythia_config(size)
    assert cfg.model_type == "gpt_neox"
    assert cfg.intermediate_size == 4 * cfg.hidden_size
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25
    assert cfg.use_parallel_residual and not cfg.tie_word_embeddings
    assert cfg.max_position_embeddings == 2048
    assert PYTHIA_CONFIGS[size]["vocab_size"] in (50304, 50432, 50688)


def test_pythia_steps_are_the_154_public_checkpoints():
    assert len(PYTHIA_STEPS) == 154
    assert PYTHIA_STEPS[:11] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert PYTHIA_STEPS[11:14] == (1000, 2000, 3000) and PYTHIA_STEPS[-1] == 143000
    assert pythia_revision(3000) == "step3000"
    with pytest.raises(ScalelensError, match="no checkpoint at step 3"):
        pythia_revision(3)


def test_scaled_schedule_reproduces_pythia():
    assert checkpoint_steps(143000, 1000) == list(PYTHIA_STEPS)
    assert checkpoint_steps(200, 20) == [0, 1, 2, 4, 8, 16, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200]


def test_unknown_pythia_size():
    with pytest.raises(ScalelensError, match="unknown Pythia size '3b'"):
        pythia_config("3b")


def test_tied_embeddings_are_subtracted_once():
    cfg = tiny_config("gpt2", vocab_size=100)  # GPT-2 ties wte and lm_head
    total, non_embedding = count_parameters(cfg)
    model = AutoModelForCausalLM.from_config(cfg)
    assert total == sum(p.numel() for p in model.parameters())
    assert non_embedding == total - 100 * 32 - cfg.n_positions * 32  # wte once, and wpe


# Per architecture, the embedding tables of a built model by name (a tied lm_head is
# not listed apart: named_parameters() yields it once, as the input embedding).
EMBEDDINGS = {
    "gpt2": ("transformer.wte.weight", "transformer.wpe.weight"),
    "opt": ("model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"),
    "gpt_neo": ("transformer.wte.weight", "transformer.wpe.weight"),
    "gptj": ("transformer.wte.weight", "lm_head.weight"),  # rotary: no position table
}
SMALL = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "opt": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64,
            "word_embed_proj_dim": 32, "max_position_embeddings": 64},
    "gpt_neo": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "attention_types": [[["global"], 2]],
                "max_position_embeddings": 64},
    "gptj": {"n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "n_positions": 64},
}


@pytest.mark.parametrize("arch", sorted(EMBEDDINGS))
def test_learned_position_embeddings_are_not_counted_as_non_embedding(arch):
    """Kaplan et al. (and Pythia's table) exclude position embeddings as well as token ones."""
    cfg = AutoConfig.for_model(arch, vocab_size=100, **SMALL[arch])
    model = AutoModelForCausalLM.from_config(cfg)
    weights = dict(model.named_parameters())
    total, non_embedding = count_parameters(cfg)
    assert total == sum(p.numel() for p in weights.values())
    assert non_embedding == total - sum(weights[name].numel() for name in EMBEDDINGS[arch])


def test_gpt2_small_and_opt_125m_match_pythia_160m():
    """Same blocks (12 x 768, biases, final norm): the same 85,056,000 non-embedding
    parameters once GPT-2's wpe and OPT's embed_positions are left out with the vocabulary."""
    assert count_parameters(GPT2Config()) == (124_439_808, 85_056_000)  # GPT-2 small
    assert count_parameters(OPTConfig()) == (125_239_296, 85_056_000)  # OPT-125m
    assert count_parameters(pythia_config("160m"))[1] == 85_056_000


def test_untied_counts_equal_a_real_model():
    cfg = tiny_config("llama", vocab_size=100)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    total, non_embedding = count_parameters(cfg)
    assert total == sum(p.numel() for p in model.parameters())
    assert non_embedding == total - 2 * 100 * 32
