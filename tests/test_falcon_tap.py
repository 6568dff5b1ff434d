"""Falcon computes attention in its own code from one fused query_key_value projection: the tap
splits it with the model's own _split_heads (multi-query, plain, and the new decoder architecture's
kv groups) and rotates it with the model's rotary function, or takes its ALiBi bias, which the model
puts into the mask it passes every layer and, in its eager branch, adds a second time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import transformers as T
from test_projection_taps import _eager, check_written_back
from tiny_models import VOCAB, prompts, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks import arch
from scalelens.hooks.attention import attention_probs, attention_tap
from scalelens.measure import retrieval
from scalelens.models.load import load_model
from scalelens.probes.spec import ProbeSpec, preset

LAYOUTS = {
    "multi_query": {},
    "plain": {"multi_query": False},
    "new_decoder": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "new_decoder_one_norm": {"new_decoder_architecture": True, "num_kv_heads": 1,
                             "num_ln_in_parallel_attn": 1},
    "sequential": {"multi_query": False, "parallel_attn": False},
    "alibi_rw": {"alibi": True, "multi_query": False, "parallel_attn": False},  # Falcon-RW's layout
    "alibi_multi_query": {"alibi": True},
    "alibi_new_decoder": {"alibi": True, "new_decoder_architecture": True, "num_kv_heads": 2},
}
CASES = [(name, impl) for name in LAYOUTS for impl in ("eager", "sdpa")]


def falcon(layout: str, attn: str = "eager") -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            initializer_range=0.2, **LAYOUTS[layout])  # rows far from uniform
    return T.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def own_attentions(model, ids, monkeypatch) -> list[torch.Tensor]:
    """The probabilities the model's forward uses, per layer: eager's output_attentions, or under
    sdpa those of its own SDPA calls (read with identity values), as its eager branch adds an ALiBi
    bias twice."""
    if model.config._attn_implementation == "eager":
        return list(_eager(model, ids).attentions)
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def record(q, k, v, **kw):
        eye = torch.eye(k.shape[2]).expand(*k.shape[:2], -1, -1)
        seen.append(sdpa(q, k, eye, **kw))
        return sdpa(q, k, v, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
        with torch.no_grad():
            model(torch.tensor(ids, dtype=torch.long)[None])
    return seen


@pytest.mark.parametrize("layout, impl", CASES)
def test_attention_and_top1_equal_the_attention_falcon_computes(layout, impl, tmp_path, monkeypatch):
    """Padded batches of 2, each head's rows, a head subset and the top-1 keys."""
    model = falcon(layout, impl)
    probes = [preset("attn"), dataclasses.replace(preset("attn"), name="sub", heads=(3, 1)), preset("top1")]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(3), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    with CaptureFile(out) as f:
        attn, sub = f.read("values", "attn").data, f.read("values", "sub").data
        ids, lengths, top1 = f.read("tokens").data, f.read("lengths").data, f.probe("top1")
    assert len(set(lengths[:2])) > 1  # padding inside a batch
    for i, n in enumerate(lengths):
        wants = own_attentions(model, ids[i, :n], monkeypatch)
        qpos = top1["query_pos"].data[i, 0]
        for layer, want in enumerate(wants):
            np.testing.assert_allclose(attn[i, layer, :, :n, :n], want[0], atol=1e-6)
            np.testing.assert_allclose(sub[i, layer, :, :n, :n], want[0, [3, 1]], atol=1e-6)
            np.testing.assert_array_equal(top1["top1_key"].data[i, layer, :, 0],
                                          want[0, :, qpos, :n].argmax(-1))


@pytest.mark.parametrize("layout", ["multi_query", "new_decoder", "alibi_rw"])
def test_q_and_k_are_what_falcons_eager_softmax_reads(layout, tmp_path):
    """softmax(q k^T / sqrt(d) + bias) under the causal mask from the stored q and k probes; with
    ALiBi the eager branch's bias is twice the slope (1/4, 1/16, ... for 4 heads) times the position
    over sqrt(d)."""
    model = falcon(layout)
    probes = [ProbeSpec("q", "q", dtype="float32"), ProbeSpec("k", "k", dtype="float32")]
    out = capture(load_model(model, tokenizer=word_tokenizer()), probes, prompts(3), tmp_path / "c.h5",
                  batch_size=2, progress=False)
    with CaptureFile(out) as f:
        q, k, ids, lengths = (f.read("values", "q").data, f.read("values", "k").data, f.read("tokens").data,
                              f.read("lengths").data)
    alibi = "alibi" in layout
    slopes = torch.tensor([2.0 ** (-2 * (h + 1)) for h in range(4)])
    for i, n in enumerate(lengths):
        o = _eager(model, ids[i, :n])
        for layer in range(2):
            qi, ki = torch.tensor(q[i, layer, :, :n]), torch.tensor(k[i, layer, :, :n])
            scores = qi @ ki.transpose(-1, -2) / 8**0.5
            if alibi:
                scores = scores + 2 * slopes[:, None, None] * torch.arange(n) / 8**0.5
            scores = scores + torch.full((n, n), float("-inf")).triu(1)
            np.testing.assert_allclose(scores.softmax(-1), o.attentions[layer][0], atol=1e-6)


