from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from net import refused_endpoint, waiting_connections
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig

from scalelens.errors import ScalelensError
from scalelens.models import LoadedModel, ModelInfo, load_model
from scalelens.models.hub import cached_revisions
from scalelens.models.hub_cache import hub_cache_dir
from scalelens.models.suite import read_manifest
from scalelens.models.testing import save_tiny_model, write_gpt2_gguf, write_hub_cache, write_llama_gguf
from scalelens.models.tokenizer import train_tokenizer

REPO = "EleutherAI/pythia-160m"


@pytest.fixture(scope="module")
def manifest(micro_suite):
    return read_manifest(micro_suite)


@pytest.fixture(scope="module")
def suite_tokenizer(micro_suite):
    return AutoTokenizer.from_pretrained(str(micro_suite / "tokenizer"))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, manifest):
    """Three revisions of the smallest micro size laid out as the HF hub cache."""
    size = manifest.sizes[0]
    cache = tmp_path_factory.mktemp("hub")
    revisions = {f"step{s}": manifest.checkpoint_dir(size, s) for s in manifest.steps[-3:]}
    revisions["main"] = manifest.checkpoint_dir(size, manifest.steps[-1])
    write_hub_cache(cache, REPO, revisions)
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _ids(tok, text="the code of Bako is 4821 .\n"):
    return tok(text, return_tensors="pt").input_ids


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- hub layout ------------------------------------------------------------


def test_hub_revision_loads_that_snapshot(hub_cache, manifest, offline):
    step = manifest.steps[-2]
    lm = load_model(REPO, revision=f"step{step}", cache_dir=hub_cache)
    expected = AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(manifest.sizes[0], step))
    assert isinstance(lm, LoadedModel) and not lm.model.training
    assert _same_weights(lm.model, expected)
    assert lm.info.source_kind == "hub" and lm.info.source == REPO
    assert (lm.info.revision, lm.info.step, lm.info.name) == (f"step{step}", step, "pythia-160m")


def test_checkpoint_sugar_equals_revision(hub_cache, manifest, offline):
    step = manifest.steps[-3]
    a = load_model(REPO, checkpoint=step, cache_dir=hub_cache)
    b = load_model(REPO, revision=f"step{step}", cache_dir=hub_cache)
    assert a.info == b.info and _same_weights(a.model, b.model)
    other = load_model(REPO, checkpoint=manifest.steps[-1], cache_dir=hub_cache)
    assert not _same_weights(a.model, other.model)


def test_hub_default_revision_is_main(hub_cache, offline):
    lm = load_model(REPO, cache_dir=hub_cache)
    assert lm.info.revision == "main" and lm.info.step is None


def test_an_uncached_pythia_revision_is_not_called_unknown(hub_cache, manifest, offline):
    """step3000 is a Pythia checkpoint, just not downloaded: say so, where the cache is, what it
    holds and how to fetch it. Only a revision Pythia lacks is unknown."""
    with pytest.raises(ScalelensError) as err:
        load_model(REPO, checkpoint=3000, cache_dir=hub_cache)
    message = str(err.value)
    assert type(err.value) is ScalelensError and "\n" not in message and "unknown" not in message
    assert message.startswith(f"{REPO}@step3000 is not in the local hub cache {hub_cache} (cached: ")
    assert f"step{manifest.steps[-1]}" in message and "main" in message
    assert f"hf download {REPO} --revision step3000 --cache-dir {hub_cache}" in message
    with pytest.raises(ScalelensError, match=r"unknown revision 'step3' for .*available: step0, step1, "):
        load_model(REPO, checkpoint=3, cache_dir=hub_cache)


def test_hf_hub_cache_with_a_tilde_is_the_cache_huggingface_hub_uses(hub_cache, tmp_path, monkeypatch,
                                                                    offline):
    """HF_HUB_CACHE='~/hub' (unexpanded: quoted, or from an env file) is ~/hub to huggingface_hub; a
    cached revision must then load offline, not be called missing from a folder named '~'."""
    shutil.copytree(hub_cache, tmp_path / "hub", symlinks=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub")
    assert hub_cache_dir(None) == tmp_path / "hub"
    assert cached_revisions(REPO, None) == cached_revisions(REPO, hub_cache)


def _damaged_copy(hub_cache: Path, tmp_path: Path, revision: str, damage: str) -> Path:
    """A copy of the hub cache with one revision's snapshot damaged as a cut-off download leaves it."""
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache, cache, symlinks=True)
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / (repo / "refs" / revision).read_text()
    if damage == "weights":
        (snapshot / "model.safetensors").unlink()
    elif damage == "blob":  # the link is there, the blob it points to is not
        (snapshot / "model.safetensors").resolve().unlink()
    elif damage == "empty":
        shutil.rmtree(snapshot)
        snapshot.mkdir()
    elif damage == "no snapshot":
        shutil.rmtree(snapshot)
    return cache


