"""CaptureFile.read(prompts=...): reads only the chosen prompts, as numpy indexing would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import prompts, tiny_model, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.capture import capture
from scalelens.errors import ScalelensError
from scalelens.models.load import load_model
from scalelens.probes.spec import preset

N = 7


@pytest.fixture(scope="module")
def capture_path(tmp_path_factory):
    lm = load_model(tiny_model(), tokenizer=word_tokenizer())
    out = tmp_path_factory.mktemp("select") / "c.h5"
    return capture(lm, [preset("resid"), preset("massive")], prompts(N), out, batch_size=3, progress=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-N, N - 1), max_size=9))
def test_a_list_of_prompts_reads_as_numpy_fancy_indexing(capture_path, idx):
    with CaptureFile(capture_path) as f:
        full = f.read("values", probe="resid")
        part = f.read("values", probe="resid", prompts=idx)
    assert part.axes == full.axes
    np.testing.assert_array_equal(part.data, full.data[np.asarray(idx, dtype=int)])


def test_an_index_drops_the_prompt_axis_and_a_slice_keeps_it(capture_path):
    with CaptureFile(capture_path) as f:
        full = f.read("values", probe="resid")
        one = f.read("values", probe="resid", prompts=-1)
        every_other = f.read("values", probe="resid", prompts=slice(1, None, 2))
        tokens = f.read("tokens", prompts=[4, 0])
        assert one.axes == full.axes[1:]
        np.testing.assert_array_equal(one.data, full.data[-1])
        np.testing.assert_array_equal(every_other.data, full.data[1::2])
        np.testing.assert_array_equal(tokens.data, f.read("tokens").data[[4, 0]])
        with pytest.raises(ScalelensError, match=f"prompt {N} is out of range; {N} prompts are readable"):
            f.read("values", probe="resid", prompts=[0, N])
        with pytest.raises(ScalelensError, match="prompts must be an index, a slice or a list"):
            f.read("values", probe="resid", prompts=[0.5])


def _partial_copy(capture_path, tmp_path, n_done: int):
    """A copy of the capture whose /progress says only ``n_done`` prompts are finished."""
    import shutil

    import h5py

    partial = tmp_path / "partial.h5"
    shutil.copy(capture_path, partial)
    with h5py.File(partial, "r+") as f:
        f["progress"][...] = [n_done, 0]
    return partial


def test_a_prompt_not_yet_finished_is_out_of_range(capture_path, tmp_path):
    partial = _partial_copy(capture_path, tmp_path, 3)
    with CaptureFile(partial) as f:
        assert f.read("values", probe="resid", prompts=-1).data.shape == f.read(
            "values", probe="resid", prompts=2).data.shape
        np.testing.assert_array_equal(f.read("values", probe="resid", prompts=-1).data,
                                      f.read("values", probe="resid").data[2])
        with pytest.raises(ScalelensError, match="prompt 3 is out of range; 3 prompts are readable"):
            f.read("values", probe="resid", prompts=3)
        assert f.read("values", probe="resid", prompts=[5], done_only=False).data.shape[0] == 1


def test_a_missing_name_lists_what_the_file_has(capture_path):
    with CaptureFile(capture_path) as f:
        with pytest.raises(ScalelensError, match="no dataset probes/resid/valuez; probe resid has: values"):
            f.read("valuez", probe="resid")
        with pytest.raises(ScalelensError, match="no dataset probes/attn/values; its probes: massive, resid"):
            f.read("values", probe="attn")
        with pytest.raises(ScalelensError, match=r"no dataset values; .*its probes: .*\(pass probe=NAME"):
            f.read("values")
        # a misspelt root dataset: the root ones are listed, not only the probes
        root = r"no dataset lenghts; its datasets: batch_size, lengths, progress, segments, tokens; its"
        with pytest.raises(ScalelensError, match=root):
            f.read("lenghts")
        with pytest.raises(ScalelensError, match="progress has no prompt axis"):
            f.read("progress", prompts=0)


def test_numpy_indices_read_as_python_ones_and_bad_selections_are_one_line(capture_path):
    """A numpy integer (as np.argmax returns) or a 0-d array is one index, as in numpy: the
    prompt axis is dropped. A float, a zero slice step or float slice bounds are one clear
    error, not a TypeError or ValueError from deep inside."""
    with CaptureFile(capture_path) as f:
        full = f.read("values", probe="resid")
        for index in (np.int64(2), np.int32(-1), np.array(2), np.uint8(3)):
            one = f.read("values", probe="resid", prompts=index)
            assert one.axes == full.axes[1:]
            np.testing.assert_array_equal(one.data, full.data[index])
        for bad in (1.0, slice(0, 2.5), np.float64(1)):
            with pytest.raises(ScalelensError, match="prompts must be an index, a slice or a list"):
                f.read("values", probe="resid", prompts=bad)
        with pytest.raises(ScalelensError, match="slice step cannot be zero"):
            f.read("values", probe="resid", prompts=slice(None, None, 0))


def test_repr_is_one_line_with_model_probes_and_progress(capture_path, tmp_path):
    with CaptureFile(capture_path) as f:
        assert repr(f) == (f"CaptureFile({str(capture_path)!r}, model=GPTNeoXForCausalLM, "
                           f"probes=['massive', 'resid'], {N} prompts, complete)")
    assert repr(f) == f"CaptureFile({str(capture_path)!r}, closed)"
    partial = _partial_copy(capture_path, tmp_path, 3)
    with CaptureFile(partial) as f:
        assert repr(f).endswith(f"{N} prompts, 3/{N} prompts done)")


def test_lazy_reads_slices_of_finished_prompts_as_read_does(capture_path, tmp_path):
    """CaptureFile.lazy: the shape of the finished prompts; x[a:b, ...] equals read()'s rows."""
    partial = _partial_copy(capture_path, tmp_path, 5)
    with CaptureFile(partial) as f:
        full = f.read("values", probe="resid")
        lazy = f.lazy("values", probe="resid")
        assert (lazy.shape, lazy.ndim, lazy.axes) == (full.data.shape, 4, full.axes)
        assert lazy.dtype == full.data.dtype
        assert lazy.shape[0] == 5
        np.testing.assert_array_equal(lazy[1:4, 0], full.data[1:4, 0])
        np.testing.assert_array_equal(lazy[3:99], full.data[3:5])  # never past the finished prompts
        assert lazy[4:2].shape == (0, *full.data.shape[1:])
        with pytest.raises(TypeError, match="slice"):
            lazy[0]
        with pytest.raises(ScalelensError, match="no prompt axis"):
            f.lazy("progress")


