"""Hypothesis properties of the HDF5 cache: round trip and resume at any batch boundary.

The round trip covers every shape, dtype and axis-name combination the schema allows
(first axis ``prompt``, later axes from the axis vocabulary); values include NaN and
+-inf, compared bit for bit. Resume: a writer that dies (``os._exit`` in a forked
child, no close, no flush of HDF5 state beyond what ``write`` does) after any number of
batches leaves a file that a new writer continues to the same bytes as one pass.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scalelens.axes import Axis
from scalelens.cache import schema
from scalelens.cache.reader import CaptureFile
from scalelens.cache.writer import CaptureWriter, FileIdentity
from scalelens.errors import IncompatibleResumeError, ScalelensError
from scalelens.probes.prompts import TokenizedPrompts
from scalelens.probes.reduce import DatasetSpec

DTYPES = ("float16", "float32", "float64", "int16", "int32", "int64", "uint8")
LATER_AXES = [a for a in Axis if a is not Axis.PROMPT]
NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,10}", fullmatch=True)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def layouts(draw):
    """Prompt count, batch rows, tokens and a probe -> datasets layout with data."""
    n = draw(st.integers(1, 7))
    seq = draw(st.integers(1, 6))
    lengths = np.array(draw(st.lists(st.integers(1, seq), min_size=n, max_size=n)), dtype=np.int32)
    labels = tuple(draw(st.lists(NAME, min_size=1, max_size=3, unique=True)))
    ids = np.full((n, seq), -1, np.int32)
    segs = np.full((n, seq), -1, np.int16)
    for i, m in enumerate(lengths):
        ids[i, :m] = draw(st.lists(st.integers(0, 2**31 - 1), min_size=int(m), max_size=int(m)))
        segs[i, :m] = draw(st.lists(st.integers(0, len(labels) - 1), min_size=int(m), max_size=int(m)))
    tokens = TokenizedPrompts(ids, segs, lengths, labels)
    layout: dict[str, list[DatasetSpec]] = {}
    data: dict[str, dict[str, np.ndarray]] = {}
    for probe in draw(st.lists(NAME, min_size=1, max_size=3, unique=True)):
        layout[probe], data[probe] = [], {}
        for name in draw(st.lists(NAME, min_size=1, max_size=3, unique=True)):
            axes = draw(st.lists(st.sampled_from(LATER_AXES), max_size=3, unique=True))
            tail = tuple(draw(st.lists(st.integers(1, 4), min_size=len(axes), max_size=len(axes))))
            dtype = draw(st.sampled_from(DTYPES))
            shape = (n, *tail)
            layout[probe].append(DatasetSpec(name, shape, dtype, (Axis.PROMPT, *axes)))
            data[probe][name] = draw(hnp.arrays(np.dtype(dtype), shape))
    batch = draw(st.integers(1, n))
    return n, batch, tokens, layout, data


def identity(tokens: TokenizedPrompts, batch: int) -> FileIdentity:
    return FileIdentity({"name": "synthetic", "n_layers": 1}, '[{"name": "p"}]', tokens.fingerprint(),
                        {"batch_size": batch, "n_prompts": len(tokens.lengths)})


def write_batches(w: CaptureWriter, data, batch: int, start: int, stop: int) -> None:
    for s in range(start, stop, batch):
        e = min(stop, s + batch)
        w.write(s, {p: {k: v[s:e] for k, v in ds.items()} for p, ds in data.items()})


def assert_bitwise(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@SETTINGS
@given(case=layouts())
def test_round_trip_any_layout(case, tmp_path_factory):
    n, batch, tokens, layout, data = case
    path = tmp_path_factory.mktemp("rt") / "x.h5"
    w = CaptureWriter.open(path, identity(tokens, batch), tokens, layout, batch)
    write_batches(w, data, batch, 0, n)
    w.finish()
    with CaptureFile(path) as f:
        assert (f.n_done, f.complete, f.n_prompts) == (n, True, n)
        assert f.segment_labels == list(tokens.labels)
        assert sorted(f.probe_names) == sorted(layout)
        for name, arr in (("tokens", tokens.ids), ("segments", tokens.segments), ("lengths", tokens.lengths)):
            assert_bitwise(f.read(name).data, arr)
        for probe, specs in layout.items():
            meta = f.datasets(probe)
            for spec in specs:
                got = f.read(spec.name, probe)
                assert got.axes == tuple(str(a) for a in spec.axes)
                assert meta[spec.name] == (spec.shape, spec.dtype, got.axes)
                assert_bitwise(got.data, data[probe][spec.name])


def _die_after(path: str, case, k_batches: int) -> None:
    """Child: open (or resume) the file, write ``k_batches`` batches, then die without closing."""
    n, batch, tokens, layout, data = case
    w = CaptureWriter.open(path, identity(tokens, batch), tokens, layout, batch)
    start = w.n_done
    write_batches(w, data, batch, start, min(n, start + k_batches * batch))
    os._exit(0)


@SETTINGS
@given(case=layouts(), cut=st.integers(0, 7), seed=st.integers(0, 2**16))
def test_resume_at_any_batch_boundary(case, cut, seed, tmp_path_factory):
    n, batch, tokens, layout, data = case
    n_batches = -(-n // batch)
    cut = cut % (n_batches + 1)  # 0 .. all batches written before the writer dies
    d = tmp_path_factory.mktemp("resume")
    ref = d / "ref.h5"
    w = CaptureWriter.open(ref, identity(tokens, batch), tokens, layout, batch)
    write_batches(w, data, batch, 0, n)
    w.finish()

    out = d / "int.h5"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_die_after, args=(str(out), case, cut))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    if cut == 0:  # died before its first batch: nothing at out, only the temporary file
        assert not out.exists() and out.with_name("int.h5.creating").exists()
    else:
        with CaptureFile(out) as f:  # readable after the writer died, progress at the boundary
            assert (f.n_done, f.complete) == (min(n, cut * batch), False)
    w = CaptureWriter.open(out, identity(tokens, batch), tokens, layout, batch)
    assert w.n_done == min(n, cut * batch)
    write_batches(w, data, batch, w.n_done, n)
    w.finish()
    _assert_same_probe_bytes(ref, out, layout, n)
    assert not out.with_name("int.h5.creating").exists()


def _assert_same_probe_bytes(ref, out, layout, n: int) -> None:
    """Every probe dataset of ``out`` equals ``ref``'s bit for bit, and ``out`` is complete."""
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        for probe, specs in layout.items():
            for spec in specs:
                where = f"{schema.PROBES}/{probe}/{spec.name}"
                assert_bitwise(a[where][()], b[where][()])
        assert list(b[schema.PROGRESS][()]) == [n, 1]