@pytest.mark.parametrize(
    ("damage", "missing"),
    [
        ("weights", "weights (model.safetensors or pytorch_model.bin)"),
        ("blob", "weights (model.safetensors or pytorch_model.bin)"),
        ("empty", "config.json, weights (model.safetensors or pytorch_model.bin), tokenizer files"),
        ("no snapshot", "config.json, weights (model.safetensors or pytorch_model.bin), tokenizer files"),
    ],
)
def test_a_partly_cached_revision_offline_names_what_is_missing(hub_cache, manifest, tmp_path, offline,
                                                                damage, missing):
    """One line naming the missing files and the download command; not a TransientError (sweeps
    retry those), since offline nothing changes between tries."""
    revision = f"step{manifest.steps[-2]}"
    cache = _damaged_copy(hub_cache, tmp_path, revision, damage)
    with pytest.raises(ScalelensError) as err:
        load_model(REPO, revision=revision, cache_dir=cache)
    assert type(err.value) is ScalelensError and "\n" not in str(err.value)
    assert str(err.value) == (
        f"{REPO}@{revision} is only partly in the local hub cache {cache} (missing: {missing}) and "
        f"HF_HUB_OFFLINE is set; download it where the hub can be reached: "
        f"hf download {REPO} --revision {revision} --cache-dir {cache}"
    )
    assert load_model(REPO, checkpoint=manifest.steps[-1], cache_dir=cache).info.revision  # others load


def test_a_missing_shard_is_named(manifest, tmp_path, offline):
    size, step = manifest.sizes[0], manifest.steps[-1]
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(size, step)).save_pretrained(
        sharded, max_shard_size="20KB")
    for f in manifest.checkpoint_dir(size, step).glob("tokenizer*"):
        shutil.copy(f, sharded / f.name)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    repo = write_hub_cache(tmp_path / "hub", REPO, {"main": sharded})
    (repo / "snapshots" / (repo / "refs" / "main").read_text() / shards[1]).unlink()
    gap = rf"only partly in the local hub cache .*\(missing: {shards[1]}\) and"
    with pytest.raises(ScalelensError, match=gap):
        load_model(REPO, cache_dir=tmp_path / "hub")


def test_a_snapshot_downloaded_by_commit_hash_counts_as_cached(hub_cache, manifest, tmp_path, offline):
    """hf_hub_download(revision=<sha>) leaves snapshots/<sha>/ and no ref: it loads offline, is
    listed among the cached revisions, and its repo is not 'missing from the cache'."""
    cache = tmp_path / "hub"
    shutil.copytree(hub_cache, cache, symlinks=True)
    refs = cache / ("models--" + REPO.replace("/", "--")) / "refs"
    step = manifest.steps[-2]
    commit = (refs / f"step{step}").read_text()
    shutil.rmtree(refs)  # the repo downloaded by commit hashes only
    lm = load_model(REPO, revision=commit, cache_dir=cache)
    expected = AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(manifest.sizes[0], step))
    assert _same_weights(lm.model, expected)
    assert commit in cached_revisions(REPO, cache)
    with pytest.raises(ScalelensError, match=rf"{REPO}@main is not in the local hub cache .*{commit}\)"):
        load_model(REPO, cache_dir=cache)


UNREACHABLE = """
import json, sys, time, warnings
slept = []
time.sleep = slept.append  # the hub client's waits between retries, counted instead of waited
from scalelens.errors import TransientError
from scalelens.models import load_model
cache, damaged, full, partial = sys.argv[1:5]
out = {}
cases = (("full", full, cache), ("partial", partial, damaged), ("uncached", "step3000", cache))
for name, rev, where in cases:
    slept.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            out[name] = {"ok": load_model(sys.argv[5], revision=rev, cache_dir=where).info.revision}
        except Exception as e:
            out[name] = {"transient": isinstance(e, TransientError), "message": str(e)}
    out[name]["slept"] = len(slept)
    out[name]["warnings"] = [str(w.message) for w in seen if "cannot be reached" in str(w.message)]
print(json.dumps(out))
"""


