"""MPT computes attention in its own forward from one fused Wqkv projection (chunked in q, k, v
thirds, optionally clamped by clip_qkv), adding the ALiBi position_bias the model builds once for
all layers and filling the keys its boolean mask marks with the dtype's minimum: the tap reads q and
k at Wqkv and hands the bias over, so per-head probes equal MPT's own returned attention weights."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import transformers as T
from test_projection_taps import _eager, check_alibi_probes, check_written_back
from tiny_models import VOCAB, prompts, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.hooks import arch
from scalelens.hooks.attention import attention_probs, attention_tap
from scalelens.measure import retrieval
from scalelens.models.load import load_model
from scalelens.probes.spec import preset

CLIP = 0.5
VARIANTS = {
    "plain": {},
    "clip_qkv": {"attn_config": {"clip_qkv": CLIP}},  # binds: |Wqkv output| reaches ~2 at this init
    "softmax_scale": {"attn_config": {"softmax_scale": 0.7}},
    "alibi_off": {"attn_config": {"alibi": False}},  # transformers' MPT adds the bias all the same
    "six_heads": {"d_model": 48, "n_heads": 6},  # slopes of 8 heads, interleaved
}


def mpt(variant: str = "plain", dtype: torch.dtype = torch.float32, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"d_model": 32, "n_heads": 4, **VARIANTS[variant], **extra}
    config = T.MptConfig(vocab_size=VOCAB, n_layers=2, max_seq_len=96, initializer_range=0.2, **kw)
    return T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def slopes(n_heads: int) -> torch.Tensor:
    """MPT's ALiBi slopes: 2^-(8 i / n) for the next power of two n >= n_heads, odd ones first."""
    n = 2 ** int(np.ceil(np.log2(n_heads)))
    s = torch.tensor([2.0 ** (-8 * (i + 1) / n) for i in range(n)])
    return torch.cat([s[1::2], s[::2]])[:n_heads] if n != n_heads else s


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_top1_and_q_k_equal_mpts_own_weights(variant, tmp_path):
    """Padded batches of 2: each head's rows, a head subset, the top-1 keys, and softmax of
    q k^T * softmax_scale plus the ALiBi bias from the (clamped) q and k probes."""
    model = mpt(variant)
    attn = arch.layer_part(model, 0, "attn")
    v = check_alibi_probes(model, tmp_path, attn.softmax_scale, slopes(attn.n_heads))
    assert np.abs(v["attn"][0, 0, 0] - v["attn"][0, 0, 3]).max() > 0.1  # heads differ
    if variant == "clip_qkv":
        assert np.abs(v["q"]).max() == np.abs(v["k"]).max() == CLIP  # the clamp binds


def test_bfloat16_rows_are_mpts_own_within_its_rounding(tmp_path):
    """A bf16 model: the tap's float32 rows from bf16 q and k against MPT's rows (bf16 scores,
    float32 softmax, returned in bf16: max |diff| 0.0044 here)."""
    model = mpt(dtype=torch.bfloat16)
    out = capture(load_model(model, tokenizer=word_tokenizer()), [preset("attn")], prompts(3),
                  tmp_path / "c.h5", batch_size=2, progress=False)
    with CaptureFile(out) as f:
        attn, ids, lengths = f.read("values", "attn").data, f.read("tokens").data, f.read("lengths").data
    for i, n in enumerate(lengths):
        o = _eager(model, ids[i, :n])
        for layer in range(2):
            np.testing.assert_allclose(attn[i, layer, :, :n, :n], o.attentions[layer][0].float(), atol=1e-2)
    assert attn.max() > 0.3


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_with_a_mask_gives_each_rows_own_weights(side):
    """MPT's mask is boolean, True where a key is blocked (the other families': True where allowed):
    with a padding mask the tapped rows of every real query equal the model's own."""
    model = mpt()
    ids = torch.arange(3, 21).view(2, 9)
    mask = torch.ones_like(ids)
    pad = slice(0, 3) if side == "left" else slice(6, 9)
    mask[1, pad] = 0
    seen = {}

    def keep(layer, q, k, m, scaling, kwargs):
        seen[layer] = attention_probs(q, k, m, scaling, kwargs)

    modules = {i: arch.layer_part(model, i, "attn") for i in range(2)}
    with attention_tap(model, modules, keep), torch.no_grad():
        own = model(ids, attention_mask=mask, output_attentions=True).attentions
    real = mask.bool()
    for layer in range(2):
        for b in range(2):
            r = real[b]
            np.testing.assert_allclose(seen[layer][b][:, r][:, :, r], own[layer][b][:, r][:, :, r], atol=1e-6)
            assert (seen[layer][b][:, r][:, :, ~r] == 0).all()  # padding keys get nothing


def test_masked_heads_attend_uniformly_and_leave_other_heads_and_layers():
    """The retrieval ablation zeroes a head's query and its ALiBi bias: its rows are uniform over
    the keys it may see; the other heads and the earlier layer keep theirs, and it is undone."""
    lm = load_model(mpt("clip_qkv"), tokenizer=word_tokenizer())
    ids = np.arange(3, 12)
    plain = _eager(lm.model, ids).attentions
    with retrieval.masked_heads(lm, [(1, 0)]):
        masked = _eager(lm.model, ids).attentions
    n = len(ids)
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert np.abs(plain[1][0, 0] - uniform).max() > 0.05
    np.testing.assert_allclose(masked[1][0, 0], uniform, atol=1e-6)
    np.testing.assert_allclose(masked[1][0, 1:], plain[1][0, 1:], atol=1e-6)
    np.testing.assert_allclose(masked[0][0], plain[0][0], atol=1e-6)
    np.testing.assert_allclose(_eager(lm.model, ids).attentions[1][0], plain[1][0], atol=0)  # undone


