"""The families beyond tiny_models.ARCHS: captures equal the model's own outputs, or are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from tiny_models import VOCAB, prompts, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks import arch
from scalelens.measure.run import measure
from scalelens.models.load import load_model
from scalelens.probes.spec import ProbeSpec, preset

_L = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
      "vocab_size": VOCAB, "max_position_embeddings": 128}
_GQA = {**_L, "num_key_value_heads": 2}
_H = {**_GQA, "head_dim": 8, "pad_token_id": 0}
_MLA_MOE = {**_L, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1,
            "topk_group": 1, "moe_intermediate_size": 16, "first_k_dense_replace": 1}
CONFIGS = {  # each with the feature that could break the recomputed attention
    "qwen2": lambda: T.Qwen2Config(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                   **_GQA),  # q/k/v biases, a sliding window on the layers past the first
    "qwen3": lambda: T.Qwen3Config(head_dim=8, **_GQA),  # qk-norm
    "olmo2": lambda: T.Olmo2Config(**_GQA),  # qk-norm, post-norms
    "phi3": lambda: T.Phi3Config(pad_token_id=0, **_GQA),  # fused qkv
    "phi": lambda: T.PhiConfig(partial_rotary_factor=0.5, qk_layernorm=True, **_L),  # parallel
    "stablelm": lambda: T.StableLmConfig(partial_rotary_factor=0.25, qk_layernorm=True, **_GQA),
    "granite": lambda: T.GraniteConfig(logits_scaling=4.0, attention_multiplier=0.2, **_GQA),
    "starcoder2": lambda: T.Starcoder2Config(sliding_window=4, **_GQA),
    "gptj": lambda: T.GPTJConfig(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                 rotary_dim=4),
    "opt": lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                               num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32),
    "gpt_bigcode": lambda: T.GPTBigCodeConfig(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2,
                                              n_head=4, multi_query=True),
    "olmo3": lambda: T.Olmo3Config(sliding_window=4, **_GQA),  # qk-norm, sliding layers
    "cohere": lambda: T.CohereConfig(logit_scale=0.5, **_GQA),  # parallel, scaled logits
    "smollm3": lambda: T.SmolLM3Config(pad_token_id=0, **_GQA),  # layers without rotary
    "helium": lambda: T.HeliumConfig(head_dim=8, **_GQA),
    "glm": lambda: T.GlmConfig(head_dim=8, pad_token_id=0, **_GQA),  # partial interleaved rotary
    "persimmon": lambda: T.PersimmonConfig(partial_rotary_factor=0.5, qk_layernorm=True, **_L),
    "codegen": lambda: T.CodeGenConfig(vocab_size=VOCAB, n_positions=128, n_ctx=128, n_embd=32, n_layer=2,
                                       n_head=4, rotary_dim=4),
    "granitemoe": lambda: T.GraniteMoeConfig(num_local_experts=4, num_experts_per_tok=2, logits_scaling=4.0,
                                             **_GQA),
    "mixtral": lambda: T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=4, **_GQA),
    "olmoe": lambda: T.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **_GQA),  # qk-norm, experts
    "qwen3_moe": lambda: T.Qwen3MoeConfig(head_dim=8, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=16, **_GQA),
    "glm4": lambda: T.Glm4Config(head_dim=8, pad_token_id=0, **_GQA),  # post-norms, partial rotary
    "nemotron": lambda: T.NemotronConfig(head_dim=8, pad_token_id=0, partial_rotary_factor=0.5, **_GQA),
    "exaone4": lambda: T.Exaone4Config(head_dim=8, sliding_window=4, **_GQA),  # post-norms, sliding layers
    "ernie4_5": lambda: T.Ernie4_5Config(head_dim=8, pad_token_id=0, **_GQA),
    "seed_oss": lambda: T.SeedOssConfig(head_dim=8, pad_token_id=0, attention_bias=True, **_GQA),
    "apertus": lambda: T.ApertusConfig(head_dim=8, pad_token_id=0, **_GQA),  # qk-norm, xIELU
    "arcee": lambda: T.ArceeConfig(head_dim=8, pad_token_id=0, **_GQA),
    "ministral": lambda: T.MinistralConfig(sliding_window=4, **_H),  # sliding layers
    "cohere2": lambda: T.Cohere2Config(sliding_window=4, logit_scale=0.5, **_H),  # no-rope layers
    "internlm3": lambda: T.InternLM3Config(**_H),
    "exaone": lambda: T.ExaoneConfig(**_H),
    "hunyuan_v1_dense": lambda: T.HunYuanDenseV1Config(**_H),  # qk-norm
    "vaultgemma": lambda: T.VaultGemmaConfig(sliding_window=4, attn_logit_softcapping=2.0, **_H),
    "nanochat": lambda: T.NanoChatConfig(**_H),  # capped logits, weightless norms
    "jais2": lambda: T.Jais2Config(**_H),
    "cwm": lambda: T.CwmConfig(sliding_window=4, **_H),
    "glm4_moe": lambda: T.Glm4MoeConfig(n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                        moe_intermediate_size=16, first_k_dense_replace=1, **_H),
    "ernie4_5_moe": lambda: T.Ernie4_5_MoeConfig(moe_num_experts=4, moe_k=2, moe_intermediate_size=16, **_H),
    "hunyuan_v1_moe": lambda: T.HunYuanMoEV1Config(num_experts=4, moe_topk=2, **_H),
    "phimoe": lambda: T.PhimoeConfig(num_local_experts=4, num_experts_per_tok=2, sliding_window=4, **_GQA),
    "minimax_m2": lambda: T.MiniMaxM2Config(num_local_experts=4, num_experts_per_tok=2, **_H),
    "flex_olmo": lambda: T.FlexOlmoConfig(pad_token_id=0, num_experts=4, num_experts_per_tok=2, **_GQA),
    "solar_open": lambda: T.SolarOpenConfig(n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                                            topk_group=1, moe_intermediate_size=16, **_H),
    "gpt_oss": lambda: T.GptOssConfig(head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=4, **_GQA),  # attention sinks, sliding layers
    "deepseek_v3": lambda: T.DeepseekV3Config(  # latent attention: q/k heads 8 + 4 wide, v heads 8
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
        first_k_dense_replace=1,
        **{**_L, "num_key_value_heads": 4}),  # keys are expanded to every query head
    "deepseek_v2": lambda: T.DeepseekV2Config(  # V2-Lite's latent attention: no query compression
        kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, **_MLA_MOE),
    "glm4_moe_lite": lambda: T.Glm4MoeLiteConfig(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8,
                                                 qk_rope_head_dim=4, v_head_dim=8, **_MLA_MOE),
    "minicpm3": lambda: T.MiniCPM3Config(  # latent attention, branches scaled into the residual
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        **{**_L, "num_key_value_heads": 4}),
    "llama4_text": lambda: T.Llama4TextConfig(  # chunked attention, no-rope layers, qk L2 norm, experts
        num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=4,
        intermediate_size_mlp=64, **_H),
    "granitemoeshared": lambda: T.GraniteMoeSharedConfig(num_local_experts=4, num_experts_per_tok=2,
                                                         shared_intermediate_size=16, logits_scaling=4.0,
                                                         **_GQA),
    "bitnet": lambda: T.BitNetConfig(pad_token_id=0, **_GQA),  # sub-norms inside attention and MLP
    "sarvam_mla": lambda: T.SarvamMLAConfig(  # DeepSeek V3's code
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, **_MLA_MOE),
    "sarvam_moe": lambda: T.SarvamMoEConfig(  # GLM-4 MoE's code, qk-norm
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
        first_k_dense_replace=1, **_H),
    "dots1": lambda: T.Dots1Config(  # shared expert, a sliding layer
        n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16,
        first_k_dense_replace=1, sliding_window=4, max_window_layers=1, **_H),
    "dbrx": lambda: T.DbrxConfig(  # attention inside a norm-attention-norm block, clipped qkv, experts
        vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
        attn_config={"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
        ffn_config={"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}),
    "cohere_compass_text": lambda: T.CohereCompassTextConfig(  # parallel, scaled logits, a no-rope full layer
        sliding_window=4, logit_scale=0.5, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": None}, **_H),
    "apertus1p5_text": lambda: T.Apertus1p5TextConfig(pad_token_id=0, **_GQA),  # xIELU
    "hyperclovax": lambda: T.HyperCLOVAXConfig(**_H),  # post-norms
    "aria_text": lambda: T.AriaTextConfig(moe_num_experts=4, moe_topk=2, **_H),
    "exaone_moe": lambda: T.ExaoneMoeConfig(  # sliding layers
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=16,
        first_k_dense_replace=1, sliding_window=4, pad_token_id=0, **_GQA),
    "hy_v3": lambda: T.HYV3Config(num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                                  moe_intermediate_size=16, **_H),
    "mellum": lambda: T.MellumConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, **_H),
    "cohere2_moe": lambda: T.Cohere2MoeConfig(  # parallel, sliding layers, logits scaled by 1/16
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1, sliding_window=4, **_H),
    "flint": lambda: T.FlintConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                   shared_expert_intermediate_size=16, mlp_only_layers=[0], **_H),
    "mimo_v2_flash": lambda: T.MiMoV2FlashConfig(  # a sliding layer, v heads of their own width
        n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
        sliding_window=4, v_head_dim=8, **_H),
    "afmoe": lambda: T.AfmoeConfig(  # post-norms, muP-scaled embeddings, a sliding layer
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=16,
        sliding_window=4, mup_enabled=True, layer_types=["sliding_attention", "full_attention"], **_H),
    "beam": lambda: T.BeamConfig(  # post-norms, gated attention output, a sliding layer, experts on layer 1
        num_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=16,
        sliding_window=4, mlp_layer_types=["dense", "sparse"], **_H),
    "kolibri1": lambda: T.Kolibri1Config(  # post-norms, sliding layers
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        sliding_window=4, **{k: v for k, v in _H.items() if k != "intermediate_size"}),
    "axk1": lambda: T.AXK1Config(  # latent attention as deepseek_v3's
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        **{k: v for k, v in _MLA_MOE.items() if k != "first_k_dense_replace"}),
    "youtu": lambda: T.YoutuConfig(  # dense latent attention
        kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
        **{**_L, "num_key_value_heads": 4}),
    "modernbert-decoder": lambda: T.ModernBertDecoderConfig(  # a sliding layer, a head before the unembedding
        local_attention=8, pad_token_id=0, **_L),
    "jetmoe": lambda: T.JetMoeConfig(  # query heads picked per token from 4 expert projections
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8,
        intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128),
    "iquestcoder": lambda: T.IQuestCoderConfig(**_H),
    "ministral3": lambda: T.Ministral3Config(**_H),
    "biogpt": lambda: T.BioGptConfig(pad_token_id=0, **_L),  # scaled embeddings, fc2 as the MLP
    "ctrl": lambda: T.CTRLConfig(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, dff=64),
    "xglm": lambda: T.XGLMConfig(vocab_size=VOCAB, max_position_embeddings=128, d_model=32, num_layers=2,
                                 attention_heads=4, ffn_dim=64, pad_token_id=0),  # own attention (tapped)
    "mpt": lambda: T.MptConfig(  # own attention with ALiBi (tapped), MLP adds the residual (and is 4 d wide,
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, pad_token_id=0),  # not 2 d
    "gpt_neox_japanese": lambda: T.GPTNeoXJapaneseConfig(  # own _attn (tapped), last layer's bias outside it
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_multiple_size=2, max_position_embeddings=128, pad_token_id=0),
    "gpt_neo": lambda: T.GPTNeoConfig(  # attention in its own code, unscaled; a local layer
        vocab_size=VOCAB, max_position_embeddings=128, hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=4),
    "falcon": lambda: T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2),
    "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
}
OWN_ATTENTION = ("jetmoe",)  # refuses per-head probes: its heads are chosen per token
# bloom: tests/test_projection_taps.py; falcon here and in tests/test_falcon_tap.py (every layout);
# mpt here and in tests/test_mpt_tap.py (clip_qkv, softmax_scale, bias edits, cached decoding)
TAPPED = [k for k in CONFIGS if k not in (*OWN_ATTENTION, "bloom")]
POST_SCALED = ("olmo2", "olmo3", "granite", "glm4", "exaone4", "flex_olmo", "granitemoeshared",
               "minicpm3", "hyperclovax", "afmoe", "beam", "kolibri1")  # post-norms, residual multiplier
MOE = ["mixtral", "granitemoe", "olmoe", "qwen3_moe", "gpt_oss", "deepseek_v3", "glm4_moe", "ernie4_5_moe",
       "hunyuan_v1_moe", "phimoe", "minimax_m2", "flex_olmo", "solar_open", "deepseek_v2", "glm4_moe_lite",
       "llama4_text", "granitemoeshared", "sarvam_mla", "sarvam_moe", "dots1", "dbrx", "aria_text",
       "exaone_moe", "hy_v3", "mellum", "cohere2_moe", "flint", "mimo_v2_flash", "afmoe", "beam", "kolibri1",
       "axk1", "jetmoe"]
# experts; latent attention's low-rank projections; ModernBERT's prediction head (no term for it)
NO_FLOPS = [*MOE, "minicpm3", "youtu", "modernbert-decoder"]
# q/k heads 8 no-rope + 4 rotary dims
MLA = ("deepseek_v3", "deepseek_v2", "glm4_moe_lite", "minicpm3", "sarvam_mla", "axk1", "youtu")
EAGER_ONLY = ("gpt_oss", "gpt_neo", "vaultgemma", "xglm", "mpt", "gpt_neox_japanese", "flint",
              "mimo_v2_flash")


def build(name: str, attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)
    attn = "eager" if name in EAGER_ONLY else attn
    return T.AutoModelForCausalLM.from_config(CONFIGS[name](), attn_implementation=attn).eval()


def read(out, names):
    with CaptureFile(out) as f:
        return {n: f.read("values", n).data for n in names}, f.read("tokens").data, f.read("lengths").data, \
            f.probe("top1") if "attn" in names else None


@pytest.mark.parametrize("name", TAPPED)
def test_captures_equal_the_models_own_outputs(name, tmp_path):
    """resid (hidden states), attention and top-1 rows (eager weights), logits (as returned),
    and resid_post - resid_pre = attn_out + mlp_out where the branches add straight in (a family
    that refuses the branches, GPT-NeoX Japanese, without them)."""
    model = build(name, "sdpa")
    branches = [] if arch.arch_for(model).no_branches else ["attn_out", "mlp_out"]
    probes = [preset("resid", dtype="float32"), preset("resid_pre", dtype="float32"), preset("attn"),
              preset("top1"), *(preset(b, dtype="float32") for b in branches),
              ProbeSpec("lg", "logits", dtype="float32")]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(4), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    v, ids, lengths, top1 = read(out, ["resid", "resid_pre", "attn", *branches, "lg"])
    ref = build(name)
    for i, n in enumerate(lengths):
        with torch.no_grad():
            o = ref(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_hidden_states=True,
                    output_attentions=True)
        np.testing.assert_allclose(v["resid"][i, 0, :n], o.hidden_states[1][0], atol=1e-5)
        np.testing.assert_allclose(v["lg"][i, 0, :n], o.logits[0], atol=1e-5)
        for layer in range(2):
            probs = o.attentions[layer][0]
            np.testing.assert_allclose(v["attn"][i, layer, :, :n, :n], probs, atol=1e-5)
            q = top1["query_pos"].data[i, 0]
            np.testing.assert_array_equal(top1["top1_key"].data[i, layer, :, 0], probs[:, q, :n].argmax(-1))
        if name not in POST_SCALED and branches:
            step = v["resid"][i, 0, :n] - v["resid_pre"][i, 0, :n]
            np.testing.assert_allclose(step, v["attn_out"][i, 0, :n] + v["mlp_out"][i, 0, :n], atol=1e-5)


def test_attention_sinks_take_their_share_of_every_row_for_any_head_subset(tmp_path):
    """GPT-OSS's learned sink logit per head joins each row's softmax and is dropped, so rows sum to
    less than 1; a probe of some heads only gets those heads' sinks (eager output_attentions)."""
    import dataclasses

    model = build("gpt_oss")
    with torch.no_grad():
        for layer in arch.decoder_layers(model):
            layer.self_attn.sinks.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    probes = [dataclasses.replace(preset("attn"), name="ah", heads=(3, 1))]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(3), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    with CaptureFile(out) as f:
        got, ids, lengths = f.read("values", "ah").data, f.read("tokens").data, f.read("lengths").data
    for i, n in enumerate(lengths):
        with torch.no_grad():
            o = model(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_attentions=True)
        for layer in range(2):
            want = o.attentions[layer][0, [3, 1]]
            np.testing.assert_allclose(got[i, layer, :, :n, :n], want, atol=1e-6)
    assert got[0, 0, 0, : lengths[0], : lengths[0]].sum(-1).max() < 0.5  # head 3's sink takes most