def test_an_unreachable_hub_loads_a_fully_cached_revision_at_once(hub_cache, manifest, tmp_path):
    """Without HF_HUB_OFFLINE and with the hub unreachable (a refused port as HF_ENDPOINT), a fully
    cached revision loads from the cache with a warning, without the hub client's retries (it
    retried each optional tokenizer file it never had, minutes per load); a partly cached or
    uncached one fails at once, as a TransientError saying what the cache lacks."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = refused_endpoint()
    full, partial = f"step{manifest.steps[-1]}", f"step{manifest.steps[-2]}"
    damaged = _damaged_copy(hub_cache, tmp_path, partial, "weights")
    argv = [sys.executable, "-c", UNREACHABLE, str(hub_cache), str(damaged), full, partial, REPO]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["full"]["ok"] == full and out["full"]["slept"] == 0
    [warning] = out["full"]["warnings"]
    assert warning.startswith("the hub cannot be reached (ConnectError")
    assert warning.endswith(f"; loading {REPO}@{full} from the local cache {hub_cache}")
    gaps = {"partial": "is only partly in the local hub cache", "uncached": "is not in the local hub cache"}
    for name, gap in gaps.items():
        assert out[name]["transient"] and out[name]["slept"] == 0, out[name]
        assert "the hub cannot be reached" in out[name]["message"] and gap in out[name]["message"]


def test_a_hanging_hub_is_waited_for_once_not_per_load(hub_cache, manifest, monkeypatch):
    """A hub that accepts connections and never answers costs HF_HUB_ETAG_TIMEOUT per
    question; a sweep asked once per task and retry (20 s per uncached checkpoint, 16
    minutes for a log sweep of three sizes). The verdict is remembered for a while."""
    import socket

    from huggingface_hub import constants

    from scalelens.errors import TransientError
    from scalelens.models import hub

    monkeypatch.setattr(hub, "_unreachable", {})  # no verdict from an earlier test, none left behind
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as silent:  # listens, never accepts: every request times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
        silent.setblocking(False)
        opened = []
        for step, said in ((2000, ""), (3000, r"; found \d+ s ago"), (4000, r"; found \d+ s ago")):
            # Pythia steps the cache does not hold; a remembered verdict says it is one
            with pytest.raises(TransientError, match=f"the hub cannot be reached \\(.*{said}"):
                load_model(REPO, revision=f"step{step}", cache_dir=hub_cache)
            opened.append(waiting_connections(silent))
    assert opened[0] > 0 and opened[1:] == [0, 0]  # the first load asked and waited; the others knew


def test_a_refused_hub_is_asked_again_once_the_network_is_back(monkeypatch):
    """Only a timeout is remembered: a refused connection (no network, a proxy down) costs no
    wait, and remembering it kept a network fixed in a notebook "unreachable" for a minute
    (an uncached revision failed with the stale reason, a cached one loaded without asking)."""
    import socket
    import threading

    from huggingface_hub import constants

    from scalelens.models import hub

    monkeypatch.setattr(hub, "_unreachable", {})
    with socket.socket() as server:  # bound, not listening: connections are refused
        server.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 10)
        assert hub.hub_unreachable(REPO, "step1000") is not None
        server.listen(4)  # the network is back: the hub answers (404, an answer all the same)
        answering = threading.Thread(target=_answer_not_found, args=(server,), daemon=True)
        answering.start()
        assert hub.hub_unreachable(REPO, "step1000") is None
        answering.join(timeout=10)


def _answer_not_found(server) -> None:
    """Answer one HTTP request on ``server`` with 404 Not Found."""
    conn = server.accept()[0]
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")



def test_uncached_hub_id_offline(hub_cache, offline):
    with pytest.raises(ScalelensError, match="not in the hub cache"):
        load_model("EleutherAI/pythia-999m", cache_dir=hub_cache)


def test_revision_and_checkpoint_must_agree(hub_cache, offline):
    with pytest.raises(ScalelensError, match="disagree"):
        load_model(REPO, revision="step1", checkpoint=2, cache_dir=hub_cache)


# --- local and suite directories -------------------------------------------


def test_suite_size_with_revision(micro_suite, manifest):
    size, step = manifest.sizes[-1], manifest.steps[2]
    lm = load_model(micro_suite / size, revision=f"step{step}")
    assert lm.info.source_kind == "suite" and lm.info.step == step
    assert lm.info.name == f"{manifest.name}-{size}"
    assert lm.info.n_params == manifest.models[size]["n_params"]
    assert lm.info.n_params_non_embedding == manifest.models[size]["n_params_non_embedding"]
    assert _same_weights(lm.model, AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(size, step)))


def test_suite_step_dir_and_default_last_step(micro_suite, manifest):
    size = manifest.sizes[1]
    by_dir = load_model(micro_suite / size / f"step{manifest.steps[3]}")
    assert (by_dir.info.source_kind, by_dir.info.step) == ("suite", manifest.steps[3])
    last = load_model(str(micro_suite / size))
    assert last.info.revision == f"step{manifest.steps[-1]}"
    assert last.info.step == manifest.steps[-1]


def test_a_final_model_beside_its_step_checkpoints(micro_suite, manifest, tmp_path):
    """A directory holding the final model's files and stepN/ subfolders (a common training
    layout): a revision loads that subfolder, no revision the top-level model."""
    size = manifest.sizes[0]
    root = tmp_path / size
    shutil.copytree(micro_suite / size, root)
    for f in manifest.checkpoint_dir(size, manifest.steps[-1]).iterdir():
        shutil.copy(f, root / f.name)
    early = load_model(root, revision=f"step{manifest.steps[1]}")
    assert (early.info.source_kind, early.info.step) == ("suite", manifest.steps[1])
    assert _same_weights(early.model, AutoModelForCausalLM.from_pretrained(root / f"step{manifest.steps[1]}"))
    final = load_model(root)
    assert (final.info.source_kind, final.info.step, final.info.source) == ("local", None, str(root))
    with pytest.raises(ScalelensError, match=r"unknown revision 'step9999'.*available: step0"):
        load_model(root, revision="step9999")


def test_an_hf_trainer_run_loads_its_checkpoints_by_step(micro_suite, manifest, tmp_path):
    """``checkpoint-N`` directories (no tokenizer files; the run directory has them) load by
    their name, by ``checkpoint=N`` and directly, with N as the step."""
    size, (early, late) = manifest.sizes[0], manifest.steps[1:3]
    run = tmp_path / "run"
    for step in (early, late):
        shutil.copytree(manifest.checkpoint_dir(size, step), run / f"checkpoint-{step}")
    for f in (run / f"checkpoint-{early}").glob("tokenizer*"):
        shutil.copy(f, run / f.name)
        for step in (early, late):
            (run / f"checkpoint-{step}" / f.name).unlink()
    by_sugar = load_model(run, checkpoint=early)
    assert (by_sugar.info.revision, by_sugar.info.step) == (f"checkpoint-{early}", early)
    hf = AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(size, early))
    assert _same_weights(by_sugar.model, hf)
    assert load_model(run).info.step == late
    direct = load_model(run / f"checkpoint-{late}")
    assert (direct.info.source_kind, direct.info.step) == ("suite", late)
    assert len(direct.tokenizer) == len(by_sugar.tokenizer) > 0


def test_suite_unknown_revision(micro_suite, manifest):
    with pytest.raises(ScalelensError, match=r"unknown revision 'step9999'.*available: step0"):
        load_model(micro_suite / manifest.sizes[0], checkpoint=9999)


def test_suite_root_asks_for_a_size(micro_suite, manifest):
    with pytest.raises(ScalelensError, match=f"is a suite; load one size.*{manifest.sizes[0]}"):
        load_model(micro_suite)


def test_plain_local_dir(tmp_path, suite_tokenizer):
    path = save_tiny_model("gpt_neox", tmp_path / "tiny", suite_tokenizer)
    lm = load_model(path, dtype="bf16", attn_implementation="eager")
    assert lm.info.source_kind == "local" and lm.info.revision is None and lm.info.step is None
    assert lm.info.dtype == "bfloat16" and lm.model.dtype == torch.bfloat16
    assert lm.info.attn_implementation == "eager"
    assert lm.tokenizer.is_fast and lm.tokenizer.eos_token == "<|endoftext|>"


# --- info per architecture --------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "d_head", "attn"),
    [
        ("gpt_neox", 8, "sdpa"),
        ("llama", 8, "sdpa"),
        ("gemma2", 16, "eager"),
        ("gemma3_text", 16, "sdpa"),
        ("gpt2", 8, "sdpa"),
    ],
)
def test_info_per_architecture(tmp_path, suite_tokenizer, arch, d_head, attn):
    path = save_tiny_model(arch, tmp_path / arch, suite_tokenizer)
    lm = load_model(path)
    info = lm.info
    assert info.architecture == arch
    assert (info.d_model, info.n_layers, info.n_heads, info.d_head) == (32, 2, 4, d_head)
    assert info.vocab_size == len(suite_tokenizer) and info.max_position == 128
    assert info.n_params == sum(p.numel() for p in lm.model.parameters())
    assert info.dtype == "float32" and info.attn_implementation == attn
    assert ModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    logits = lm.model(_ids(lm.tokenizer)).logits
    assert logits.shape[-1] == info.vocab_size


# --- in-memory and wrapped models --------------------------------------------


def test_in_memory_model_needs_a_tokenizer(suite_tokenizer):
    torch.manual_seed(0)
    from scalelens.models.testing import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(suite_tokenizer)))
    with pytest.raises(ScalelensError, match="pass tokenizer="):
        load_model(model)
    lm = load_model(model, tokenizer=suite_tokenizer)
    assert lm.model is model and lm.tokenizer is suite_tokenizer
    assert lm.info.source_kind == "memory" and lm.info.source == "<in-memory>"
    assert lm.info.architecture == "llama" and not model.training


def test_in_memory_device_and_dtype_only_when_asked(micro_suite, manifest):
    lm = load_model(micro_suite / manifest.sizes[0])
    again = load_model(lm.model, tokenizer=lm.tokenizer)
    assert again.model.dtype == torch.float32 and again.info.attn_implementation == "sdpa"
    half = load_model(lm.model, tokenizer=lm.tokenizer, dtype="float64", attn_implementation="eager")
    assert half.info.dtype == "float64" and half.info.attn_implementation == "eager"


def test_in_memory_model_refuses_a_revision_it_cannot_load(micro_suite, manifest):
    """The object in memory is one checkpoint: a revision, checkpoint or GGUF file asked
    for alongside it would be silently ignored, so it is refused."""
    lm = load_model(micro_suite / manifest.sizes[0])
    for kw in ({"revision": "step0"}, {"checkpoint": 0}, {"gguf_file": "m.gguf"}):
        with pytest.raises(ScalelensError, match=f"{next(iter(kw))} cannot apply to an in-memory"):
            load_model(lm.model, tokenizer=lm.tokenizer, **kw)


def test_nnsight_language_model_is_unwrapped(micro_suite, manifest):
    from nnsight import LanguageModel

    base = load_model(micro_suite / manifest.sizes[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = LanguageModel(base.model, tokenizer=base.tokenizer)
    lm = load_model(wrapped)
    assert lm.model is base.model and lm.tokenizer is base.tokenizer
    assert lm.info.source_kind == "nnsight"
    assert lm.info.n_params == base.info.n_params


def test_a_torch_compiled_model_is_captured_as_the_model_itself(micro_suite, manifest, suite_tokenizer,
                                                                 tmp_path):
    """torch.compile(model) was refused ("cannot load a OptimizedModule"): its _orig_mod is now
    what loads, and captures run it uncompiled (hooks would recompile or break the graph), with
    values equal to the model's and no hook left."""
    from scalelens import preset
    from scalelens.cache.reader import CaptureFile
    from scalelens.capture import capture

    size, step = manifest.sizes[0], manifest.steps[-1]
    model = AutoModelForCausalLM.from_pretrained(manifest.checkpoint_dir(size, step))
    compiled = torch.compile(model)
    lm = load_model(compiled, tokenizer=suite_tokenizer)
    assert lm.model is model and lm.info.source_kind == "memory"
    texts = ["the code of Bako is 4821 .", "a b"]
    got = capture(compiled, [preset("resid")], texts, tmp_path / "c.h5", tokenizer=suite_tokenizer,
                  progress=False)
    want = capture(model, [preset("resid")], texts, tmp_path / "m.h5", tokenizer=suite_tokenizer,
                   progress=False)
    with CaptureFile(got) as a, CaptureFile(want) as b:
        values = [f.read("values", probe="resid").data for f in (a, b)]
    np.testing.assert_array_equal(*values)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_transformer_bridge_is_unwrapped(micro_suite, manifest):
    from transformer_lens.model_bridge import TransformerBridge

    path = manifest.checkpoint_dir(manifest.sizes[-1], manifest.steps[-1])
    hf = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    bridge = TransformerBridge.boot_transformers(str(path), hf_model=hf, tokenizer=tok)
    lm = load_model(bridge)
    assert lm.model is hf and lm.tokenizer is bridge.tokenizer
    assert lm.info.source_kind == "transformer_lens" and lm.info.architecture == "gpt_neox"
    assert lm.info.attn_implementation == "eager"  # the bridge switches the model to eager