def test_nonfinite_counts_a_nan_top_value_at_position_0_but_not_the_padding_tail(capture_path, tmp_path):
    """The massive summary's NaN tail (top_pos -1) is padding; a NaN where top_pos is a real
    position, position 0 included, is a fault and is reported with its prompt and layer."""
    import shutil

    import h5py

    path = tmp_path / "nan.h5"
    shutil.copy(capture_path, path)
    with h5py.File(path, "r+") as f:
        m = f["probes/massive"]
        m["top_pos"][2, 1, 0], m["top_values"][2, 1, 0] = 0, np.nan
        m["top_pos"][4, 0, 1], m["top_values"][4, 0, 1] = -1, np.nan
    with CaptureFile(path) as f:
        found = f.nonfinite()
    assert [(h.probe, h.dataset, h.count, h.prompts, h.layers) for h in found] == [
        ("massive", "top_values", 1, (2,), (1,))]


def test_nonfinite_takes_one_probe_name_alone(capture_path, tmp_path):
    """``nonfinite("resid")`` scanned the probes named r, e, s, i, d: none, so [] despite a NaN."""
    import shutil

    import h5py

    damaged = tmp_path / "nan.h5"
    shutil.copy(capture_path, damaged)
    with h5py.File(damaged, "r+") as h:
        values = h["probes/resid/values"]
        row = values[2]
        row[1, 0, 0] = np.nan
        values[2] = row
    with CaptureFile(damaged) as f:
        alone, listed = f.nonfinite("resid"), f.nonfinite(["resid"])
    assert [(n.probe, n.count, n.prompts, n.layers) for n in alone] == [("resid", 1, (2,), (1,))]
    assert alone == listed