@pytest.mark.parametrize("layout, impl", CASES)
def test_masked_heads_attend_uniformly(layout, impl, monkeypatch):
    """The retrieval ablation zeroes a head's query (before the rotation, where zero stays zero)
    and its ALiBi bias (in the mask the model shares across layers, and the eager branch's second
    one): its rows are uniform over the keys it may see, the other heads and layers keep theirs
    (that the shared mask is restored for later layers: the bias-edit test below)."""
    lm = load_model(falcon(layout, impl), tokenizer=word_tokenizer())
    ids = np.arange(3, 12)
    plain = own_attentions(lm.model, ids, monkeypatch)
    with retrieval.masked_heads(lm, [(1, 2)]):
        masked = own_attentions(lm.model, ids, monkeypatch)
    n = len(ids)
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert np.abs(plain[1][0, 2] - uniform).max() > 0.05
    np.testing.assert_allclose(masked[1][0, 2], uniform, atol=1e-6)
    np.testing.assert_allclose(masked[1][0, [0, 1, 3]], plain[1][0, [0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(masked[0][0], plain[0][0], atol=1e-6)
    np.testing.assert_allclose(own_attentions(lm.model, ids, monkeypatch)[1], plain[1], atol=0)  # undone


@pytest.mark.parametrize("layout", ["alibi_rw", "alibi_multi_query", "alibi_new_decoder"])
def test_a_replaced_alibi_query_is_written_into_its_own_columns(layout):
    """Without rotary any replacement query is written back: doubling head 1's query in layer 0
    gives the attention of a model whose query weights for head 1 are doubled."""
    model, doubled = falcon(layout), falcon(layout)
    module = arch.layer_part(doubled, 0, "attn")
    columns = module._split_heads(torch.arange(module.query_key_value.out_features).view(1, 1, -1))[0][0, 0]
    with torch.no_grad():
        module.query_key_value.weight[columns[1]] *= 2

    def double(layer, q, k, mask, scaling, kwargs):
        if layer == 0:
            q = q.clone()
            q[:, 1] *= 2
            return q
        return None

    check_written_back(model, doubled, double)


def test_a_rotary_query_can_only_be_zeroed():
    """Falcon rotates its queries after the projection the tap writes to: a replacement other than
    zeros cannot be written back exactly, so it is refused in one line."""
    model = falcon("multi_query")

    def double(layer, q, k, mask, scaling, kwargs):
        return q * 2

    with attention_tap(model, {0: arch.layer_part(model, 0, "attn")}, double):
        with pytest.raises(ScalelensError, match="can only zero a rotary query head") as exc:
            _eager(model, np.arange(3, 9))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_an_edit_of_one_layers_alibi_bias_stays_in_that_layer(impl, monkeypatch):
    """The model builds one mask, with the bias in it, for all layers: zeroing head 2's bias in layer
    0 edits that mask for layer 0 only, so layer 1 attends as the tap recomputes it with its bias."""
    model = falcon("alibi_rw", impl)
    seen = {}

    def edit(layer, q, k, mask, scaling, kwargs):
        if layer == 0:
            kwargs["alibi"][:, 2] = 0
        seen[layer] = attention_probs(q, k, mask, scaling, kwargs)

    modules = {i: arch.layer_part(model, i, "attn") for i in range(2)}
    with attention_tap(model, modules, edit):
        want = own_attentions(model, np.arange(3, 12), monkeypatch)
    for layer in range(2):
        np.testing.assert_allclose(seen[layer], want[layer], atol=1e-6)


@pytest.mark.parametrize("layout, impl", [("new_decoder", "sdpa"), ("multi_query", "eager"),
                                          ("alibi_rw", "eager"), ("alibi_new_decoder", "sdpa")])
def test_cached_retrieval_decoding_top1_equals_recomputed(layout, impl, monkeypatch):
    """Retrieval's KV-cached greedy decoding reads the cached keys (kv groups broadcast as the cache
    keeps them), the rotation at each new position and the whole prefix's bias."""
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    lm = load_model(falcon(layout, impl), tokenizer=word_tokenizer())
    top1, produced = retrieval._greedy_top1(lm, ids, 5)
    model, tops, want = falcon(layout, impl), [], []
    for _ in range(5):
        rows = own_attentions(model, ids[0].numpy(), monkeypatch)
        tops.append(np.stack([a[0, :, -1].argmax(-1).numpy() for a in rows]))
        with torch.no_grad():
            want.append(int(model(input_ids=ids).logits[0, -1].argmax()))
        ids = torch.cat([ids, ids.new_tensor([[want[-1]]])], dim=1)
    assert produced == want
    np.testing.assert_array_equal(top1, np.stack(tops, axis=-1))