def test_bridge_source_captures_resid_and_refuses_per_head_probes(micro_suite, manifest, tmp_path):
    """The bridge swaps its own attention components into the model, so the attention tap
    never fires there: per-head probes are refused up front (it was 'hooks did not fire')."""
    from transformer_lens.model_bridge import TransformerBridge

    from scalelens.capture import capture
    from scalelens.probes.spec import preset

    path = manifest.checkpoint_dir(manifest.sizes[0], manifest.steps[-1])
    hf, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    lm = load_model(TransformerBridge.boot_transformers(str(path), hf_model=hf, tokenizer=tok))
    out = capture(lm, [preset("resid")], ["a b c"], tmp_path / "r.h5", progress=False)
    assert out.is_file()
    with pytest.raises(ScalelensError, match=r"probe\(s\) attn, top1 need the model's own attention"):
        capture(lm, [preset("resid"), preset("attn"), preset("top1")], ["a b c"], tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists()


def test_unsupported_object():
    with pytest.raises(ScalelensError, match="cannot load a list"):
        load_model([1, 2])


# --- GGUF ----------------------------------------------------------------------


def test_gguf_file_round_trips_a_llama(tmp_path, suite_tokenizer):
    path = save_tiny_model("llama", tmp_path / "llama", suite_tokenizer)
    original = AutoModelForCausalLM.from_pretrained(path).eval()
    gguf_path = write_llama_gguf(original, suite_tokenizer, tmp_path / "tiny-llama.gguf")
    lm = load_model(gguf_path)
    assert lm.info.source_kind == "gguf" and lm.info.architecture == "llama"
    assert lm.info.n_params == sum(p.numel() for p in original.parameters())
    ids = _ids(suite_tokenizer)
    assert torch.equal(_ids(lm.tokenizer), ids)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, original(ids).logits)
    by_dir = load_model(tmp_path, gguf_file="tiny-llama.gguf")
    assert by_dir.info == lm.info and lm.info.source == str(gguf_path)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    docs = [f"the quick brown fox jumps over the lazy dog {i} times" for i in range(200)]
    return train_tokenizer(docs, 300)