@SETTINGS
@given(case=layouts(), cut=st.integers(0, 7), other=st.integers(1, 7))
def test_resume_with_another_batch_size_writes_the_same_bytes(case, cut, other, tmp_path_factory):
    """A file resumes with any batch size (its chunks were sized for the first one, so the
    new batches straddle them) and holds the same bytes as one pass; /batch_size says which
    batch size wrote each prompt."""
    n, batch, tokens, layout, data = case
    done = min(n, (1 + cut % -(-n // batch)) * batch)  # the first run wrote 1 .. all of its batches
    d = tmp_path_factory.mktemp("rebatch")
    ref = d / "ref.h5"
    w = CaptureWriter.open(ref, identity(tokens, batch), tokens, layout, batch)
    write_batches(w, data, batch, 0, n)
    w.finish()
    out = d / "int.h5"
    w = CaptureWriter.open(out, identity(tokens, batch), tokens, layout, batch)
    write_batches(w, data, batch, 0, done)
    w.close()
    w = CaptureWriter.open(out, identity(tokens, other), tokens, layout, other)
    assert w.n_done == done
    write_batches(w, data, other, done, n)
    w.finish()
    _assert_same_probe_bytes(ref, out, layout, n)
    with CaptureFile(out) as f:
        assert f.batch_sizes.tolist() == [batch] * done + [other] * (n - done)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layouts(), field=st.sampled_from(["model", "probes", "prompts", "capture"]))
def test_resume_refuses_any_identity_change_and_leaves_file_alone(case, field, tmp_path_factory):
    n, batch, tokens, layout, data = case
    path = tmp_path_factory.mktemp("id") / "x.h5"
    w = CaptureWriter.open(path, identity(tokens, batch), tokens, layout, batch)
    write_batches(w, data, batch, 0, min(n, batch))
    w.close()
    before = path.read_bytes()
    good = identity(tokens, batch)
    other = FileIdentity(
        {**good.model, "name": "another"} if field == "model" else good.model,
        '[{"name": "q"}]' if field == "probes" else good.probes,
        "0" * 64 if field == "prompts" else good.prompts_sha256,
        {**good.capture, "backend": "another"} if field == "capture" else good.capture,
    )
    with pytest.raises(IncompatibleResumeError, match="different"):
        CaptureWriter.open(path, other, tokens, layout, batch)
    assert path.read_bytes() == before


def _empty_finished_file(tmp_path) -> Path:
    """A finished capture of 4 prompts with one (4, 2, 3) float32 dataset, nothing written."""
    n, batch = 4, 2
    tokens = TokenizedPrompts(np.zeros((n, 3), np.int32), np.zeros((n, 3), np.int16),
                              np.full(n, 3, np.int32), ("text",))
    layout = {"p": [DatasetSpec("values", (n, 2, 3), "float32", (Axis.PROMPT, Axis.LAYER, Axis.SEQ))]}
    path = tmp_path / "t.h5"
    CaptureWriter.open(path, identity(tokens, batch), tokens, layout, batch).finish()
    return path


@pytest.mark.parametrize("keep", [100, 2000, -8])
def test_truncated_file_is_one_clear_error(tmp_path, keep):
    path = _empty_finished_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(ScalelensError, match="truncated or corrupted") as e:
        CaptureFile(path)
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)


def test_reader_misuse_says_what_is_wrong_not_corrupted(tmp_path):
    """A group read as a dataset, or a closed file, is named as such: never 'corrupted, re-run
    with --overwrite' (advice that would destroy a good file)."""
    path = _empty_finished_file(tmp_path)
    f = CaptureFile(path)
    with pytest.raises(ScalelensError, match=r"probes/p is a group, not a dataset \(it holds: values\)"):
        f.read("probes/p")
    with pytest.raises(ScalelensError, match="/ is a group"):
        f.read("/")
    assert f.read("values", "p", done_only=False).data.shape == (4, 2, 3)
    f.close()
    for access in (lambda: f.read("tokens"), lambda: f.probe_names, lambda: f.model, f.refresh):
        with pytest.raises(ScalelensError, match="was closed; open it again") as e:
            access()
        assert "overwrite" not in str(e.value)


def test_bad_probe_names_are_refused_before_any_file_exists(tmp_path):
    from scalelens.probes.spec import ProbeSpec

    for name in (".", "..", "a/b", "", " x", "x\ty"):
        with pytest.raises(ScalelensError, match="bad probe name"):
            ProbeSpec(name, "resid_post")
    assert list(Path(tmp_path).iterdir()) == []


# ----------------------------------------------------------------------------------------
# the same property through a real capture: any prompt count, batch size and crash point
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    from tiny_models import tiny_model, word_tokenizer

    from scalelens.models.load import load_model

    return load_model(tiny_model(), tokenizer=word_tokenizer())


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n=st.integers(1, 9), batch=st.integers(1, 4), crash_at=st.integers(1, 9), data=st.data())
def test_capture_resumes_at_any_batch_boundary(tiny_lm, n, batch, crash_at, data, tmp_path_factory):
    from tiny_models import prompts

    from scalelens.capture import capture
    from scalelens.probes.spec import preset

    probes = [preset(p) for p in data.draw(
        st.lists(st.sampled_from(["resid", "attn", "massive", "top1", "norms", "predictions"]),
                 min_size=1, max_size=3, unique=True))]
    texts = prompts(n)
    d = tmp_path_factory.mktemp("cap")
    ref = capture(tiny_lm, probes, texts, d / "ref.h5", batch_size=batch, progress=False)
    out = d / "int.h5"
    calls = {"n": 0}
    n_batches = -(-n // batch)

    def crash(*_):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt

    handle = tiny_lm.model.base_model.register_forward_pre_hook(crash)
    try:
        if crash_at <= n_batches:
            with pytest.raises(KeyboardInterrupt):
                capture(tiny_lm, probes, texts, out, batch_size=batch, progress=False)
        else:
            capture(tiny_lm, probes, texts, out, batch_size=batch, progress=False)
    finally:
        handle.remove()
    if crash_at == 1:  # stopped before its first batch: nothing left behind to resume
        assert not out.exists() and not out.with_name("int.h5.creating").exists()
        done, complete = 0, False
    else:
        with CaptureFile(out) as f:
            done, complete = f.n_done, f.complete
    assert done % batch == 0 or done == n  # a batch boundary: never half a batch
    assert complete == (crash_at > n_batches)
    if not complete:
        assert done <= (crash_at - 1) * batch
        capture(tiny_lm, probes, texts, out, batch_size=batch, progress=False)
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert_bitwise(a[name][()], b[name][()])

        a.visititems(visit)
        assert list(b[schema.PROGRESS][()]) == [n, 1]