@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v2", "minicpm3"])
def test_latent_attention_q_and_k_are_what_its_softmax_reads(name, tmp_path):
    """DeepSeek V3's q/k heads are 8 no-rope + 4 rotary dims (its config's head_dim names the 4),
    its v heads 8: the q and k probes store all 12, and softmax(q k^T * scaling) under the
    causal mask gives its eager attention back (V2-Lite's uncompressed queries and MiniCPM3 too)."""
    model = build(name)
    probes = [ProbeSpec(p, p, dtype="float32") for p in ("q", "k")]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(3), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    with CaptureFile(out) as f:
        q, k, ids, lengths = (f.read("values", "q").data, f.read("values", "k").data, f.read("tokens").data,
                              f.read("lengths").data)
    assert q.shape[-1] == k.shape[-1] == 12
    for i, n in enumerate(lengths):
        with torch.no_grad():
            o = model(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_attentions=True)
        for layer in range(2):
            scaling = arch.layer_part(model, layer, "attn").scaling
            scores = torch.tensor(q[i, layer, :, :n]) @ torch.tensor(k[i, layer, :, :n]).transpose(-1, -2)
            scores = scores * scaling + torch.full((n, n), float("-inf")).triu(1)
            np.testing.assert_allclose(scores.softmax(-1), o.attentions[layer][0], atol=1e-6)