def _capture_equals_hidden_states(lm, original, prompts):
    """resid_post of every layer but the last (taken before the final norm) equals HF's hidden_states."""
    from scalelens import CaptureFile, ProbeSpec, attach

    out = Path(lm.info.source).with_suffix(".h5")
    with attach(lm, [ProbeSpec("r", "resid_post", dtype="float32")], out=out, batch_size=len(prompts)) as run:
        run.feed(prompts)
    with CaptureFile(out) as f:
        got = f.read("values", probe="r").data
    for i, text in enumerate(prompts):
        ids = _ids(lm.tokenizer, text)
        with torch.no_grad():
            hidden = original(ids, output_hidden_states=True).hidden_states
        for layer in range(lm.info.n_layers - 1):
            np.testing.assert_allclose(got[i, layer, : ids.shape[1]], hidden[layer + 1][0].numpy(), atol=1e-6)


def test_gguf_file_round_trips_a_gpt2_of_short_context(tmp_path, bpe_tokenizer):
    """transformers reads a GPT-2 GGUF's context length into ``n_ctx`` and its feed-forward width
    into ``feed_forward_length``, leaving ``n_positions`` 1024 and ``n_inner`` 4 * n_embd: a GPT-2
    of any other context or width failed with a RuntimeError about mismatched sizes."""
    path = save_tiny_model("gpt2", tmp_path / "gpt2", bpe_tokenizer, n_inner=64)
    original = AutoModelForCausalLM.from_pretrained(path).eval()
    lm = load_model(write_gpt2_gguf(original, bpe_tokenizer, tmp_path / "tiny-gpt2.gguf"))
    assert (lm.info.source_kind, lm.info.architecture, lm.info.max_position) == ("gguf", "gpt2", 128)
    assert lm.info.n_params == sum(p.numel() for p in original.parameters())
    _capture_equals_hidden_states(lm, original, ["the quick brown fox", "jumps over the lazy dog 7 times"])


