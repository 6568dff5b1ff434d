"""Attention computed in a family's own code, tapped at its projections: BLOOM's fused
query_key_value plus its ALiBi bias, XGLM's q_proj and k_proj (MPT's Wqkv: tests/test_mpt_tap.py),
or at its own _attn (GPT-NeoX Japanese); the contexts BLOOM (none) and MPT (max_seq_len) declare."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers as T
from tiny_models import VOCAB, prompts, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks import arch
from scalelens.hooks.attention import attention_tap
from scalelens.measure import retrieval
from scalelens.models.load import load_model
from scalelens.probes.spec import ProbeSpec, preset


def bloom(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    return T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def _eager(model, ids: np.ndarray, **kw):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)[None], output_attentions=True, **kw)


def check_written_back(model, doubled, double) -> None:
    """With tap callback ``double`` (layer 0's head 1 query doubled) on ``model``, both layers attend
    as ``doubled`` (that head's query projection weights doubled), which differs from ``model``."""
    ids = np.arange(3, 12)
    with attention_tap(model, {0: arch.layer_part(model, 0, "attn")}, double):
        got = _eager(model, ids)
    want = _eager(doubled, ids)
    for layer in range(2):
        np.testing.assert_allclose(got.attentions[layer], want.attentions[layer], atol=1e-6)
    assert np.abs(want.attentions[0][0, 1] - _eager(model, ids).attentions[0][0, 1]).max() > 0.01


def check_alibi_probes(model, tmp_path, scale: float, slopes: torch.Tensor) -> dict[str, np.ndarray]:
    """Capture attn, a head subset (3, 1), top1, q and k of an ALiBi ``model`` over prompts in
    padded batches of 2, and check each against the model's own attentions, the q and k probes
    through softmax(q k^T * scale + slope * key position, causal); the captured arrays."""
    probes = [preset("attn"), dataclasses.replace(preset("attn"), name="sub", heads=(3, 1)), preset("top1"),
              ProbeSpec("q", "q", dtype="float32"), ProbeSpec("k", "k", dtype="float32")]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(5), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    with CaptureFile(out) as f:
        v = {n: f.read("values", n).data for n in ("attn", "sub", "q", "k")}
        ids, lengths, top1 = f.read("tokens").data, f.read("lengths").data, f.probe("top1")
    assert len(set(lengths[:2])) > 1  # padding inside a batch
    for i, n in enumerate(lengths):
        o = _eager(model, ids[i, :n])
        qpos = top1["query_pos"].data[i, 0]
        for layer in range(2):
            want = o.attentions[layer][0]
            np.testing.assert_allclose(v["attn"][i, layer, :, :n, :n], want, atol=1e-6)
            np.testing.assert_allclose(v["sub"][i, layer, :, :n, :n], want[[3, 1]], atol=1e-6)
            np.testing.assert_array_equal(top1["top1_key"].data[i, layer, :, 0], want[:, qpos, :n].argmax(-1))
            q, k = torch.tensor(v["q"][i, layer, :, :n]), torch.tensor(v["k"][i, layer, :, :n])
            scores = q @ k.transpose(-1, -2) * scale + slopes[:, None, None] * torch.arange(n)
            scores = scores + torch.full((n, n), float("-inf")).triu(1)
            np.testing.assert_allclose(scores.softmax(-1), want, atol=1e-6)
    return v


def test_attention_top1_and_q_k_equal_blooms_own_weights(tmp_path):
    """Padded batches of 2: each head's rows, a head subset, the top-1 keys, and softmax of
    q k^T / sqrt(d) plus the ALiBi bias from the q and k probes all give BLOOM's own attentions."""
    slopes = torch.tensor([2.0 ** (-2 * (h + 1)) for h in range(4)])  # 4 heads: 1/4, 1/16, ...
    v = check_alibi_probes(bloom(), tmp_path, 1 / 8**0.5, slopes)
    assert np.abs(v["attn"][0, 0, 0] - v["attn"][0, 0, 3]).max() > 0.1  # heads differ (bias slopes)


def xglm() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.XGLMConfig(vocab_size=VOCAB, max_position_embeddings=128, d_model=32, num_layers=2,
                          attention_heads=4, ffn_dim=64, pad_token_id=0)
    return T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def neox_japanese(**extra) -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.GPTNeoXJapaneseConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_multiple_size=2,
                                     max_position_embeddings=128, pad_token_id=0, bos_token_id=62,
                                     eos_token_id=63, initializer_range=0.2, **extra)
    return T.AutoModelForCausalLM.from_config(config).eval()


def answering_neox_japanese() -> torch.nn.Module:
    """GPT-NeoX Japanese with its unembedding zeroed: it answers w0 (token 0) everywhere."""
    model = neox_japanese(tie_word_embeddings=False)
    with torch.no_grad():
        model.embed_out.weight.zero_()
    return model


def test_gpt_neox_japanese_q_k_give_its_weights_and_nnsight_the_native_values(tmp_path):
    """GPT-NeoX Japanese computes attention in its own _attn: softmax(q k^T / sqrt(d)) under the
    causal mask from the stored (post-rotary) q and k gives its own attentions, and nnsight
    writes the very values the native backend does."""
    lm = load_model(neox_japanese(), tokenizer=word_tokenizer())
    probes = [preset("attn"), preset("top1"), ProbeSpec("q", "q", dtype="float32"),
              ProbeSpec("k", "k", dtype="float32")]
    kw = {"batch_size": 2, "progress": False}
    out = capture(lm, probes, prompts(4), tmp_path / "c.h5", **kw)
    nn = capture(lm, probes, prompts(4), tmp_path / "nn.h5", backend="nnsight", **kw)
    with CaptureFile(out) as f, CaptureFile(nn) as g:
        for name in ("attn", "q", "k"):
            np.testing.assert_array_equal(f.read("values", name).data, g.read("values", name).data)
        np.testing.assert_array_equal(f.read("top1_key", "top1").data, g.read("top1_key", "top1").data)
        q, k, ids, lengths = (f.read("values", "q").data, f.read("values", "k").data, f.read("tokens").data,
                              f.read("lengths").data)
    assert len(set(lengths[:2])) > 1  # padding inside a batch
    for i, n in enumerate(lengths):
        o = _eager(lm.model, ids[i, :n])
        for layer in range(2):
            scores = torch.tensor(q[i, layer, :, :n]) @ torch.tensor(k[i, layer, :, :n]).transpose(-1, -2)
            scores = scores / 8**0.5 + torch.full((n, n), float("-inf")).triu(1)
            np.testing.assert_allclose(scores.softmax(-1), o.attentions[layer][0], atol=1e-6)
    assert np.abs(o.attentions[0][0] - o.attentions[0][0].tril().bool().float().div(
        torch.arange(1, n + 1)[:, None])).max() > 0.05  # rows far from uniform


@pytest.mark.parametrize("build", [bloom, xglm, neox_japanese])
def test_masked_heads_attend_uniformly_without_their_alibi_bias(build):
    """The retrieval ablation zeroes a head's logits: its query (and BLOOM's ALiBi bias), so its rows
    are uniform over the keys it may see; the other heads, and other layers, keep their own rows."""
    lm = load_model(build(), tokenizer=word_tokenizer())
    ids = np.arange(3, 12)
    plain = _eager(lm.model, ids).attentions
    with retrieval.masked_heads(lm, [(1, 2)]):
        masked = _eager(lm.model, ids).attentions
    n = len(ids)
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(masked[1][0, 2], uniform, atol=1e-6)
    np.testing.assert_allclose(masked[1][0, [0, 1, 3]], plain[1][0, [0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(masked[0][0], plain[0][0], atol=1e-6)
    np.testing.assert_allclose(_eager(lm.model, ids).attentions[1][0], plain[1][0], atol=0)  # undone


def test_the_tap_leaves_no_hooks_and_refuses_to_nest():
    model = bloom()
    modules = {i: arch.layer_part(model, i, "attn") for i in range(2)}
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with attention_tap(model, modules, lambda *a: None):
        with pytest.raises(ScalelensError, match="already being read from this model's attention"):
            with attention_tap(model, modules, lambda *a: None):
                pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


def test_an_edit_of_one_layers_bias_stays_in_that_layer():
    """The model builds one ALiBi tensor for all layers: the tap hands each layer its own copy, so
    zeroing a head's bias in layer 0 leaves layer 1's bias (slope 1/64 for head 2 of 4) as it was."""
    model = bloom()
    modules = {i: arch.layer_part(model, i, "attn") for i in range(2)}
    seen = {}

    def edit(layer, q, k, mask, scaling, kwargs):
        if layer == 0:
            kwargs["alibi"][:, 2] = 0
        seen[layer] = kwargs["alibi"][0, 2, 0].clone()

    with attention_tap(model, modules, edit):
        _eager(model, np.arange(3, 9))
    np.testing.assert_allclose(seen[0], np.zeros(6))
    np.testing.assert_allclose(seen[1], np.arange(6) / 64)


@pytest.mark.parametrize("build", [bloom, answering_neox_japanese])
def test_measure_runs_every_analysis_bloom_can_give(build, tmp_path):
    """Retrieval heads (with the ablation), massive activations, superposition, text dominance and
    information capacity; activation sparsity needs branches BLOOM's modules do not return (nor
    GPT-NeoX Japanese's: its last layer's attention bias is added outside the module). BLOOM's
    random answer passes the gate; GPT-NeoX Japanese's is w0, a needle's answer here."""
    from scalelens.measure.dominance import DominanceSettings
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.retrieval import RetrievalSettings
    from scalelens.measure.run import CORE_ANALYSES, MeasureSettings, measure

    needles = tmp_path / "n.jsonl"
    needles.write_text(json.dumps({"needle": "w40 w41 w0", "question": "w20 w21", "answer": "w0"}) + "\n")
    kind = "auto" if build is bloom else str(needles)
    s = MeasureSettings(RetrievalSettings(needles=kind, context_lengths=(48,), depths=(0.5,), n_needles=1,
                                          ablation_k=1),
                        MassiveSettings(n_sequences=2, length=12),
                        DominanceSettings(dilutions=(1, 2), n_prompts=2, base_tokens=12))
    wanted = (*CORE_ANALYSES, "information_capacity")
    data = measure(load_model(build(), tokenizer=word_tokenizer()), wanted, tmp_path, s, progress=False)
    got = data["analyses"]
    assert set(got) == set(wanted)
    assert np.asarray(got["retrieval_heads"]["scores"]).shape == (2, 4)
    assert got["retrieval_heads"]["ablation"]["top_heads"]
    assert all(np.isfinite(layer["mdi"]) for layer in got["text_dominance"]["per_layer"])
    assert [d["other_tokens"] for d in got["text_dominance"]["dilution"]] == [12, 24]


@pytest.mark.parametrize("extra, needle", [([], "declares no context length"),
                                           (["--base-tokens", "1"], "--base-tokens must be at least 2")])
def test_text_dominance_without_a_context_needs_a_document_size(extra, needle, tmp_path, capsys):
    """BLOOM declares no context (ALiBi), so there is no default x1 document: one line names
    --base-tokens, before anything is written."""
    from cli_run import assert_one_line, run_cli

    bloom().save_pretrained(tmp_path / "m")
    word_tokenizer().save_pretrained(tmp_path / "m")
    rc, _, err = run_cli(capsys, ["measure", "--model", str(tmp_path / "m"), "--analyses", "text_dominance",
                                  "--out", str(tmp_path / "o"), *extra])
    assert_one_line(rc, err, needle, "--base-tokens")
    assert not (tmp_path / "o").exists()


def test_mpt_declares_its_max_seq_len_and_measures_activation_sparsity(tmp_path):
    """MPT names its context max_seq_len: it was read as none (0), and the sparsity probe text was
    then cut at a 0-token limit."""
    from scalelens.measure.massive import MassiveSettings
    from scalelens.measure.run import MeasureSettings, measure

    torch.manual_seed(0)
    config = T.MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=96)
    lm = load_model(T.AutoModelForCausalLM.from_config(config).eval(), tokenizer=word_tokenizer())
    assert lm.info.max_position == 96
    settings = MeasureSettings(massive=MassiveSettings(n_sequences=2))
    data = measure(lm, ("activation_sparsity",), tmp_path, settings, progress=False)
    assert len(data["analyses"]["activation_sparsity"]["points"]["mlp_out"]["per_layer"]) == 2


def test_blooms_intermediate_branches_give_their_step():
    """BLOOM's training checkpoints are hub branches ``global_step<N>`` (Megatron-DeepSpeed)."""
    from scalelens.models.revisions import parse_step, revision_key

    names = {"global_step1000": 1000, "global_step0": 0, "global_step": None, "xglobal_step5": None,
             "global_step5-x": None, "global_step1000-tokens4B": None}
    assert {n: parse_step(n) for n in names} == names
    assert sorted(["main", "global_step200", "global_step30"], key=revision_key) == [
        "global_step30", "global_step200", "main"]