@pytest.mark.parametrize("name", ["gpt_neo", "gpt_neox_japanese", "gpt_oss", "deepseek_v3", "xglm", "bloom",
                                  "mpt"])
def test_cached_retrieval_decoding_top1_equals_recomputed_eager(name):
    """Retrieval's KV-cached greedy decoding taps GPT-Neo's own attention (its 4-token local
    window) and GPT-NeoX Japanese's, GPT-OSS's sinks, DeepSeek V3's cached latents, and XGLM's,
    BLOOM's and MPT's projections (the cached keys, BLOOM's and MPT's bias over the whole prefix)
    as the eager weights of the whole prefix recomputed at every step say."""
    from scalelens.measure import retrieval

    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    top1, produced = retrieval._greedy_top1(load_model(build(name), tokenizer=word_tokenizer()), ids, 6)
    model, tops, want = build(name), [], []
    with torch.inference_mode():
        for _ in range(6):
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
            tops.append(np.stack([a[0, :, -1].argmax(-1).numpy() for a in out.attentions]))
            want.append(int(out.logits[0, -1].argmax()))
            ids = torch.cat([ids, ids.new_tensor([[want[-1]]])], dim=1)
    assert produced == want
    np.testing.assert_array_equal(top1, np.stack(tops, axis=-1))