def test_gguf_capture_equals_the_source_llama(tmp_path, bpe_tokenizer):
    path = save_tiny_model("llama", tmp_path / "llama", bpe_tokenizer)
    original = AutoModelForCausalLM.from_pretrained(path).eval()
    lm = load_model(tmp_path, gguf_file=write_llama_gguf(original, bpe_tokenizer, tmp_path / "l.gguf").name)
    _capture_equals_hidden_states(lm, original, ["the quick brown fox", "jumps over the lazy dog 7 times"])


@pytest.mark.parametrize("cut", ["header", "tensors", "magic", "empty"])
def test_a_truncated_or_corrupt_gguf_is_one_error_naming_the_file(tmp_path, bpe_tokenizer, cut):
    """A GGUF cut inside its header raised struct.error (an internal error on the command line);
    the others named the directory, not the file."""
    path = save_tiny_model("llama", tmp_path / "llama", bpe_tokenizer)
    good = write_llama_gguf(AutoModelForCausalLM.from_pretrained(path), bpe_tokenizer, tmp_path / "good.gguf")
    data = good.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"header": data[:3000], "tensors": data[:-5000], "magic": b"GGUF\x03\x00\x00\x00xx",
                     "empty": b""}[cut])
    with pytest.raises(ScalelensError, match=rf"{bad} is not a readable GGUF file \(truncated or corrupt"):
        load_model(bad)


def test_a_gguf_cut_in_its_header_is_one_line_on_the_command_line(tmp_path, capsys):
    """It was an internal error (exit 1, 'report it') from gguf's struct.error."""
    from cli_run import assert_one_line, run_cli

    bad = tmp_path / "cut.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    out = tmp_path / "o.h5"
    argv = ["capture", "--model", str(bad), "--prompts", str(prompts), "--out", str(out)]
    rc, _, err = run_cli(capsys, argv)
    assert_one_line(rc, err, f"{bad} is not a readable GGUF file")
    assert not out.exists()


def test_weights_that_do_not_fit_the_config_are_one_error(tmp_path, bpe_tokenizer, capsys):
    """A config.json edited (or saved) apart from its weights raised transformers' RuntimeError,
    an internal error on the command line, after a many-line load report."""
    path = save_tiny_model("gpt2", tmp_path / "gpt2", bpe_tokenizer)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "n_positions": 256}))
    with pytest.raises(ScalelensError, match=r"weights do not match its config: transformer\.wpe\.weight is "
                                             r"\(128, 32\) in the checkpoint, \(256, 32\) in the config"):
        load_model(path)
    from cli_run import assert_one_line, run_cli

    prompts, out = tmp_path / "p.txt", tmp_path / "o.h5"
    prompts.write_text("the fox\n")
    argv = ["capture", "--model", str(path), "--prompts", str(prompts), "--out", str(out)]
    capsys.readouterr()  # save_tiny_model's progress bar
    assert_one_line(*run_cli(capsys, argv)[::2], "its weights do not match its config")
    assert not out.exists()


# --- errors ----------------------------------------------------------------------


def test_nonexistent_path():
    with pytest.raises(ScalelensError, match="does not exist"):
        load_model("/no/such/model/dir")


def test_a_mistyped_relative_path_is_not_tried_as_a_hub_id(tmp_path, monkeypatch):
    """``runs/smal`` with a local ``runs/`` folder is a typo, not a hub repository (the hub was
    tried, twice in a sweep, and the error said to download it)."""
    (tmp_path / "runs" / "small").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScalelensError, match=r"model path runs/smal does not exist \(though runs/ does\)"):
        load_model("runs/smal")


def test_checkpoint_names_parse_their_step():
    from scalelens.models.sources import parse_step

    names = {"step3000": 3000, "step1000-tokens4B": 1000, "stage1-step928646-tokens3896B": 928646,
             "stage1-step5000": 5000, "step20000-tokens84B": 20000, "step100-tokens2": 100,
             "checkpoint-500": 500, "main": None, "stepx": None, "stage1-main": None,
             "step1000-tokens": None, "step1000-tokens4B-fp32": None, "xstep1000": None}
    assert {n: parse_step(n) for n in names} == names


def test_a_later_stage_revision_gives_no_training_step():
    """OLMo 2's stage 2 counts steps from zero again (stage2-ingredient1-step11931-tokens50B follows
    stage1-step928646-tokens3896B): its N is no step on the training axis. ``stage2-step1000``
    parsed as step 1000, one point with ``stage1-step1000``."""
    from scalelens.models.sources import parse_step

    for name in ("stage2-step1000-tokens4B", "stage2-step1000", "stage2-ingredient1-step11931-tokens50B",
                 "stage12-step5"):
        assert parse_step(name) is None, name


def test_encoder_architecture_is_refused(tmp_path):
    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path)
    with pytest.raises(ScalelensError, match="unsupported architecture 'bert'"):
        load_model(tmp_path)


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(ScalelensError, match="unsupported architecture"):
        load_model(tmp_path)


