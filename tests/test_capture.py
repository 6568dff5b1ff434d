"""Captured tensors equal the model's own outputs, hooks are cleaned up, resume is exact."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from tiny_models import ARCHS, prompts, tiny_model, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import attach, capture
from scalelens.errors import IncompatibleResumeError, ScalelensError
from scalelens.models.load import load_model
from scalelens.probes.spec import Positions, ProbeSpec, preset


def loaded(arch: str = "gpt_neox", attn: str = "sdpa"):
    return load_model(tiny_model(arch, attn), tokenizer=word_tokenizer())


def hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_pre_hooks_with_kwargs)
        for m in model.modules()
    )


_FINAL_NORM = {"gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f"}


@pytest.mark.parametrize("arch", ARCHS)
def test_resid_and_attention_match_hf_outputs(arch, tmp_path):
    lm = loaded(arch)
    out = capture(
        lm,
        [preset("resid", dtype="float32"), preset("attn")],
        prompts(),
        tmp_path / "c.h5",
        batch_size=3,
        progress=False,
    )
    ref = tiny_model(arch, "eager")
    final_norm = ref.get_submodule(_FINAL_NORM.get(arch, "model.norm"))
    with CaptureFile(out) as f:
        ids, lengths = f.read("tokens").data, f.read("lengths").data
        resid, attn = f.read("values", "resid").data, f.read("values", "attn").data
        assert f.read("values", "attn").axes == ("prompt", "layer", "head", "seq", "kv_seq")
    for i, n in enumerate(lengths):
        x = torch.tensor(ids[i, :n], dtype=torch.long)[None]
        with torch.no_grad():
            o = ref(x, output_hidden_states=True, output_attentions=True)
            last = final_norm(torch.tensor(resid[i, -1, :n])[None])[0]
        for layer in range(3):
            want = o.hidden_states[layer + 1][0]
            got = last if layer == 2 else torch.tensor(resid[i, layer, :n])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                torch.tensor(attn[i, layer, :, :n, :n]),
                o.attentions[layer][0],
                atol=1e-5,
                rtol=1e-4,
            )
        assert not resid[i, :, n:].any() and not attn[i, :, :, n:].any()


def test_summary_probes_agree_with_full_tensors(tmp_path):
    lm = loaded()
    probes = [
        preset("resid", dtype="float32"),
        preset("attn"),
        preset("massive"),
        preset("top1"),
        preset("norms"),
    ]
    out = capture(lm, probes, prompts(), tmp_path / "c.h5", batch_size=4, progress=False)
    with CaptureFile(out) as f:
        resid, attn = f.read("values", "resid").data, f.read("values", "attn").data
        m, t1 = f.probe("massive"), f.probe("top1")
        norms, lengths, ids = (
            f.read("norm", "norms").data,
            f.read("lengths").data,
            f.read("tokens").data,
        )
    for i, n in enumerate(lengths):
        a = np.abs(resid[i, :, :n])  # (layer, seq, d)
        flat = a.reshape(a.shape[0], -1)
        np.testing.assert_allclose(m["top_values"].data[i, :, 0], flat.max(1), rtol=1e-6)
        pos, dim = m["top_pos"].data[i, :, 0], m["top_dim"].data[i, :, 0]
        np.testing.assert_allclose(a[np.arange(3), pos, dim], flat.max(1), rtol=1e-6)
        np.testing.assert_array_equal(m["top_token"].data[i, :, 0], ids[i, pos])
        np.testing.assert_allclose(m["median_abs"].data[i], np.median(flat, axis=1), rtol=1e-6)
        np.testing.assert_allclose(
            norms[i, :, :n], np.linalg.norm(resid[i, :, :n], axis=-1), rtol=1e-5
        )
        assert t1["query_pos"].data[i, 0] == n - 1
        np.testing.assert_array_equal(
            t1["top1_key"].data[i, :, :, 0], attn[i, :, :, n - 1].argmax(-1)
        )


@pytest.mark.parametrize("stack_bytes", [1, 3 * 12 * 32 * 4 * 2])
def test_massive_layers_reduced_in_stacks_equal_all_at_once(stack_bytes, tmp_path, monkeypatch):
    """The massive summary is the same whether 1, 2 or all 3 layers share one reduction."""
    import scalelens.probes.reduce as reduce

    lm = loaded()

    def run(name):
        out = capture(lm, [preset("massive")], prompts(), tmp_path / name, batch_size=3, progress=False)
        with CaptureFile(out) as f:
            return {k: v.data for k, v in f.probe("massive").items()}

    whole = run("all.h5")
    sizes = []
    reduce_massive = reduce.ProbeRuntime._reduce_massive

    def spy(self, ctx):
        sizes.append(len(self._pending))
        reduce_massive(self, ctx)

    monkeypatch.setattr(reduce, "MASSIVE_STACK_BYTES", stack_bytes)
    monkeypatch.setattr(reduce.ProbeRuntime, "_reduce_massive", spy)
    stacked = run("stacked.h5")
    assert max(sizes) == 1 if stack_bytes == 1 else 2 in sizes, sizes  # layer by layer / split stacks
    for k in whole:
        np.testing.assert_array_equal(whole[k], stacked[k], err_msg=k)


def test_massive_topk_beyond_a_batchs_entries_is_padded(tmp_path):
    """topk above the entries of a whole batch: the tail is NaN / -1, as for a short prompt
    in a wider batch, so the file does not depend on the batch size."""
    lm = loaded()
    texts = ["w1 w2", "w3", "w4 w5 w6 w7 w8"]  # 2, 1 and 5 tokens of 32 dims
    spec = [ProbeSpec("m", "resid_post", reduction="massive", topk=100)]

    def run(name, bs):
        out = capture(lm, spec, texts, tmp_path / name, batch_size=bs, progress=False)
        with CaptureFile(out) as f:
            return {k: v.data for k, v in f.probe("m").items()}

    one, all_ = run("one.h5", 1), run("all.h5", 3)
    for k in one:  # floats differ in the last bits: the batches are padded differently
        np.testing.assert_allclose(one[k], all_[k], rtol=1e-5, atol=1e-6, err_msg=k)
    vals = one["top_values"]
    assert np.isfinite(vals[1, :, :32]).all() and np.isnan(vals[1, :, 32:]).all()
    assert (one["top_pos"][1, :, 32:] == -1).all() and (one["top_pos"][1, :, :32] == 0).all()


def test_tied_massive_entries_are_kept_lowest_position_and_dim_first(tmp_path):
    """A bfloat16 model's |h| tie often (8 mantissa bits): of equal values the summary lists,
    and at the top-k's edge keeps, the lowest (position, dim) first, as a stable sort of the
    stored residual says, so a prompt's summary is the same in batches of 1 and 8. topk's own
    order of ties changed with the batch (Gemma 2: 9 of 324 entries, in 4 of 27 prompt-layer rows)."""
    lm = load_model(tiny_model("gemma2").to(torch.bfloat16), tokenizer=word_tokenizer())  # eager: exact
    probes = [preset("resid", dtype="float32"), ProbeSpec("m", "resid_post", reduction="massive", topk=12)]
    texts = _spread_prompts()

    def run(name, bs):
        out = capture(lm, probes, texts, tmp_path / name, batch_size=bs, progress=False)
        with CaptureFile(out) as f:
            return ({k: v.data for k, v in f.probe("m").items()}, f.read("values", "resid").data,
                    f.read("lengths").data)

    one, resid, lengths = run("one.h5", 1)
    eight, resid8, _ = run("eight.h5", 8)
    np.testing.assert_array_equal(resid, resid8)  # the same |h|: any difference is the ties' order
    n_tied = 0
    for i, n in enumerate(lengths):
        for layer in range(resid.shape[1]):
            x = np.abs(resid[i, layer, :n]).ravel()
            keep = np.lexsort((np.arange(x.size), -x))[:12]  # by value, then lowest flat index
            n_tied += int((x == x[keep[-1]]).sum() > 1) + int(len(np.unique(x[keep])) < keep.size)
            top = slice(0, keep.size)
            got = one["top_pos"][i, layer, top] * resid.shape[-1] + one["top_dim"][i, layer, top]
            np.testing.assert_array_equal(got, keep, err_msg=f"prompt {i} layer {layer}")
            np.testing.assert_array_equal(one["top_values"][i, layer, top], x[keep])
    assert n_tied >= 5  # ties really were there to break
    for k in one:
        np.testing.assert_array_equal(one[k], eight[k], err_msg=k)


@pytest.mark.parametrize("arch", ARCHS)
def test_top1_rows_agree_with_full_attention_on_every_arch(arch, tmp_path):
    """Top-1 rows (per-batch memo of row index and causal block) vs the full probabilities."""
    out = capture(loaded(arch), [preset("attn"), preset("top1")], prompts(), tmp_path / "c.h5", batch_size=3,
                  progress=False)
    with CaptureFile(out) as f:
        attn, t1, lengths = f.read("values", "attn").data, f.probe("top1"), f.read("lengths").data
    for i in range(len(lengths)):
        q = t1["query_pos"].data[i, 0]
        np.testing.assert_array_equal(t1["top1_key"].data[i, :, :, 0], attn[i, :, :, q].argmax(-1))
        np.testing.assert_allclose(t1["top1_prob"].data[i, :, :, 0], attn[i, :, :, q].max(-1), rtol=1e-6)


def test_layers_in_any_order_are_stored_in_that_order(tmp_path):
    """``layers=(2, 0)``: hooks fire 0 then 2, the layer axis holds 2 then 0 for every probe."""
    specs = [ProbeSpec("m", "resid_post", reduction="massive", layers=(2, 0)),
             ProbeSpec("t", "attn_pattern", reduction="top1", layers=(2, 0)),
             ProbeSpec("r", "resid_post", layers=(2, 0), dtype="float32"),
             ProbeSpec("a", "attn_pattern", layers=(2, 0), dtype="float32"),
             ProbeSpec("all", "resid_post", dtype="float32")]
    out = capture(loaded(), specs, prompts(), tmp_path / "o.h5", batch_size=3, progress=False)
    with CaptureFile(out) as f:
        r, a, every = f.read("values", "r").data, f.read("values", "a").data, f.read("values", "all").data
        m, t, lengths = f.probe("m"), f.probe("t"), f.read("lengths").data
    np.testing.assert_array_equal(r, every[:, [2, 0]])
    for i, n in enumerate(lengths):
        flat = np.abs(r[i, :, :n]).reshape(2, -1)
        np.testing.assert_allclose(m["top_values"].data[i, :, 0], flat.max(1), rtol=1e-6)
        np.testing.assert_allclose(m["median_abs"].data[i], np.median(flat, axis=1), rtol=1e-6)
        # every row, not only row 0 (which attends to key 0 alone, with probability 1, in every layer)
        np.testing.assert_array_equal(t["query_pos"].data[i, :n], np.arange(n))
        np.testing.assert_array_equal(t["top1_key"].data[i, :, :, :n], a[i, :, :, :n].argmax(-1))
        np.testing.assert_allclose(t["top1_prob"].data[i, :, :, :n], a[i, :, :, :n].max(-1), rtol=1e-6)


def test_segment_positions_and_heads(tmp_path):
    from scalelens.probes.prompts import Prompt

    ps = [Prompt((("doc", "w1 w2 w3 w4"), ("q", "w5 w6"))), Prompt((("doc", "w7 w8"), ("q", "w9")))]
    spec = ProbeSpec(
        "rows",
        "attn_pattern",
        heads=(1, 3),
        positions=Positions("segment", segment="q"),
        dtype="float32",
    )
    out = capture(loaded(), [spec, preset("attn")], ps, tmp_path / "s.h5", progress=False)
    with CaptureFile(out) as f:
        rows, qpos = f.read("values", "rows").data, f.read("query_pos", "rows").data
        full = f.read("values", "attn").data
        assert f.segment_labels == ["doc", "q"]
    np.testing.assert_array_equal(qpos, [[4, 5], [2, -1]])
    np.testing.assert_allclose(rows[0][:, :, :2], full[0][:, [1, 3]][:, :, [4, 5]], atol=1e-7)
    assert not rows[1, :, :, 1].any()


@pytest.mark.parametrize("make, message", [
    (lambda: Positions("indices", indices=(0.7, 2)), "a position index must be an integer, got 0.7"),
    (lambda: Positions("indices", indices=("1",)), "a position index must be an integer, got '1'"),
    (lambda: Positions("segment", segment="q", offset=0.5), "positions offset must be an integer, got 0.5"),
    (lambda: Positions("segment", segment="q", offset="-1"), "positions offset must be an integer, got '-1'"),
    (lambda: ProbeSpec("m", "resid_post", reduction="massive", topk=2.5), "topk must be an integer, got 2.5"),
    (lambda: ProbeSpec("m", "resid_post", reduction="massive", topk=True), "topk must be an integer, got Tr"),
])
def test_non_integer_positions_and_topk_are_refused(make, message):
    """int() made position 0.7 read position 0 and offset 0.5 shift nothing, silently; a float topk
    failed inside torch.topk mid-capture, and True kept one entry."""
    with pytest.raises(ScalelensError, match=message):
        make()


def test_one_position_index_alone_and_numpy_ints():
    assert Positions("indices", indices=np.int64(-1)).indices == (-1,)
    assert Positions("indices", indices=np.array([0, 2])) == Positions.parse("0,2")
    spec = ProbeSpec("m", "resid_post", reduction="massive", topk=np.int32(4))
    assert spec.topk == 4 and type(spec.topk) is int


def test_top1_rows_past_a_prompts_positions_are_blank(tmp_path):
    """A prompt with fewer selected rows than the batch: its extra rows read key -1, prob 0."""
    from scalelens.probes.prompts import Prompt

    ps = [Prompt((("doc", "w1 w2 w3 w4"), ("q", "w5 w6"))), Prompt((("doc", "w7 w8"), ("q", "w9")))]
    spec = ProbeSpec("t1", "attn_pattern", reduction="top1", positions=Positions("segment", segment="q"))
    out = capture(loaded(), [spec, preset("attn")], ps, tmp_path / "t.h5", progress=False)
    with CaptureFile(out) as f:
        t1, full = f.probe("t1"), f.read("values", "attn").data
    key, prob = t1["top1_key"].data, t1["top1_prob"].data
    np.testing.assert_array_equal(t1["query_pos"].data, [[4, 5], [2, -1]])
    np.testing.assert_array_equal(key[0], full[0][:, :, [4, 5]].argmax(-1))
    np.testing.assert_array_equal(key[1, :, :, 0], full[1][:, :, 2].argmax(-1))
    np.testing.assert_allclose(prob[1, :, :, 0], full[1][:, :, 2].max(-1), rtol=1e-6)
    assert (key[1, :, :, 1] == -1).all() and (prob[1, :, :, 1] == 0).all()


@pytest.mark.parametrize("fail", [False, True])
def test_no_hooks_left(tmp_path, fail):
    lm = loaded()
    before = hook_count(lm.model)
    impl = lm.model.config._attn_implementation
    with pytest.raises(RuntimeError) if fail else _nullcontext():
        with attach(
            lm, [preset("resid"), preset("attn")], tmp_path / "h.h5", progress=False
        ) as run:
            assert hook_count(lm.model) > before
            if fail:
                raise RuntimeError("boom")
            run.feed(prompts(3))
    assert hook_count(lm.model) == before
    assert lm.model.config._attn_implementation == impl


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _interrupted_capture(lm, probes, texts, out, at_batch: int, batch_size: int = 2) -> None:
    """A capture in batches of ``batch_size``, stopped by Ctrl-C as batch ``at_batch`` starts."""
    calls = {"n": 0}

    def crash(*_):
        calls["n"] += 1
        if calls["n"] == at_batch:
            raise KeyboardInterrupt

    handle = lm.model.base_model.register_forward_pre_hook(crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            capture(lm, probes, texts, out, batch_size=batch_size, progress=False)
    finally:
        handle.remove()


def test_resume_is_exact(tmp_path):
    lm = loaded()
    probes = [preset("resid"), preset("massive"), preset("top1")]
    ref = capture(lm, probes, prompts(9), tmp_path / "ref.h5", batch_size=2, progress=False)
    out = tmp_path / "int.h5"
    _interrupted_capture(lm, probes, prompts(9), out, at_batch=3)
    with CaptureFile(out) as f:
        assert (f.n_done, f.complete) == (4, False)
    capture(lm, probes, prompts(9), out, batch_size=2, progress=False)
    with h5py.File(ref) as a, h5py.File(out) as b:
        for probe in a["probes"]:
            for name in a["probes"][probe]:
                np.testing.assert_array_equal(
                    a["probes"][probe][name][()], b["probes"][probe][name][()]
                )
        assert list(b["progress"][()]) == [9, 1]


def test_resuming_a_file_this_process_still_reads_is_one_clear_error(tmp_path):
    """HDF5 will not open for writing a file the same process holds open read-only (a
    notebook's CaptureFile): the resume says so in one line, and works once it is closed."""
    lm = loaded()
    out = tmp_path / "int.h5"
    _interrupted_capture(lm, [preset("resid")], prompts(6), out, at_batch=2)
    with CaptureFile(out) as f:
        with pytest.raises(ScalelensError, match=r"open for reading in this process.*close it"):
            capture(lm, [preset("resid")], prompts(6), out, batch_size=2, progress=False)
        assert f.n_done == 2 and f.read("values", probe="resid").data.shape[0] == 2
    assert not out.with_name("int.h5.lock").exists()
    capture(lm, [preset("resid")], prompts(6), out, batch_size=2, progress=False)
    with CaptureFile(out) as f:
        assert f.complete and f.n_done == 6


def test_resume_refuses_other_spec_and_complete_file(tmp_path):
    lm = loaded()
    out = capture(lm, [preset("resid")], prompts(3), tmp_path / "c.h5", progress=False)
    with pytest.raises(ScalelensError, match=r"complete; pass --overwrite \(overwrite=True in Python\)"):
        capture(lm, [preset("resid")], prompts(3), out, progress=False)
    with pytest.raises(IncompatibleResumeError, match="probes"):
        capture(lm, [preset("massive")], prompts(3), out, progress=False)
    capture(lm, [preset("massive")], prompts(3), out, progress=False, overwrite=True)
    with CaptureFile(out) as f:
        assert f.probe_names == ["massive"]


def test_bad_probe_inputs(tmp_path):
    lm = loaded()
    with pytest.raises(ScalelensError, match="layer"):
        capture(lm, [preset("resid", layers=(7,))], prompts(2), tmp_path / "x.h5", progress=False)
    with pytest.raises(ScalelensError, match="head"):
        capture(lm, [ProbeSpec("a", "attn_pattern", heads=(9,))], prompts(2), tmp_path / "x.h5")
    with pytest.raises(ScalelensError, match=r"layer\(s\) \[1\] listed more than once"):
        capture(lm, [preset("resid", layers=(1, 0, 1))], prompts(2), tmp_path / "x.h5")
    with pytest.raises(ScalelensError, match="unknown probe"):
        preset("nope")
    with pytest.raises(ScalelensError, match="batch size"):
        capture(lm, [preset("resid")], prompts(2), tmp_path / "x.h5", batch_size=0)
    with pytest.raises(ScalelensError, match="tokens, more than"):
        capture(lm, [preset("resid")], prompts(2), tmp_path / "x.h5", max_length=3)
    assert not (tmp_path / "x.h5").exists()


def test_logit_predictions_and_segment_offset(tmp_path):
    from scalelens.probes.prompts import Prompt

    ps = [Prompt((("ctx", "w1 w2 w3 w4"), ("answer", "w5 w6"))),
          Prompt((("ctx", "w7 w8 w9"), ("answer", "w3")))]
    rows = Positions.parse("segment:answer@-1")
    probes = [ProbeSpec("pred", "logits", reduction="top1", positions=rows),
              ProbeSpec("t1", "attn_pattern", reduction="top1", positions=rows)]
    lm = loaded()
    out = capture(lm, probes, ps, tmp_path / "p.h5", progress=False)
    with CaptureFile(out) as f:
        qpos = f.read("query_pos", "pred").data
        token, prob = f.read("top1_token", "pred").data, f.read("top1_prob", "pred").data
        assert f.read("top1_key", "t1").axes == ("prompt", "layer", "head", "query")
        ids = f.read("tokens").data
    np.testing.assert_array_equal(qpos, [[3, 4], [2, -1]])
    for i in range(2):
        n = 6 if i == 0 else 4
        with torch.no_grad():
            logits = lm.model(torch.tensor(ids[i, :n], dtype=torch.long)[None]).logits[0]
        q = qpos[i][qpos[i] >= 0]
        np.testing.assert_array_equal(token[i, 0, : len(q)], logits[q].argmax(-1).numpy())
        np.testing.assert_allclose(prob[i, 0, : len(q)], logits[q].softmax(-1).max(-1).values.numpy(),
                                   rtol=1e-5)
    assert token[1, 0, 1] == -1 and prob[1, 0, 1] == 0  # a row past prompt 1's positions is blank


def test_analyses_of_a_layer_subset_report_model_layers(tmp_path):
    """massive / text dominance from a capture of layers (2, 0) name layers 2 and 0, with the
    numbers of those layers in a capture of every layer."""
    from scalelens.analyses.from_capture import (
        DOMINANCE_PROBE,
        MASSIVE_PROBE,
        dominance_from_capture,
        massive_from_capture,
    )
    from scalelens.probes.prompts import Prompt

    lm = loaded()
    ps = [Prompt((("doc", f"w{i} w{i + 1} w{i + 2} w{i + 3}"), ("q", f"w{i + 9} w{i + 4}"), ("answer", "w5")))
          for i in range(4)]
    rows = Positions.parse("segment:answer@-1")

    def run(name, layers):
        probes = [ProbeSpec(MASSIVE_PROBE, "resid_post", reduction="massive", layers=layers),
                  ProbeSpec(DOMINANCE_PROBE, "attn_pattern", positions=rows, dtype="float32", layers=layers)]
        out = capture(lm, probes, ps, tmp_path / name, batch_size=2, progress=False)
        with CaptureFile(out) as f:
            kw = {"abs_threshold": 0.0, "rel_threshold": 0.0, "ratio_threshold": 0.0}  # flag everything
            return massive_from_capture(f, **kw), dominance_from_capture(f, ("q",), ("doc",))

    m_all, d_all = run("all.h5", None)
    m_sub, d_sub = run("sub.h5", (2, 0))
    assert [r["layer"] for r in m_sub.per_layer] == [2, 0]
    assert m_sub.per_layer[0]["max_abs"] == pytest.approx(m_all.per_layer[2]["max_abs"], rel=1e-6)
    assert m_sub.per_layer[1]["max_abs"] == pytest.approx(m_all.per_layer[0]["max_abs"], rel=1e-6)
    assert (m_sub.ratio_layers, m_sub.ratio_first_layer, m_sub.first_layer) == ([0, 2], 0, 0)
    assert {e["layer"] for e in m_sub.massive} == {0, 2}
    assert [r["layer"] for r in d_sub.per_layer] == [2, 0]
    assert d_sub.per_layer[0]["mdi"] == pytest.approx(d_all.per_layer[2]["mdi"], rel=1e-6)
    assert d_sub.groups["all"]["layers"] == [2, 0]


def test_python_api_refuses_what_the_cli_refuses_before_writing(tmp_path):
    """max_length past the context (it died mid-run with an IndexError, leaving a file no rerun
    could finish) and a directory as out are refused before anything is written."""
    lm = loaded()
    with pytest.raises(ScalelensError, match="exceeds the model's context of 128"):
        capture(lm, [preset("resid")], prompts(2), tmp_path / "x.h5", max_length=1000)
    with pytest.raises(ScalelensError, match="is a directory"):
        capture(lm, [preset("resid")], prompts(2), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_one_string_is_one_prompt_and_non_text_is_refused(tmp_path):
    lm = loaded()
    out = capture(lm, [preset("resid")], "w1 w2 w3", tmp_path / "one.h5", progress=False)
    with CaptureFile(out) as f:
        assert f.n_done == 1 and f.datasets("resid")["values"][0][0] == 1
    with pytest.raises(ScalelensError, match="prompt index 1 is a NoneType"):
        capture(lm, [preset("resid")], ["w1 w2", None], tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_a_pad_token_past_the_embedding_does_not_break_batches(tmp_path):
    """A pad token added to the tokenizer without resizing the model (id == vocab size):
    padding positions get an id the embedding has, and batches equal one prompt at a time."""
    tok = word_tokenizer()
    tok.add_special_tokens({"pad_token": "[PAD2]"})
    assert tok.pad_token_id == tiny_model().config.vocab_size
    lm = load_model(tiny_model(), tokenizer=tok)
    texts = prompts(4)
    one = capture(lm, [preset("resid")], texts, tmp_path / "one.h5", batch_size=1, progress=False)
    four = capture(lm, [preset("resid")], texts, tmp_path / "four.h5", batch_size=4, progress=False)
    with h5py.File(one) as a, h5py.File(four) as b:
        np.testing.assert_allclose(a["probes/resid/values"][()], b["probes/resid/values"][()], atol=1e-3)


def test_gpt2_upcast_attention_is_tapped_without_changing_the_model(tmp_path):
    """GPT-2 with reorder_and_upcast_attn (Stanford CRFM's suites) runs its own upcast method
    only under an implementation named "eager": an attention probe beside resid may not
    switch it to the plain eager kernel (fp16 resid moved by ~1e-2 when it did)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=128, n_embd=32, n_layer=3, n_head=4, initializer_range=0.5,
                     reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").half().eval()
    lm = load_model(model, tokenizer=word_tokenizer())
    out = capture(lm, [preset("resid", dtype="float32"), preset("attn", dtype="float32")], prompts(3),
                  tmp_path / "g.h5", batch_size=1, progress=False)
    assert not any("_upcast_and_reordered_attn" in vars(m) for m in model.modules())
    with CaptureFile(out) as f:
        ids, lengths = f.read("tokens").data, f.read("lengths").data
        resid, attn = f.read("values", "resid").data, f.read("values", "attn").data
    for i, n in enumerate(lengths):
        with torch.no_grad():
            o = model(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_hidden_states=True,
                      output_attentions=True)
        for layer in range(2):  # the last layer's resid_post is stored before the final norm
            np.testing.assert_array_equal(resid[i, layer, :n], o.hidden_states[layer + 1][0].float().numpy())
            np.testing.assert_allclose(attn[i, layer, :, :n, :n], o.attentions[layer][0].float().numpy(),
                                       atol=2e-3)


def test_resume_refuses_other_weights_at_the_same_path(tmp_path):
    """A model re-saved with other weights at the same path looks like the same model by name
    and shape: its capture was reused (measure) or resumed with the old model's prompts in it."""
    from scalelens.cache.writer import WEIGHTS_ATTR

    path = tmp_path / "model"
    tiny_model(seed=0).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    out = capture(load_model(path), [preset("resid")], prompts(3), tmp_path / "c.h5", progress=False,
                  reuse_complete=True)
    capture(load_model(path), [preset("resid")], prompts(3), out, progress=False, reuse_complete=True)  # same
    tiny_model(seed=1).save_pretrained(path)
    with pytest.raises(IncompatibleResumeError, match=r"different model weights \(the model path now holds"):
        capture(load_model(path), [preset("resid")], prompts(3), out, progress=False, reuse_complete=True)
    with h5py.File(out, "a") as f:  # a file from before weights were fingerprinted: not checked
        del f.attrs[WEIGHTS_ATTR]
    capture(load_model(path), [preset("resid")], prompts(3), out, progress=False, reuse_complete=True)


def test_a_changed_capture_setting_is_named(tmp_path):
    lm = loaded()
    _interrupted_capture(lm, [preset("resid")], prompts(5), tmp_path / "c.h5", at_batch=2)
    with pytest.raises(IncompatibleResumeError, match=r"different capture setting \(backend\)"):
        capture(lm, [preset("resid")], prompts(5), tmp_path / "c.h5", backend="nnsight", progress=False)


def _probe_data(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {f"{p}/{k}": f["probes"][p][k][()] for p in f["probes"] for k in f["probes"][p]}


def _assert_same_capture(ref, out) -> None:
    """Probe data equal up to float rounding (batches of another size pad differently)."""
    want, got = _probe_data(ref), _probe_data(out)
    assert sorted(want) == sorted(got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    with h5py.File(ref) as a, h5py.File(out) as b:
        for name in ("tokens", "segments", "lengths", "progress"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


@pytest.mark.parametrize(("first", "then"), [(4, 1), (2, 3)])
def test_resume_with_another_batch_size(first, then, tmp_path, capsys):
    """A capture that ran out of memory resumes with a smaller --batch-size (or a larger one):
    batches no longer fall on the file's chunks, and the data equal an uninterrupted run's.
    Each prompt's batch size is recorded; inspect lists them."""
    from scalelens.cli import main

    lm = loaded()
    probes = [preset("resid"), preset("massive"), preset("top1")]
    ref = capture(lm, probes, prompts(9), tmp_path / "ref.h5", batch_size=first, progress=False)
    out = tmp_path / "int.h5"
    _interrupted_capture(lm, probes, prompts(9), out, at_batch=2, batch_size=first)
    with CaptureFile(out) as f:
        assert (f.n_done, f.complete) == (first, False)
    capture(lm, probes, prompts(9), out, batch_size=then, progress=False)
    _assert_same_capture(ref, out)
    with CaptureFile(out) as f:
        assert f.batch_sizes.tolist() == [first] * first + [then] * (9 - first)
        assert "batch_size" not in f.capture
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    listed = f"batch size {first} (prompts 0-{first - 1}), {then} (prompts {first}-8),"
    assert listed in capsys.readouterr().out
    capture(lm, probes, prompts(9), out, batch_size=5, progress=False, reuse_complete=True)  # reused as is


def test_a_file_of_an_older_schema_is_read_but_not_resumed(tmp_path, capsys):
    """scalelens up to commit d5a6072 wrote schema 1 (its version stayed 0.1.0 while what a
    file holds changed: Gemma 2 logits uncapped before f7f0f18, so a resumed file held capped
    and uncapped rows). Such a file, here as scalelens before 4fcda18 wrote it (the batch size
    in the ``capture`` attribute, no /batch_size), is read and inspected, but resuming or
    reusing it is one clear error that leaves it as it was; --overwrite redoes it."""
    import json

    from scalelens.cli import main

    lm = loaded()
    probes = [preset("resid"), preset("massive")]
    ref = capture(lm, probes, prompts(7), tmp_path / "ref.h5", batch_size=2, progress=False)
    out = tmp_path / "old.h5"
    _interrupted_capture(lm, probes, prompts(7), out, at_batch=3)
    with h5py.File(out, "a") as f:  # as the older scalelens wrote it
        f.attrs["schema_version"] = 1
        f.attrs["capture"] = json.dumps({**json.loads(f.attrs["capture"]), "batch_size": 2}, sort_keys=True)
        del f["batch_size"]
    with CaptureFile(out) as f:
        assert f.n_done == 4 and not f.complete and f.batch_sizes is None
        assert f.read("values", "resid").data.shape[0] == 4
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "batch size 2 (when created)," in capsys.readouterr().out
    before = out.read_bytes()
    for reuse in (False, True):
        with pytest.raises(ScalelensError, match="written by an older scalelens [(]schema version 1; "
                                                 "this one writes 2[)].*--overwrite"):
            capture(lm, probes, prompts(7), out, batch_size=2, progress=False, reuse_complete=reuse)
    assert out.read_bytes() == before
    capture(lm, probes, prompts(7), out, batch_size=2, progress=False, overwrite=True)
    _assert_same_capture(ref, out)


def _damage_batch_size(path, damage: str) -> None:
    with h5py.File(path, "a") as f:
        if damage == "no axes":
            del f["batch_size"].attrs["axes"]
            return
        del f["batch_size"]
        if damage == "group":
            f.create_group("batch_size")
        else:  # shorter than the prompts: its ranges would be silently wrong
            f.create_dataset("batch_size", data=np.array([2, 2], dtype=np.int32))
            f["batch_size"].attrs["axes"] = f["lengths"].attrs["axes"]


@pytest.mark.parametrize("damage", ["no axes", "group", "short"])
def test_inspect_a_file_whose_batch_size_record_is_damaged(damage, tmp_path, capsys):
    """/batch_size is informational: damaged, inspect says its batch size is unknown and still
    lists the probes (it stopped with 'corrupted; re-run with --overwrite' for probe data that are
    fine, or showed a short record's ranges as if they covered the file)."""
    from scalelens.cli import main
    from scalelens.errors import ScalelensError

    out = capture(loaded(), [preset("resid")], prompts(5), tmp_path / "c.h5", batch_size=2, progress=False)
    _damage_batch_size(out, damage)
    with CaptureFile(out) as f, pytest.raises(ScalelensError, match="batch_size"):
        f.batch_sizes  # noqa: B018 - the property raises
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "batch size unknown (/batch_size is damaged)," in shown and "probe resid:" in shown


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_per_head_probes_refuse_flash_and_flex_attention(impl, tmp_path):
    """transformers finds the flash kernel by the implementation's name (the tap's renamed one
    has none: every forward failed), and flex passes a BlockMask: both are refused up front."""
    lm = loaded()
    lm.model.config._attn_implementation = impl  # as a GPU load with attn_implementation=impl sets it
    needle = f"cannot tap {impl}; load the model with attn_implementation='sdpa'"
    with pytest.raises(ScalelensError, match=needle):
        capture(lm, [preset("attn")], prompts(2), tmp_path / "f.h5", progress=False)
    assert not (tmp_path / "f.h5").exists() and lm.model.config._attn_implementation == impl


def test_a_model_spread_over_devices_is_refused(tmp_path):
    """Batches, masks and the host staging live on one device (model.device): a model split by
    device_map failed with device mismatches mid-capture. (meta stands in for a second GPU.)"""
    lm = loaded()
    lm.model.gpt_neox.layers[1].to("meta")
    with pytest.raises(ScalelensError, match="parameters lie on cpu, meta; scalelens captures a model"):
        capture(lm, [preset("resid")], prompts(2), tmp_path / "d.h5", progress=False)
    assert not (tmp_path / "d.h5").exists()


def test_gpt2_padding_notice_is_not_printed(tmp_path):
    """Batches are right-padded without a mask on purpose; GPT-2's "pass an attention_mask"
    notice (printed for padded ids) would only mislead, so captures silence it, and only it."""
    import logging

    class Seen(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.notices = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.notices += "recommend passing in an `attention_mask`" in record.getMessage()

    model = tiny_model("gpt2")
    model.config.pad_token_id = word_tokenizer().pad_token_id
    lm = load_model(model, tokenizer=word_tokenizer())
    padded = torch.tensor([[1, 2, 3], [4, 5, model.config.pad_token_id]])
    log, seen = logging.getLogger("transformers.modeling_utils"), Seen()
    level = log.level
    log.addHandler(seen)
    log.setLevel(logging.WARNING)  # other libraries imported by earlier tests may raise it
    try:
        for expected, run in ((1, lambda: model(padded)),  # a user's own forward sees it
                              (0, lambda: capture(lm, [preset("resid")], prompts(4), tmp_path / "g.h5",
                                                  batch_size=4, progress=False)),
                              (1, lambda: model(padded))):  # the filter is gone after the capture
            seen.notices = 0
            logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]
            with torch.no_grad():
                run()
            assert seen.notices == expected
    finally:
        log.removeHandler(seen)
        log.setLevel(level)


def test_a_model_path_spelled_another_way_is_the_same_model(tmp_path, monkeypatch):
    """A capture made with a relative model path resumes (or is reused) from another working
    directory or with the absolute path: the file stores the path resolved, and a mismatch
    names the fields of the model that differ."""
    (tmp_path / "models").mkdir()
    tiny_model().save_pretrained(tmp_path / "models" / "m")
    word_tokenizer().save_pretrained(tmp_path / "models" / "m")
    monkeypatch.chdir(tmp_path / "models")
    lm = load_model("m")
    assert lm.info.source == str(tmp_path / "models" / "m")
    out = capture(lm, [preset("resid")], prompts(3), tmp_path / "c.h5", progress=False)
    monkeypatch.chdir(tmp_path)
    for spelling in ("models/m", "./models/../models/m", str(tmp_path / "models" / "m")):
        capture(load_model(spelling), [preset("resid")], prompts(3), out, progress=False, reuse_complete=True)
    tiny_model(seed=1).save_pretrained(tmp_path / "other")  # another model (a copy resumes:
    word_tokenizer().save_pretrained(tmp_path / "other")    # test_a_moved_model_resumes_its_capture)
    with pytest.raises(IncompatibleResumeError, match=r"different model \(name, source\)"):
        capture(load_model("other"), [preset("resid")], prompts(3), out, progress=False, reuse_complete=True)


def test_gemma2_logits_are_stored_softcapped_as_the_model_returns_them(tmp_path):
    """Gemma 2 caps its logits after the LM head; logits and predictions probes store what the
    model returns, not the raw head output (at real logit sizes: p 1.0 stored vs 0.23)."""
    model = tiny_model("gemma2")
    assert model.config.final_logit_softcapping == 30.0
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits of real-model size, where the cap bites
    lm = load_model(model, tokenizer=word_tokenizer())
    texts = prompts(3)
    out = capture(lm, [preset("predictions"), ProbeSpec("lg", "logits", positions=Positions.parse("last"),
                                                        dtype="float32")],
                  texts, tmp_path / "g.h5", batch_size=3, progress=False)
    with CaptureFile(out) as f:
        ids, lengths = f.read("tokens").data, f.read("lengths").data
        logits, probs = f.read("values", "lg").data, f.read("top1_prob", "predictions").data
    for i, n in enumerate(lengths):
        with torch.no_grad():
            want = model(torch.tensor(ids[i, :n], dtype=torch.long)[None]).logits[0, -1]
        assert float(want.abs().max()) < 30
        np.testing.assert_allclose(logits[i].reshape(-1), want.numpy(), atol=1e-4)
        np.testing.assert_allclose(probs[i].ravel()[0], float(torch.softmax(want, -1).max()), atol=1e-5)


def _spread_prompts() -> list[str]:
    """Prompts of 1 to 48 tokens, long and short mixed, so a batch pads most of its rows."""
    rng = np.random.default_rng(1)
    lengths = [1, 48, 3, 30, 2, 40, 7, 1, 15]
    return [" ".join(f"w{int(t)}" for t in rng.integers(0, 60, n)) for n in lengths]


def _every_kind_of_probe() -> list[ProbeSpec]:
    return [preset("resid", dtype="float32"), preset("attn"), preset("massive"), preset("top1"),
            preset("norms"), preset("predictions"), preset("q", dtype="float32"),
            ProbeSpec("logits", "logits", dtype="float32"),
            ProbeSpec("rows", "attn_pattern", positions=Positions.parse("0,-1")),
            ProbeSpec("top1_all", "attn_pattern", reduction="top1", positions=Positions.parse("all"))]


@pytest.mark.parametrize("arch", ARCHS)
def test_values_do_not_depend_on_batch_size_or_prompt_order(arch, tmp_path):
    """Batches of 1, 3 and 8, and the prompts shuffled: each prompt's stored data are the same
    (padding never leaks into a real position, a summary or a top-1 row). Measured: max |diff|
    1.2e-7 (gpt_neox, gpt2, llama) to 2.8e-6 (gemma2/3, logits up to ~15); integers equal."""
    lm = loaded(arch)
    texts = _spread_prompts()
    order = np.random.default_rng(0).permutation(len(texts))

    def run(name, prompts, bs):
        return _probe_data(capture(lm, _every_kind_of_probe(), prompts, tmp_path / name, batch_size=bs,
                                   progress=False))

    ref = run("one.h5", texts, 1)
    runs = {"bs3": run("three.h5", texts, 3), "bs8": run("eight.h5", texts, 8)}
    shuffled = run("shuffled.h5", [texts[i] for i in order], 4)
    runs["shuffled"] = {k: v[np.argsort(order)] for k, v in shuffled.items()}
    for label, got in runs.items():
        assert sorted(got) == sorted(ref)
        for k, want in ref.items():
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5, err_msg=f"{label} {k}")
            else:
                np.testing.assert_array_equal(got[k], want, err_msg=f"{label} {k}")


def test_grouped_query_q_and_k_give_the_models_own_attention(tmp_path):
    """Llama with 4 query heads over 2 key heads: the stored keys of query head h are its own
    group's (h // 2), so softmax(q k^T / sqrt(d_head)) under the causal mask is the model's
    eager attention for every head, not only for those a wrong key order happens to match."""
    out = capture(loaded("llama"), [preset("q", dtype="float32"), preset("k", dtype="float32")],
                  prompts(3), tmp_path / "qk.h5", batch_size=3, progress=False)
    with CaptureFile(out) as f:
        q, k = f.read("values", "q").data, f.read("values", "k").data
        ids, lengths = f.read("tokens").data, f.read("lengths").data
    assert q.shape[2] == k.shape[2] == 4
    ref = tiny_model("llama", "eager")
    for i, n in enumerate(lengths):
        with torch.no_grad():
            want = ref(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_attentions=True).attentions
        scores = torch.tensor(q[i, :, :, :n]) @ torch.tensor(k[i, :, :, :n]).transpose(-1, -2) / 8**0.5
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)
        got = scores.masked_fill(causal, float("-inf")).softmax(-1)
        torch.testing.assert_close(got, torch.stack([a[0] for a in want]), atol=1e-5, rtol=1e-4)


def test_attention_softcap_is_applied_as_the_model_does(tmp_path):
    """Gemma 2 caps attention scores (cap * tanh(s / cap)) before the softmax. With a cap of 1
    and weights large enough for scores past it, the recomputed probabilities still equal the
    model's own (a dropped or misapplied cap moves them by far more than the tolerance)."""
    from tiny_models import config
    from transformers import AutoModelForCausalLM

    def model():
        torch.manual_seed(0)
        cfg = config("gemma2")
        cfg.attn_logit_softcapping, cfg.initializer_range = 1.0, 0.5
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()

    lm = load_model(model(), tokenizer=word_tokenizer())
    out = capture(lm, [preset("attn")], prompts(3), tmp_path / "a.h5", batch_size=3, progress=False)
    with CaptureFile(out) as f:
        attn, ids, lengths = f.read("values", "attn").data, f.read("tokens").data, f.read("lengths").data
    ref = model()
    for i, n in enumerate(lengths):
        with torch.no_grad():
            want = ref(torch.tensor(ids[i, :n], dtype=torch.long)[None], output_attentions=True).attentions
        torch.testing.assert_close(torch.tensor(attn[i, :, :, :n, :n]), torch.stack([a[0] for a in want]),
                                   atol=1e-5, rtol=1e-4)


def test_attention_pattern_of_chosen_heads_at_every_position(tmp_path):
    """``heads`` on a full attention probe (every row): the chosen heads' patterns, in the order
    given, as in the all-heads probe; grouped-query Llama, so key heads are chosen with them."""
    specs = [ProbeSpec("some", "attn_pattern", heads=(3, 0), dtype="float32"),
             ProbeSpec("one", "attn_pattern", heads=(2,), dtype="float32"), preset("attn")]
    out = capture(loaded("llama"), specs, prompts(3), tmp_path / "h.h5", batch_size=3, progress=False)
    with CaptureFile(out) as f:
        some, one, full = (f.read("values", p).data for p in ("some", "one", "attn"))
    np.testing.assert_array_equal(some, full[:, :, [3, 0]])
    np.testing.assert_array_equal(one, full[:, :, [2]])


def test_segment_offsets_never_select_padding():
    """A positive offset that moves a final segment past the prompt's end drops that position
    (it would read padding); a negative one drops positions before the start."""
    from scalelens.probes.prompts import Prompt, select_positions, tokenize

    ps = [Prompt((("a", "w1"), ("b", "w2 w3"))), Prompt((("a", "w4 w5"), ("b", "w6 w7 w8 w9")))]
    tok = tokenize(ps, word_tokenizer())
    np.testing.assert_array_equal(select_positions(tok, Positions.parse("segment:b@1")),
                                  [[2, -1, -1], [3, 4, 5]])
    np.testing.assert_array_equal(select_positions(tok, Positions.parse("segment:a@-1")), [[-1], [0]])


def test_special_tokens_only_before_the_first_piece():
    """A tokenizer that adds BOS adds it once, before the first segment, not before every segment."""
    from tokenizers.processors import TemplateProcessing

    from scalelens.probes.prompts import Prompt, tokenize

    tokenizer = word_tokenizer()
    bos = TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 62)])
    tokenizer._tokenizer.post_processor = bos
    tok = tokenize([Prompt((("a", "w1 w2"), ("b", "w3")))], tokenizer)
    np.testing.assert_array_equal(tok.ids, [[62, 1, 2, 3]])
    np.testing.assert_array_equal(tok.segments, [[0, 0, 0, 1]])


def test_a_model_left_in_training_mode_is_captured_without_dropout(tmp_path):
    """Dropout 0.5 and the model in training mode: the capture runs it in eval mode (values equal
    the model's own eval hidden states) and gives it its training mode back."""
    from tiny_models import config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = config("gpt_neox")
    cfg.hidden_dropout = cfg.attention_dropout = 0.5
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    lm = load_model(model, tokenizer=word_tokenizer())
    model.train()  # e.g. a user training it between captures
    probe = preset("resid", layers=(0,), dtype="float32")
    out = capture(lm, probe, prompts(2), tmp_path / "d.h5", progress=False)
    assert model.training and all(m.training for m in model.modules())
    with CaptureFile(out) as f:
        resid, ids, lengths = f.read("values", "resid").data, f.read("tokens").data, f.read("lengths").data
    model.eval()
    for i, n in enumerate(lengths):
        with torch.no_grad():
            x = torch.tensor(ids[i, :n], dtype=torch.long)[None]
            want = model(x, output_hidden_states=True).hidden_states[1][0]
        torch.testing.assert_close(torch.tensor(resid[i, 0, :n]), want, atol=1e-5, rtol=1e-5)


def test_bfloat16_probes_are_stored_as_float32(tmp_path):
    """HDF5 has no bfloat16: such probes are stored as float32 (not float16, which would round
    a float32 model's values), equal to a float32 probe of the same point."""
    specs = [ProbeSpec("b", "resid_post", dtype="bfloat16"), ProbeSpec("f", "resid_post", dtype="float32")]
    out = capture(loaded(), specs, prompts(2), tmp_path / "b.h5", progress=False)
    with CaptureFile(out) as f:
        assert f.datasets("b")["values"][1] == "float32"
        np.testing.assert_array_equal(f.read("values", "b").data, f.read("values", "f").data)


def test_dominance_from_a_capture_honours_first_token_sink_false(tmp_path):
    """Without the sink option no key is a sink (segments are text, other or ignored), so the
    sink mass is 0 and the first document key counts in O; with it the sink takes mass."""
    from scalelens.analyses.from_capture import DOMINANCE_PROBE, dominance_from_capture
    from scalelens.probes.prompts import Prompt

    ps = [Prompt((("doc", f"w{i} w{i + 1} w{i + 2}"), ("q", f"w{i + 4} w{i + 5}"), ("answer", "w5")))
          for i in range(2)]
    spec = ProbeSpec(DOMINANCE_PROBE, "attn_pattern", positions=Positions.parse("segment:answer@-1"),
                     dtype="float32")
    out = capture(loaded(), [spec], ps, tmp_path / "d.h5", progress=False)
    with CaptureFile(out) as f:
        kept = dominance_from_capture(f, ("q",), ("doc",), first_token_sink=False)
        sunk = dominance_from_capture(f, ("q",), ("doc",))
    assert not kept.first_token_sink and all(row["a_sink"] == 0.0 for row in kept.per_layer)
    assert all(row["a_sink"] > 0.0 for row in sunk.per_layer)
    assert (kept.n_text, kept.n_other) == (sunk.n_text, sunk.n_other + 1)


def test_an_in_memory_model_in_training_mode_is_given_back_in_it(tmp_path):
    """attach()/capture() of a bare HF model went through load_model, which calls model.eval():
    a model being trained came back with dropout off for good."""
    model = tiny_model("gpt2").train()
    model.transformer.h[0].eval()  # a mixed state, given back as it was
    outs = [capture(model, ["resid"], prompts(3), tmp_path / f"{n}.h5", tokenizer=word_tokenizer(),
                    progress=False) for n in ("a", "b")]
    with CaptureFile(outs[0]) as a, CaptureFile(outs[1]) as b:  # dropout off while capturing
        np.testing.assert_array_equal(a.read("values", "resid").data, b.read("values", "resid").data)
    assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training


def test_a_second_attach_with_per_head_probes_is_one_clear_error(tmp_path):
    """Nested attach() calls both reading attention: the inner one raised a bare RuntimeError
    ("attention tap is already active"), not a ScalelensError naming the fix."""
    lm = loaded()
    ref = capture(lm, ["attn"], prompts(2), tmp_path / "ref.h5", progress=False)
    hooks = hook_count(lm.model)
    with attach(lm, ["attn"], tmp_path / "outer.h5", progress=False) as outer:
        with pytest.raises(ScalelensError, match="already being read from this model's attention"):
            with attach(lm, [preset("top1")], tmp_path / "inner.h5", progress=False):
                pass
        outer.feed(prompts(2))  # the outer capture is unharmed
    assert hook_count(lm.model) == hooks and lm.model.config._attn_implementation == "sdpa"
    assert not (tmp_path / "inner.h5").exists()
    with CaptureFile(ref) as a, CaptureFile(tmp_path / "outer.h5") as b:
        np.testing.assert_array_equal(a.read("values", "attn").data, b.read("values", "attn").data)


def test_analyses_refuse_a_probe_of_their_name_that_is_not_theirs(tmp_path):
    """A full probe named ``massive`` made massive_from_capture raise KeyError('top_values');
    retrieval probes over prompts without needles raised ValueError from list.index."""
    from scalelens.analyses.from_capture import (
        dominance_from_capture,
        massive_from_capture,
        retrieval_from_capture,
    )

    probes = [ProbeSpec(n, "resid_post", layers=0) for n in ("massive", "dominance_rows", "retrieval_pred")]
    probes.append(ProbeSpec("retrieval_top1", "attn_pattern", reduction="top1", positions="last"))
    out = capture(loaded(), probes, prompts(2), tmp_path / "c.h5", progress=False)
    with CaptureFile(out) as f:
        with pytest.raises(ScalelensError, match=r"probe 'massive' is not the one massive_activations "
                                                 r"reads \(it holds values, not top_values"):
            massive_from_capture(f)
        with pytest.raises(ScalelensError, match="probe 'dominance_rows' is not the one text_dominance"):
            dominance_from_capture(f, ("q",), ("doc",))
        with pytest.raises(ScalelensError, match="probe 'retrieval_pred' is not the one retrieval_heads"):
            retrieval_from_capture(f, tokenizer=word_tokenizer())
    probes[2] = ProbeSpec("retrieval_pred", "logits", reduction="top1", positions="last")
    out = capture(loaded(), probes, prompts(2), tmp_path / "d.h5", progress=False)
    with CaptureFile(out) as f, pytest.raises(ScalelensError, match="holds no needle tests"):
        retrieval_from_capture(f, tokenizer=word_tokenizer())


def test_feed_outside_the_with_block_is_one_clear_error(tmp_path):
    """feed() after the with block (or without one) raised a bare RuntimeError."""
    lm = loaded()
    with attach(lm, ["resid"], tmp_path / "a.h5", progress=False) as run:
        run.feed(prompts(1))
    with pytest.raises(ScalelensError, match="feed\\(\\) runs only inside `with attach"):
        run.feed(prompts(2))
    with pytest.raises(ScalelensError, match="feed\\(\\) runs only inside `with attach"):
        attach(lm, ["resid"], tmp_path / "b.h5", progress=False).feed(prompts(2))
    assert not (tmp_path / "b.h5").exists() and hook_count(lm.model) == 0
    with CaptureFile(tmp_path / "a.h5") as f:
        assert f.n_prompts == 1 and f.complete


def test_a_moved_model_resumes_its_capture(tmp_path):
    """A model directory moved or copied elsewhere (scratch to home, another machine) with the
    capture resumes it there: the same weights at another path are the same model. It was
    refused as 'different model (name, source)', so a measure or sweep task redid nothing
    but could not go on either. Other weights at the new path are still refused."""
    import shutil

    first, moved = tmp_path / "scratch" / "m", tmp_path / "home ü" / "model copy"
    tiny_model().save_pretrained(first)
    word_tokenizer().save_pretrained(first)
    probes = [preset("resid")]
    ref = capture(load_model(first), probes, prompts(5), tmp_path / "ref.h5", batch_size=2, progress=False)
    out = tmp_path / "c.h5"
    _interrupted_capture(load_model(first), probes, prompts(5), out, at_batch=2)
    shutil.copytree(first, moved)
    shutil.rmtree(tmp_path / "scratch")
    capture(load_model(moved), probes, prompts(5), out, batch_size=2, progress=False)
    with CaptureFile(out) as f, CaptureFile(ref) as r:
        assert f.complete and f.n_done == 5
        np.testing.assert_array_equal(f.read("values", "resid").data, r.read("values", "resid").data)
    tiny_model(seed=1).save_pretrained(moved)
    with pytest.raises(IncompatibleResumeError, match=r"different model \(name, source\)"):
        capture(load_model(moved), probes, prompts(5), out, progress=False, reuse_complete=True)


def _resume_mismatch(tmp_path, old: dict, new: dict, weights: tuple[str, str]) -> str | None:
    """What ``FileIdentity(new, weights[1])`` names as differing from a file of ``old``, ``weights[0]``."""
    import json

    from scalelens.cache.writer import WEIGHTS_ATTR, FileIdentity

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.attrs["model"] = json.dumps(old)
        f.attrs["probes"], f.attrs["prompts_sha256"] = "p", "s"
        f.attrs[WEIGHTS_ATTR] = weights[0]
        return FileIdentity(new, "p", "s", {}, weights[1]).mismatch(f.attrs)


_LOCAL = {"source_kind": "local", "source": "/scratch/m", "name": "m", "dtype": "float32"}


@pytest.mark.parametrize("old, new, weights, said", [
    ({}, {"source": "/home/m2", "name": "m2"}, ("w1", "w1"), None),
    ({}, {"source": "/home/m2", "name": "m2", "dtype": "bfloat16"}, ("w1", "w1"),
     "model (dtype, name, source)"),
    ({}, {"source": "/home/m2", "name": "m2"}, ("w1", "w2"), "model (name, source)"),
    ({}, {"source": "/home/m2", "name": "m2"}, ("", ""), "model (name, source)"),
    ({"source_kind": "hub", "source": "org/m"}, {"source_kind": "hub", "source": "org/m2", "name": "m2"},
     ("w1", "w1"), "model (name, source)"),
], ids=["moved", "other-dtype", "other-weights", "no-fingerprint", "hub"])
def test_only_a_local_model_with_the_same_known_weights_at_another_path_is_moved(old, new, weights, said,
                                                                                  tmp_path):
    """A capture resumes with its model at another path only where nothing but the path (and the
    name it gives) differs, the model is on disk, and both weights fingerprints are known and equal."""
    assert _resume_mismatch(tmp_path, {**_LOCAL, **old}, {**_LOCAL, **new}, weights) == said