@pytest.mark.parametrize("name", OWN_ATTENTION)
def test_own_attention_families_keep_resid_and_refuse_per_head_probes(name, tmp_path):
    lm = load_model(build(name), tokenizer=word_tokenizer())
    out = capture(lm, [preset("resid", dtype="float32"), preset("predictions")], prompts(3),
                  tmp_path / "r.h5", progress=False)
    v, ids, lengths, _ = read(out, ["resid"])
    with torch.no_grad():
        o = build(name)(torch.tensor(ids[0, :lengths[0]], dtype=torch.long)[None], output_hidden_states=True)
    np.testing.assert_allclose(v["resid"][0, 0, :lengths[0]], o.hidden_states[1][0], atol=1e-5)
    with pytest.raises(ScalelensError, match=f"{name} cannot give per-head probes"):
        capture(lm, [preset("top1")], prompts(3), tmp_path / "a.h5", progress=False)
    with pytest.raises(ScalelensError, match=f"{name} cannot give per-head probes"):
        measure(lm, "retrieval_heads", tmp_path / "m", progress=False)
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["mpt", "gpt_neox_japanese", "jetmoe"])
def test_own_attention_families_give_the_models_resid_logits_and_branches(name, tmp_path):
    """resid and the logits equal the model's own outputs, and the branches sum to the
    residual step: MPT's down projection (its MLP module returns the residual added),
    JetMoE's mixture-of-attention block.
    GPT-NeoX Japanese adds its last layer's attention bias outside the attention module: refused."""
    lm = load_model(build(name), tokenizer=word_tokenizer())
    branches = [] if arch.arch_for(lm.model).no_branches else ["attn_out", "mlp_out"]
    names = ["resid", "resid_pre", *branches]
    probes = [*(preset(n, dtype="float32") for n in names), ProbeSpec("lg", "logits", dtype="float32")]
    out = capture(lm, probes, prompts(4), tmp_path / "r.h5", batch_size=2, progress=False)
    v, ids, lengths, _ = read(out, [*names, "lg"])
    for i, n in enumerate(lengths):
        with torch.no_grad():
            o = lm.model(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_hidden_states=True)
        np.testing.assert_allclose(v["lg"][i, 0, :n], o.logits[0], atol=1e-5)
        np.testing.assert_allclose(v["resid"][i, 0, :n], o.hidden_states[1][0], atol=1e-5)  # the last: normed
        for layer in range(2):
            if branches:
                step = v["resid"][i, layer, :n] - v["resid_pre"][i, layer, :n]
                both = v["attn_out"][i, layer, :n] + v["mlp_out"][i, layer, :n]
                np.testing.assert_allclose(step, both, atol=1e-5)
    if not branches:
        with pytest.raises(ScalelensError, match=f"{name} cannot give attn_out, mlp_out: .*attention bias"):
            capture(lm, [preset("attn_out"), preset("mlp_out")], prompts(3), tmp_path / "a.h5",
                    progress=False)
        assert not (tmp_path / "a.h5").exists()