def test_unsupported_attention_implementation(tmp_path, suite_tokenizer):
    path = save_tiny_model("gemma2", tmp_path / "gemma2", suite_tokenizer)
    with pytest.raises(ScalelensError, match="gemma2 does not support attn_implementation='sdpa'"):
        load_model(path, attn_implementation="sdpa")


def test_unknown_dtype(micro_suite, manifest):
    with pytest.raises(ScalelensError, match="unknown dtype 'fp9'"):
        load_model(micro_suite / manifest.sizes[0], dtype="fp9")


def test_non_gguf_file(tmp_path):
    path = Path(tmp_path / "weights.bin")
    path.write_bytes(b"x")
    with pytest.raises(ScalelensError, match="not a .gguf model"):
        load_model(path)


def test_lazy_nnsight_model_is_dispatched_before_unwrapping(manifest):
    from nnsight import LanguageModel

    path = manifest.checkpoint_dir(manifest.sizes[-1], manifest.steps[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = LanguageModel(str(path), tokenizer=AutoTokenizer.from_pretrained(path))
    assert next(lazy._module.parameters()).is_meta
    lm = load_model(lazy)
    assert not next(lm.model.parameters()).is_meta and lazy.dispatched
    assert _same_weights(lm.model, AutoModelForCausalLM.from_pretrained(path))


def test_transformer_bridge_booted_offline_from_a_suite_checkpoint(manifest, offline):
    from transformer_lens.model_bridge import TransformerBridge

    path = manifest.checkpoint_dir(manifest.sizes[0], manifest.steps[-1])
    lm = load_model(TransformerBridge.boot_transformers(str(path)))
    assert lm.info.source == str(path) and lm.info.n_params == manifest.models[manifest.sizes[0]]["n_params"]


def test_directory_without_tokenizer(tmp_path, micro_suite):
    path = save_tiny_model("gpt_neox", tmp_path / "bare", vocab_size=384)
    with pytest.raises(ScalelensError, match="no usable tokenizer.*pass tokenizer="):
        load_model(path)
    lm = load_model(path, tokenizer=micro_suite / "tokenizer")
    assert lm.tokenizer.eos_token == "<|endoftext|>"


def test_devices_the_machine_cannot_use_are_one_clear_error(tmp_path, suite_tokenizer):
    """The Python API checks the device as the CLI does (torch asserted, or failed later)."""
    model_dir = save_tiny_model("gpt_neox", tmp_path / "m", suite_tokenizer)
    with pytest.raises(ScalelensError, match="unknown device 'tpu'"):
        load_model(model_dir, device="tpu")
    for other in ("mps", "meta"):  # host staging reads device tensors as numpy; float64 Grams
        with pytest.raises(ScalelensError, match=f"device {other}: scalelens runs on cpu or cuda"):
            load_model(model_dir, device=other)
    if torch.cuda.is_available():
        with pytest.raises(ScalelensError, match=f"this machine has {torch.cuda.device_count()} GPU"):
            load_model(model_dir, device=f"cuda:{torch.cuda.device_count()}")
        assert load_model(model_dir, device="cuda").model.device.type == "cuda"
    else:
        for source in (model_dir, AutoModelForCausalLM.from_pretrained(model_dir)):
            with pytest.raises(ScalelensError, match="CUDA is not available"):
                load_model(source, device="cuda")


def test_bfloat16_is_checked_on_the_gpu_named(monkeypatch):
    """bf16 support is asked of cuda:N itself, not of whichever GPU is current; API and CLI alike."""
    from scalelens.commands.capture import check_device
    from scalelens.models.load import check_device_usable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    asked: list[int] = []
    monkeypatch.setattr("scalelens.models.load.bf16_supported", lambda i: asked.append(i) or i == 0)
    check_device_usable("cuda:0", torch.bfloat16)
    check_device_usable("cuda:1", torch.float16)  # only bf16 is asked about
    with pytest.raises(ScalelensError, match="the GPU cuda:1 does not support bfloat16"):
        check_device_usable("cuda:1", torch.bfloat16)
    with pytest.raises(ScalelensError, match="the GPU cuda:1 does not support bfloat16"):
        check_device("cuda:1", "bf16")
    assert asked == [0, 1, 1]


def test_a_gpu_index_past_the_last_is_one_clear_error(monkeypatch):
    """With 2 GPUs, cuda:1 is the last usable one and cuda:2 is refused (on any machine: the GPU
    count is set, as in the test above)."""
    from scalelens.models.load import check_device_usable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device_usable("cuda:1")
    with pytest.raises(ScalelensError, match=r"cuda:2: this machine has 2 GPU\(s\) \(cuda:0..cuda:1\)"):
        check_device_usable("cuda:2")


def test_tokenizers_for_in_memory_models_and_by_hub_id(tmp_path, suite_tokenizer, hub_cache, offline):
    """An in-memory model whose directory has no tokenizer is refused (not given transformers'
    empty tokenizer); tokenizer=<hub id> works for in-memory and disk models, from cache_dir."""
    bare = save_tiny_model("gpt_neox", tmp_path / "bare", vocab_size=len(suite_tokenizer))
    model = AutoModelForCausalLM.from_pretrained(bare)
    with pytest.raises(ScalelensError, match="no usable tokenizer at .*bare \\(no tokenizer files\\)"):
        load_model(model)
    lm = load_model(bare, tokenizer=REPO, cache_dir=hub_cache)  # disk model, tokenizer from the cache
    assert lm.tokenizer("the code").input_ids == suite_tokenizer("the code").input_ids
    lm = load_model(model, tokenizer=REPO, cache_dir=hub_cache)  # in-memory model, tokenizer by hub id
    assert len(lm.tokenizer) == len(suite_tokenizer)


def test_loaded_model_repr_is_one_line_naming_what_was_loaded(micro_suite, manifest):
    size, step = manifest.sizes[0], manifest.steps[-1]
    lm = load_model(micro_suite / size, revision=f"step{step}", dtype="bf16")
    i = lm.info
    assert repr(lm) == (f"LoadedModel({i.name}@step{step}, gpt_neox, {i.n_params:,} params, "
                        f"{i.n_layers} layers x {i.n_heads} heads, d_model {i.d_model}, bfloat16 on cpu)")


TOKENIZER_UNREACHABLE = """
import json, sys, time, warnings
slept = []
time.sleep = slept.append  # the hub client's waits between retries, counted instead of waited
from scalelens.errors import ScalelensError
from scalelens.models import load_model
bare, cache, repo = sys.argv[1:4]
out = {}
for name, tok in (("cached", repo), ("uncached", "scalelens-test/no-such-tokenizer")):
    slept.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            out[name] = {"ok": len(load_model(bare, tokenizer=tok, cache_dir=cache).tokenizer)}
        except ScalelensError as e:
            out[name] = {"error": type(e).__name__, "message": str(e)}
    out[name]["slept"] = len(slept)
    out[name]["warnings"] = [str(w.message) for w in seen if "cannot be reached" in str(w.message)]
print(json.dumps(out))
"""


def test_a_tokenizer_by_hub_id_with_the_hub_unreachable_loads_from_the_cache_at_once(
        tmp_path, suite_tokenizer, hub_cache):
    """A compute node without network, HF_HUB_OFFLINE unset: `--tokenizer HUB_ID` went through the
    hub client's retries for every tokenizer file (each waiting out HF_HUB_ETAG_TIMEOUT on a hub
    that hangs); now it is the cached copy at once, with a warning, as for the model itself,
    and an uncached one is a TransientError naming the download command."""
    import os
    import subprocess
    import sys

    bare = save_tiny_model("gpt_neox", tmp_path / "bare", vocab_size=len(suite_tokenizer))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = refused_endpoint()
    argv = [sys.executable, "-c", TOKENIZER_UNREACHABLE, str(bare), str(hub_cache), REPO]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["cached"]["ok"] == len(suite_tokenizer) and out["cached"]["slept"] == 0, out
    [warning] = out["cached"]["warnings"]
    assert warning.endswith(f"loading {REPO}@main from the local cache {hub_cache}")
    uncached = out["uncached"]
    assert uncached["error"] == "TransientError" and uncached["slept"] == 0, uncached
    assert "scalelens-test/no-such-tokenizer@main is not in the local hub cache" in uncached["message"]
    assert "hf download scalelens-test/no-such-tokenizer --revision main" in uncached["message"]


def test_the_tests_hub_is_a_refused_local_port(monkeypatch):
    """conftest points the hub client at a local port nothing listens on, before it is imported:
    no test asks the real hub (a hub id there failed fast only where DNS did)."""
    from huggingface_hub import constants

    from scalelens.models import hub, hub_refs
    from scalelens.models.hub_refs import hub_names

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_unreachable", {})  # what this test learns stays in it
    monkeypatch.setattr(hub_refs, "_listed", {})

    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"]
    assert constants.ENDPOINT.startswith("http://127.0.0.1:")
    names, why = hub_names("gpt2")
    assert names is None and why is not None and "ConnectError" in why, why


def test_a_directory_holding_only_a_gguf_names_the_file_to_pass(tmp_path):
    """A GGUF download's directory said only "has no config.json ...; pass a model directory"."""
    (tmp_path / "dl").mkdir()
    file = tmp_path / "dl" / "model-q8.gguf"
    file.write_bytes(b"GGUF")
    with pytest.raises(ScalelensError) as e:
        load_model(tmp_path / "dl")
    assert str(e.value) == (f"{tmp_path / 'dl'} has no config.json but holds GGUF file(s) (model-q8.gguf); "
                            f"pass the .gguf file itself, e.g. {file}")


def test_loading_a_gguf_draws_no_bar_of_transformers(tmp_path, bpe_tokenizer, capsys):
    """transformers' GGUF reader drew "Converting and de-quantizing GGUF tensors..." with plain
    tqdm, past the switch that keeps its other load bars out of scalelens's output."""
    path = save_tiny_model("llama", tmp_path / "llama", bpe_tokenizer)
    gguf = write_llama_gguf(AutoModelForCausalLM.from_pretrained(path), bpe_tokenizer, tmp_path / "l.gguf")
    capsys.readouterr()
    load_model(gguf)
    assert "GGUF tensors" not in capsys.readouterr().err