def test_an_edit_of_one_layers_bias_stays_in_that_layer():
    """The model builds one position_bias for all layers: zeroing head 2's bias in layer 0 gives
    layer 0 that edit only; layer 1 keeps slope 1/64 and attends as the tap recomputes it."""
    model = mpt()
    seen, bias = {}, {}

    def edit(layer, q, k, mask, scaling, kwargs):
        if layer == 0:
            kwargs["alibi"][:, 2] = 0
        bias[layer] = kwargs["alibi"][0, 2, 0].clone()
        seen[layer] = attention_probs(q, k, mask, scaling, kwargs)

    modules = {i: arch.layer_part(model, i, "attn") for i in range(2)}
    with attention_tap(model, modules, edit):
        want = _eager(model, np.arange(3, 9)).attentions
    np.testing.assert_allclose(bias[0], np.zeros(6))
    np.testing.assert_allclose(bias[1], (np.arange(6) - 5) / 64)
    for layer in range(2):
        np.testing.assert_allclose(seen[layer], want[layer], atol=1e-6)
    assert np.abs(want[0][0, 2] - _eager(model, np.arange(3, 9)).attentions[0][0, 2]).max() > 1e-3  # edited


def test_a_query_beyond_clip_qkv_is_refused():
    """MPT clamps the projection the replacement is written to: a query the clamp would change is
    refused in one line; a zeroed one (the ablation) is not."""
    model = mpt("clip_qkv")

    def double(layer, q, k, mask, scaling, kwargs):
        return q * 3

    with attention_tap(model, {0: arch.layer_part(model, 0, "attn")}, double):
        with pytest.raises(ScalelensError, match="beyond clip_qkv=0.5") as exc:
            _eager(model, np.arange(3, 9))
    assert "\n" not in str(exc.value)


def test_a_replaced_query_is_written_into_the_query_third():
    """Without clip_qkv any replacement is written back: doubling head 1's query in layer 0 gives
    the attention of a model whose Wqkv rows for head 1's query are doubled."""
    model, doubled = mpt(), mpt()
    with torch.no_grad():
        arch.layer_part(doubled, 0, "attn").Wqkv.weight[8:16] *= 2

    def double(layer, q, k, mask, scaling, kwargs):
        q = q.clone()
        q[:, 1] *= 2
        return q

    check_written_back(model, doubled, double)


def test_nnsight_gives_the_native_values(tmp_path):
    lm = load_model(mpt(), tokenizer=word_tokenizer())
    probes = [preset("attn"), preset("q"), preset("k"), preset("top1")]
    kw = {"batch_size": 2, "progress": False}
    ref = capture(lm, probes, prompts(4), tmp_path / "native.h5", **kw)
    out = capture(lm, probes, prompts(4), tmp_path / "nn.h5", backend="nnsight", **kw)
    with h5py.File(ref) as a, h5py.File(out) as b:
        for probe in a["probes"]:
            for name in a["probes"][probe]:
                np.testing.assert_array_equal(a["probes"][probe][name][()], b["probes"][probe][name][()])
        assert b["probes"]["attn"]["values"][()].max() > 0.3  # the tap really fired


def test_measure_runs_every_analysis_on_mpt(tmp_path, capsys):
    """`scalelens measure` (all analyses) in MPT's context: retrieval heads with the ablation's
    masked greedy decoding, massive activations, superposition, text dominance, capacity and
    sparsity. Its LM head is zeroed so it answers w0 (token 0) everywhere: the needle's answer,
    so the test passes the gate and the ablation runs."""
    from cli_run import run_cli

    model = mpt(tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(tmp_path / "m")
    word_tokenizer().save_pretrained(tmp_path / "m")
    needle = {"needle": "w40 w41 w0", "question": "w20 w21", "answer": "w0"}
    (tmp_path / "n.jsonl").write_text(json.dumps(needle) + "\n")
    rc, _, err = run_cli(capsys, [
        "measure", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--quiet",
        "--needles", str(tmp_path / "n.jsonl"), "--context-lengths", "48", "--depths", "0.5",
        "--ablation-k", "1", "--n-sequences", "2", "--seq-length", "12", "--dilutions", "1,2",
        "--dominance-prompts", "2"])
    assert rc == 0, err
    got = json.loads((tmp_path / "o" / "results.json").read_text())["analyses"]
    assert set(got) == {"retrieval_heads", "massive_activations", "superposition", "text_dominance",
                        "information_capacity", "activation_sparsity"}
    assert np.asarray(got["retrieval_heads"]["scores"]).shape == (2, 4)
    assert got["retrieval_heads"]["n_tests_passed"] == 1
    assert len(got["retrieval_heads"]["ablation"]["top_heads"]) == 1
    assert all(np.isfinite(layer["mdi"]) for layer in got["text_dominance"]["per_layer"])