def test_a_config_with_per_layer_head_widths_is_refused_in_one_line():
    """Gemma 4 sets head_dim per layer (its full-attention layers' own width): reading config.head_dim
    raised transformers' AmbiguousGlobalPerLayerAttributeError out of load_model, a traceback."""
    torch.manual_seed(0)
    config = T.Gemma4TextConfig(hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB,
                                sliding_window=4, **_H)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ScalelensError, match="^unsupported architecture 'gemma4_text': its config sets "
                                             "head_dim per layer") as exc:
        load_model(model, tokenizer=word_tokenizer())
    assert "\n" not in str(exc.value)


def test_bloom_refuses_branches_that_carry_the_residual(tmp_path):
    lm = load_model(build("bloom"), tokenizer=word_tokenizer())
    with pytest.raises(ScalelensError, match="bloom cannot give attn_out: .*residual already added"):
        capture(lm, [preset("attn_out")], prompts(3), tmp_path / "a.h5", progress=False)


def test_a_tap_that_never_fires_is_an_error_not_zeros(tmp_path, monkeypatch):
    """A family listed as tappable whose attention bypasses the registry: refused at the first batch."""
    monkeypatch.setitem(arch.ARCHITECTURES, "falcon", arch.ArchSpec(
        "falcon", "transformer.h", "self_attention", "mlp", "lm_head"))
    lm = load_model(build("falcon"), tokenizer=word_tokenizer())
    with pytest.raises(ScalelensError, match="never reached the attention tap"):
        capture(lm, [preset("attn")], prompts(3), tmp_path / "a.h5", progress=False)


@pytest.mark.parametrize("name", ["opt", "granite", "gpt_neo", "xglm"])
def test_measure_runs_every_analysis(name, tmp_path):
    from scalelens.measure.dominance import DominanceSettings
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import ANALYSES, MeasureSettings

    s = MeasureSettings(RetrievalSettings(context_lengths=(48,), depths=(0.5,), n_needles=1, ablation_k=1),
                        MassiveSettings(n_sequences=2, length=12),
                        DominanceSettings(dilutions=(1, 2), n_prompts=2))
    data = measure(load_model(build(name, "sdpa"), tokenizer=word_tokenizer()), ANALYSES, tmp_path, s,
                   progress=False)
    assert set(data["analyses"]) == set(ANALYSES)
    mlp = data["analyses"]["activation_sparsity"]["points"]["mlp_out"]
    assert len(mlp["per_layer"]) == 2 and 0 < mlp["mean_hoyer"] < 1  # OPT: fc2 rows reshaped per token


def test_nnsight_reads_opts_flattened_mlp_rows_like_native(tmp_path):
    """OPT's fc2 returns (batch * seq, d) rows; both backends store them per token, bitwise equal."""
    lm = load_model(build("opt", "sdpa"), tokenizer=word_tokenizer())
    probes = [preset("mlp_out", dtype="float32"), preset("resid", dtype="float32")]
    a = capture(lm, probes, prompts(4), tmp_path / "n.h5", batch_size=2, progress=False)
    b = capture(lm, probes, prompts(4), tmp_path / "s.h5", batch_size=2, progress=False, backend="nnsight")
    (va, *_), (vb, *_) = read(a, ["mlp_out"]), read(b, ["mlp_out"])
    np.testing.assert_array_equal(va["mlp_out"], vb["mlp_out"])
    assert np.abs(va["mlp_out"]).max() > 1e-3


def test_nnsight_refuses_falcons_mlp_out_that_the_model_changes_in_place(tmp_path):
    """Read after the pass, Falcon's mlp_out would hold mlp + attention (measured: 73% of entries off)."""
    lm = load_model(build("falcon"), tokenizer=word_tokenizer())
    with pytest.raises(ScalelensError, match="nnsight backend cannot read mlp_out of falcon"):
        capture(lm, [preset("mlp_out")], prompts(3), tmp_path / "a.h5", progress=False, backend="nnsight")
    out = capture(lm, [preset("mlp_out", dtype="float32"), preset("attn_out", dtype="float32"),
                       preset("resid", dtype="float32"), preset("resid_pre", dtype="float32")],
                  prompts(3), tmp_path / "n.h5", progress=False)
    v, _, lengths, _ = read(out, ["mlp_out", "attn_out", "resid", "resid_pre"])
    n = lengths[0]  # native hooks read it before the in-place add: the branches sum to the step
    np.testing.assert_allclose(v["resid"][0, 0, :n] - v["resid_pre"][0, 0, :n],
                               v["attn_out"][0, 0, :n] + v["mlp_out"][0, 0, :n], atol=1e-6)


def test_nnsight_reads_mlp_out_of_a_falcon_without_parallel_attention(tmp_path):
    """Only parallel attention adds into the MLP's output in place; a sequential Falcon (Falcon-RW's
    layout) was refused all the same. Its mlp_out under nnsight is native's, bitwise."""
    torch.manual_seed(0)
    config = T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            parallel_attn=False)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    lm = load_model(model, tokenizer=word_tokenizer())
    probes = [preset("mlp_out", dtype="float32"), preset("attn_out", dtype="float32")]
    a = capture(lm, probes, prompts(4), tmp_path / "n.h5", batch_size=2, progress=False)
    b = capture(lm, probes, prompts(4), tmp_path / "s.h5", batch_size=2, progress=False, backend="nnsight")
    (va, *_), (vb, *_) = read(a, ["mlp_out", "attn_out"]), read(b, ["mlp_out", "attn_out"])
    for name in va:
        np.testing.assert_array_equal(vb[name], va[name])
    assert np.abs(va["mlp_out"]).max() > 1e-3


@pytest.mark.parametrize("name", ["olmoe", "gpt_oss", "gpt_neo", "dbrx"])
def test_nnsight_equals_native_bitwise(name, tmp_path):
    """The nnsight backend reads the same modules (and the same attention tap) as native hooks: an
    expert block's output, attention sinks, GPT-Neo's own attention, DBRX's attention nested in its
    norm block (the llama-like families share OLMoE's module paths; the ARCHS tests cover Llama
    itself)."""
    lm = load_model(build(name, "sdpa"), tokenizer=word_tokenizer())
    names = ["resid", "resid_pre", "attn_out", "mlp_out"]
    probes = [*(preset(n, dtype="float32") for n in names), preset("attn"), preset("top1"),
              ProbeSpec("lg", "logits", dtype="float32")]
    a = capture(lm, probes, prompts(4), tmp_path / "n.h5", batch_size=2, progress=False)
    b = capture(lm, probes, prompts(4), tmp_path / "s.h5", batch_size=2, progress=False, backend="nnsight")
    va, vb = read(a, [*names, "attn", "lg"])[0], read(b, [*names, "attn", "lg"])[0]
    for n in va:
        np.testing.assert_array_equal(vb[n], va[n], err_msg=n)
    assert np.abs(va["mlp_out"]).max() > 1e-4  # not all zeros


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# Structurally distinct representatives (every family was run once, README lists the outcomes):
# fc2 as MLP, parallel GPT-J, own attention (GPT-Neo, XGLM, MPT's refused mlp_out), bridges that fail
# (CodeGen, Phi with qk-layernorm, Falcon's new decoder) or are missing (Helium), BLOOM without branches,
# scaled or capped logits, post-norms, weightless norms, experts, latent attention, sinks, ModernBERT's
# prediction head before its unembedding (DBRX: no bridge, refused).
TLENS = ["opt", "gptj", "gpt_neo", "xglm", "mpt", "codegen", "phi", "falcon", "helium", "bloom", "granite",
         "cohere2", "olmo2", "nanochat", "mixtral", "deepseek_v3", "gpt_oss", "modernbert-decoder"]


@pytest.mark.parametrize("name", TLENS)
def test_transformer_lens_equals_native_or_refuses_in_one_line(name, tmp_path):
    """Under --backend transformer-lens each family gives native's residual-like values and logits
    (within the bridge's own attention arithmetic), or is refused with one ScalelensError line before
    anything is written, the model left as it was. CodeGen's bridge builds, then failed inside its
    own forward with an AttributeError (the CLI's 'internal error ... report it')."""
    model = build(name)
    lm = load_model(model, tokenizer=word_tokenizer())
    names = ["resid", "resid_pre"] + ([] if arch.arch_for(model).no_branches else ["attn_out", "mlp_out"])
    probes = [*(preset(n, dtype="float32") for n in names), ProbeSpec("lg", "logits", dtype="float32")]
    ref = capture(lm, probes, prompts(4), tmp_path / "n.h5", batch_size=2, progress=False)
    modules, hooks = [(n, type(m)) for n, m in model.named_modules()], _hooks(model)
    try:
        out = capture(lm, probes, prompts(4), tmp_path / "t.h5", batch_size=2, progress=False,
                      backend="transformer-lens")
    except ScalelensError as exc:
        assert "transformer-lens" in str(exc) and "\n" not in str(exc)
        assert not (tmp_path / "t.h5").exists()
    else:
        want, got = read(ref, [*names, "lg"])[0], read(out, [*names, "lg"])[0]
        for n in want:
            np.testing.assert_allclose(got[n], want[n], atol=1e-6, rtol=1e-5, err_msg=n)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules and _hooks(model) == hooks


def test_transformer_lens_stops_after_the_last_wanted_layer_not_at_a_norm_run_earlier(tmp_path):
    """NanoChat's final norm also normalises the embeddings: stopping the bridge at its first call
    (no logits wanted) ended the pass before any block, an internal 'hooks did not fire' error."""
    lm = load_model(build("nanochat"), tokenizer=word_tokenizer())
    probes = [preset("resid", dtype="float32")]
    ref = capture(lm, probes, prompts(3), tmp_path / "n.h5", progress=False)
    out = capture(lm, probes, prompts(3), tmp_path / "t.h5", progress=False, backend="transformer-lens")
    np.testing.assert_allclose(read(out, ["resid"])[0]["resid"], read(ref, ["resid"])[0]["resid"], atol=1e-6)


@pytest.mark.parametrize("name", NO_FLOPS)
def test_moe_capacity_is_refused_before_anything_runs(name, tmp_path):
    lm = load_model(build(name), tokenizer=word_tokenizer())
    with pytest.raises(ScalelensError, match=f"no FLOP count for architecture '{name}'"):
        measure(lm, "massive_activations,information_capacity", tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", [k for k in sorted(CONFIGS) if k not in NO_FLOPS])
def test_flops_count_every_weight_matrix_of_the_model_once(name):
    """Context-free FLOPs per token are 2 x the entries of the model's matrices (attention
    projections, MLP, LM head, OPT's embedding projections): a gated MLP counted as plain, or
    grouped key/value heads counted as full, would be off by a whole matrix."""
    from transformers.pytorch_utils import Conv1D

    from scalelens.analyses.capacity import flops_per_token
    from scalelens.measure.capacity import model_shape

    mats = sum(m.weight.numel() for m in build(name).modules() if isinstance(m, torch.nn.Linear | Conv1D))
    assert flops_per_token(model_shape(CONFIGS[name]()), 0.0).total == 2 * mats


def test_flop_shapes_read_each_familys_own_config_fields():
    """Falcon's key/value heads and OPT's/Falcon's MLP widths live in fields of their own."""
    from scalelens.measure.capacity import model_shape

    new = model_shape(CONFIGS["falcon"]())
    assert (new.n_kv_heads, new.d_ff, new.gated_mlp) == (2, 128, False)
    assert model_shape(T.FalconConfig(hidden_size=32, num_attention_heads=4)).n_kv_heads == 1  # multi-query
    plain = T.FalconConfig(hidden_size=32, num_attention_heads=4, multi_query=False)
    assert model_shape(plain).n_kv_heads == 4
    opt = model_shape(CONFIGS["opt"]())
    assert (opt.d_ff, opt.n_kv_heads) == (64, 4)
    assert model_shape(CONFIGS["gpt_bigcode"]()).n_kv_heads == 1
    assert model_shape(CONFIGS["phi3"]()).gated_mlp and not model_shape(CONFIGS["starcoder2"]()).gated_mlp


def test_text_dominance_with_no_attention_on_the_other_text_writes_results(tmp_path):
    """A sliding window shorter than the gap between question and document leaves A_O = 0, so the
    middle-layer MDI is infinite: stored as null (as the per-layer MDIs are), not a JSON crash."""
    from scalelens.measure.dominance import DominanceSettings
    from scalelens.measure.run import MeasureSettings

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.MistralConfig(sliding_window=2, **_GQA)).eval()
    s = MeasureSettings(dominance=DominanceSettings(dilutions=(1, 2), n_prompts=2))
    lm = load_model(model, tokenizer=word_tokenizer())
    data = measure(lm, "text_dominance", tmp_path, s, progress=False)
    rows = data["analyses"]["text_dominance"]["dilution"]
    assert [r["mdi_middle"] for r in rows] == [None, None]
    assert (tmp_path / "results.json").exists()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_model_info_counts_query_heads_and_their_width(name):
    """Every family here has 4 query heads of width 32 / 4 = 8 (DeepSeek V3's q/k: 12), whatever its
    key/value heads (2 with GQA, 1 multi-query) and whether its config names a head_dim; n_params is
    the built model's."""
    from scalelens.models.describe import describe

    info = describe(CONFIGS[name](), name=name, source="-", source_kind="memory", revision=None, step=None,
                    dtype="float32", attn_implementation="eager")
    d_head = 12 if name in MLA else 8  # its q/k heads: 8 wide without rotary, 4 with
    assert (info.d_model, info.n_layers, info.n_heads, info.vocab_size) == (32, 2, 4, VOCAB)
    assert info.d_head == d_head
    assert info.n_params == sum(p.numel() for p in build(name).parameters())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_table_path_names_the_module_it_claims(name):
    """layers, attn, mlp and unembed of each family's ArchSpec resolve in a real model, to the
    decoder layers, their sub-modules and the output embedding HF reports."""
    model = build(name)
    spec = arch.arch_for(model)
    layers = arch.decoder_layers(model)
    assert len(layers) == 2 and spec.attn and spec.mlp
    for which in ("attn", "mlp"):
        part = arch.layer_part(model, 1, which)
        assert part is not layers[1] and any(part is m for m in layers[1].modules())
    assert model.get_submodule(spec.unembed) is model.get_output_embeddings()


_DOMINANCE_MODELS = {  # sliding windows that cut off part of the document, q/k/v biases, softcapping
    "qwen2": ("sdpa", lambda: T.Qwen2Config(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                            initializer_range=0.3, **_GQA)),
    "gemma2": ("eager", lambda: T.Gemma2Config(head_dim=8, sliding_window=16, attn_logit_softcapping=2.0,
                                                initializer_range=0.3, **_GQA)),  # no SDPA softcap
}


def _eager_dominance(model: torch.nn.Module, ids: np.ndarray, seg: np.ndarray, lengths: np.ndarray,
                     labels: list[str]) -> tuple[np.ndarray, float, float]:
    """(layer, [T, O, sink]) attention mass, |T|, |O| from the eager attentions, straight from the
    definition: rows of the queries that produce answer tokens, head-averaged, key 0 the sink."""
    kinds = {labels.index(x): k for k, xs in ((0, ["question"]), (1, ["haystack", "needle", "needle_answer"]))
             for x in xs if x in labels}
    mass, n_rows, n_t, n_o = 0.0, 0, 0.0, 0.0
    for p, n in enumerate(lengths):
        codes = np.array([kinds.get(int(s), 3) for s in seg[p, :n]])
        codes[0] = 2
        start = int(np.flatnonzero(seg[p, :n] == labels.index("answer"))[0])
        queries = np.arange(start - 1, n - 1)
        with torch.no_grad():
            att = model(torch.tensor(ids[p, :n], dtype=torch.long)[None], output_attentions=True).attentions
        rows = np.stack([a[0, :, queries].double().mean(0).numpy() for a in att])  # (layer, query, key)
        mass = mass + np.stack([rows[:, :, codes == k].sum((1, 2)) for k in range(3)], axis=1)
        n_rows += len(queries)
        n_t, n_o = n_t + len(queries) * (codes == 0).sum(), n_o + len(queries) * (codes == 1).sum()
    return mass / n_rows, n_t / n_rows, n_o / n_rows


@pytest.mark.parametrize("name", sorted(_DOMINANCE_MODELS))
def test_text_dominance_equals_a_recomputation_from_the_eager_attentions(name, tmp_path):
    """measure's per-layer A_T, A_O, sink mass and MDI equal those recomputed from the model's eager
    output_attentions with the paper's definitions (Wu et al. 2025), where a sliding window hides
    part of the document from the answer queries."""
    from scalelens.measure.dominance import DominanceSettings
    from scalelens.measure.run import MeasureSettings

    attn, config = _DOMINANCE_MODELS[name]
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config(), attn_implementation=attn).eval()
    s = MeasureSettings(dominance=DominanceSettings(dilutions=(1,), n_prompts=3, batch_size=2))
    got = measure(load_model(model, tokenizer=word_tokenizer()), "text_dominance", tmp_path, s,
                  progress=False)["analyses"]["text_dominance"]
    with CaptureFile(tmp_path / "dominance_x1.h5") as f:
        ids, seg, lengths, labels = (f.read("tokens").data, f.read("segments").data, f.read("lengths").data,
                                     f.segment_labels)
    torch.manual_seed(0)
    ref = T.AutoModelForCausalLM.from_config(config(), attn_implementation="eager").eval()
    mass, n_t, n_o = _eager_dominance(ref, ids, seg, lengths, labels)
    assert (got["n_text"], got["n_other"]) == pytest.approx((n_t, n_o), abs=1e-9)
    for key, want in (("a_text", mass[:, 0]), ("a_other", mass[:, 1]), ("a_sink", mass[:, 2]),
                      ("mdi", (mass[:, 0] / n_t) / (mass[:, 1] / n_o))):
        np.testing.assert_allclose([row[key] for row in got["per_layer"]], want, rtol=1e-5, atol=1e-7)
