"""Model-loading facts pinned to numbers computed here, independently of the code under test.

Each test was written against a plausible bug that the rest of the suite let through
(a mutation-testing pass over models/ and hooks/): Pythia shapes and counts by hand,
the hub cache's revision order, checkpoint discovery on hand-made directory layouts,
dtype defaults and aliases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, word_tokenizer
from transformers import AutoModelForCausalLM

from scalelens.errors import ScalelensError
from scalelens.models import load_model
from scalelens.models.describe import describe
from scalelens.models.hub_cache import cached_revisions, missing_files, revision_key
from scalelens.models.load import resolve_dtype
from scalelens.models.pythia import PYTHIA_CONFIGS, pythia_config, pythia_revisions
from scalelens.models.revisions import parse_step, revisions_by_step
from scalelens.models.sources import checkpoint_revision, incomplete_step_dirs, resolve_source, step_dirs
from scalelens.models.testing import save_tiny_model, tiny_config

# DESIGN.md section 5 (the Pythia paper's table): layers, d_model, heads.
PYTHIA_SHAPES = {
    "14m": (6, 128, 4), "31m": (6, 256, 8), "70m": (6, 512, 8), "160m": (12, 768, 12),
    "410m": (24, 1024, 16), "1b": (16, 2048, 8), "1.4b": (24, 2048, 16), "2.8b": (32, 2560, 32),
    "6.9b": (32, 4096, 32), "12b": (36, 5120, 40),
}
# Embedding rows: 50,304 up to 2.8b (DESIGN.md), 50,432 for 6.9b, 50,688 for 12b (the
# published totals of those two are met only with these paddings).
PYTHIA_VOCAB = {**dict.fromkeys(PYTHIA_SHAPES, 50_304), "6.9b": 50_432, "12b": 50_688}


def neox_counts(layers: int, d: int, vocab: int) -> tuple[int, int]:
    """(total, non-embedding) of a GPT-NeoX with d_ff = 4d and untied embeddings, by hand.

    Per layer: two LayerNorms (2 * 2d), fused QKV (3d^2 + 3d), output projection (d^2 + d),
    MLP up (4d^2 + 4d) and down (4d^2 + d): 12 d^2 + 13 d. Then the final LayerNorm (2d)
    and two untied vocab x d matrices (embed_in, embed_out without bias).
    """
    non_embedding = layers * (12 * d * d + 13 * d) + 2 * d
    return non_embedding + 2 * vocab * d, non_embedding


@pytest.mark.parametrize("size", sorted(PYTHIA_SHAPES))
def test_pythia_shapes_and_counts_by_hand(size):
    layers, d, heads = PYTHIA_SHAPES[size]
    info = describe(pythia_config(size), name=size, source="-", source_kind="memory", revision=None,
                    step=None, dtype="float32", attn_implementation="sdpa")
    assert (info.n_layers, info.d_model, info.n_heads) == (layers, d, heads)
    assert info.d_head == d // heads and info.vocab_size == PYTHIA_VOCAB[size]
    assert (info.n_params, info.n_params_non_embedding) == neox_counts(layers, d, PYTHIA_VOCAB[size])
    assert info.max_position == 2048


def test_pythia_small_sizes_match_their_published_totals():
    """pythia-14m and pythia-31m as their model cards count them."""
    assert neox_counts(6, 128, 50_304)[0] == 14_067_712
    assert neox_counts(6, 256, 50_304)[0] == 30_494_720


def test_pythia_configs_use_the_published_activation_and_norms():
    for size, kwargs in PYTHIA_CONFIGS.items():
        cfg = pythia_config(size)
        assert kwargs["hidden_act"] == "gelu" and cfg.hidden_act == "gelu", size  # exact GELU, not tanh
        assert cfg.layer_norm_eps == 1e-5 and cfg.rope_parameters["rope_theta"] == 10000, size


def test_pythia_revisions_of_every_public_repo_and_none_else():
    for repo in ("EleutherAI/pythia-160m", "EleutherAI/pythia-160m-deduped", "EleutherAI/pythia-12b-deduped"):
        names = pythia_revisions(repo)
        assert names is not None and len(names) == 155, repo
        assert names[:3] == ("step0", "step1", "step2") and names[-2:] == ("step143000", "main")
    for repo in ("EleutherAI/pythia-160m-v0", "EleutherAI/pythia-3b", "EleutherAI/gpt-neox-20b"):
        assert pythia_revisions(repo) is None, repo


# --- the hub cache -------------------------------------------------------------------

COMMIT_A, COMMIT_B, LOOSE = "a" * 40, "b" * 40, "0" * 40


def fake_cache(tmp_path: Path, refs: dict[str, str], loose: tuple[str, ...] = ()) -> Path:
    """A hub cache of ``org/m`` with ``refs`` (name -> commit) and snapshot folders; no files."""
    repo = tmp_path / "models--org--m"
    for name, commit in refs.items():
        (repo / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit + "\n")
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    for commit in loose:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_cached_revisions_order_steps_numerically_then_names_then_hashes(tmp_path):
    refs = {"step10": COMMIT_A, "step2": COMMIT_B, "main": COMMIT_A, "step1000": COMMIT_B,
            "step0": COMMIT_A, "refs/pr/1": COMMIT_B}
    cache = fake_cache(tmp_path, refs, loose=(LOOSE,))
    # COMMIT_A and COMMIT_B have refs: listed by ref name only; the loose snapshot by hash.
    assert cached_revisions("org/m", cache) == ["step0", "step2", "step10", "step1000", "main", "refs/pr/1",
                                                LOOSE]
    assert revision_key("step3000") == (0, (3000,), "step3000")


def test_olmo_revisions_are_listed_by_training_step_then_later_stages(tmp_path):
    """OLMo ``step<N>-tokens<K>B`` and OLMo 2 ``stage1-step<N>-tokens<K>B`` names sort by N
    (they sorted alphabetically after the plain steps: step20000-tokens84B before
    step5000-tokens21B); stage 2 counts from zero again, so its names follow stage 1, by
    ingredient then step; names without a step, then hashes, last."""
    refs = {"step20000-tokens84B": COMMIT_A, "step150-tokens1B": COMMIT_B, "main": COMMIT_A,
            "stage1-step5000-tokens21B": COMMIT_B, "stage1-step928646-tokens3896B": COMMIT_A,
            "stage2-ingredient2-step1000-tokens5B": COMMIT_B, "step900": COMMIT_A,
            "stage2-ingredient1-step11931-tokens50B": COMMIT_A,
            "stage2-ingredient1-step2000-tokens9B": COMMIT_B}
    cache = fake_cache(tmp_path, refs, loose=(LOOSE,))
    assert cached_revisions("org/m", cache) == [
        "step150-tokens1B", "step900", "stage1-step5000-tokens21B", "step20000-tokens84B",
        "stage1-step928646-tokens3896B", "stage2-ingredient1-step2000-tokens9B",
        "stage2-ingredient1-step11931-tokens50B", "stage2-ingredient2-step1000-tokens5B", "main", LOOSE]
    assert revision_key("stage1-step5000-tokens21B") == (0, (5000,), "stage1-step5000-tokens21B")
    assert revision_key("stage2-ingredient1-step2000-tokens9B")[:2] == (1, (2, 1, 2000, 9))


def test_a_model_only_load_needs_no_tokenizer_files(tmp_path):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    assert missing_files(snapshot, tokenizer=False) == []
    assert missing_files(snapshot) == ["tokenizer files"]


# --- checkpoint discovery on hand-made layouts ---------------------------------------


def checkpoint(path: Path) -> Path:
    """A directory that counts as a complete checkpoint (config and weights present)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_the_default_checkpoint_is_the_highest_step_not_the_last_name(tmp_path):
    for name in ("step2", "step10", "step100", "step9"):
        checkpoint(tmp_path / "run" / name)
    resolved = resolve_source(str(tmp_path / "run"), None, None)
    assert (resolved.revision, resolved.step, resolved.kind) == ("step100", 100, "suite")
    for name in ("checkpoint-500", "checkpoint-1500", "checkpoint-90"):
        checkpoint(tmp_path / "trainer" / name)
    assert resolve_source(str(tmp_path / "trainer"), None, None).step == 1500
    assert resolve_source(str(tmp_path / "trainer"), "step500", None).revision == "checkpoint-500"


def test_a_half_written_checkpoint_is_left_out(tmp_path):
    """An HF Trainer save interrupted after its config (or before it) is no checkpoint: the
    default is the last complete one, and the others are reported as incomplete."""
    checkpoint(tmp_path / "run" / "checkpoint-100")
    (tmp_path / "run" / "checkpoint-200").mkdir()
    (tmp_path / "run" / "checkpoint-200" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoint-300").mkdir()
    (tmp_path / "run" / "checkpoint-300" / "model.safetensors").write_bytes(b"")
    assert list(step_dirs(tmp_path / "run")) == ["checkpoint-100"]
    assert incomplete_step_dirs(tmp_path / "run") == ["checkpoint-200", "checkpoint-300"]
    assert resolve_source(str(tmp_path / "run"), None, None).revision == "checkpoint-100"


def test_a_step_both_naming_schemes_hold_is_ambiguous(tmp_path):
    for name in ("checkpoint-3000", "step3000-tokens4B"):
        checkpoint(tmp_path / "run" / name)
    with pytest.raises(ScalelensError, match="unknown revision 'step3000'"):
        resolve_source(str(tmp_path / "run"), "step3000", None)


def test_suite_checkpoints_are_named_after_the_suite_and_size(tmp_path):
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "manifest.json").write_text(json.dumps({"name": "mini"}))
    checkpoint(tmp_path / "suite" / "s1" / "step0")
    assert resolve_source(str(tmp_path / "suite" / "s1"), None, None).name == "mini-s1"
    assert resolve_source(str(tmp_path / "suite" / "s1" / "step0"), None, None).name == "mini-s1"


def test_checkpoint_zero_is_a_step():
    assert checkpoint_revision(None, 0) == "step0"
    with pytest.raises(ScalelensError, match="checkpoint must be a step number >= 0"):
        checkpoint_revision(None, -1)


def test_a_gguf_file_suffix_in_capitals(tmp_path):
    (tmp_path / "Model.Q8.GGUF").write_bytes(b"")
    resolved = resolve_source(str(tmp_path / "Model.Q8.GGUF"), None, None)
    assert (resolved.kind, resolved.gguf_file, resolved.location) == ("gguf", "Model.Q8.GGUF", str(tmp_path))


# --- dtypes and tokenizers -----------------------------------------------------------


def test_dtype_aliases():
    want = {torch.float32: ("float32", "fp32", "float", "torch.float32", "FP32"),
            torch.bfloat16: ("bfloat16", "bf16", "BF16"),
            torch.float16: ("float16", "fp16", "half"),
            torch.float64: ("float64", "fp64", "double")}
    assert {alias: resolve_dtype(alias) for d, names in want.items() for alias in names} == {
        alias: d for d, names in want.items() for alias in names}


def test_a_checkpoint_saved_in_bfloat16_loads_as_float32_by_default(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", VOCAB)).to(torch.bfloat16)
    path = tmp_path / "m"
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    lm = load_model(path)
    assert lm.model.dtype == torch.float32 and lm.info.dtype == "float32"


def test_a_tokenizer_far_smaller_than_the_vocabulary_is_refused(tmp_path):
    path = save_tiny_model("llama", tmp_path / "m", word_tokenizer(), vocab_size=512)  # 64 tokens
    with pytest.raises(ScalelensError, match=r"no usable tokenizer at .* \(64 tokens\)"):
        load_model(path)


def test_token_counts_with_decimals_give_their_step_and_other_scripts_digits_none():
    """allenai/OLMo-2-0425-1B-early-training's branches are stage1-step1000-tokens2.1B and the
    like (29 of its 38): they gave no step, so a sweep's log/all/1000 left them out."""
    assert parse_step("stage1-step1000-tokens2.1B") == 1000
    assert parse_step("step3000-tokens6.3B") == 3000
    assert revision_key("stage1-step2000-tokens4.2B") == (0, (2000,), "stage1-step2000-tokens4.2B")
    assert revisions_by_step(["stage1-step0-tokens0B", "stage1-step2000-tokens4.2B", "main",
                              "stage1-step1000-tokens2.1B"]) == {
        0: ["stage1-step0-tokens0B"], 1000: ["stage1-step1000-tokens2.1B"],
        2000: ["stage1-step2000-tokens4.2B"]}
    for name in ("step\u0661\u0660\u0660\u0660", "checkpoint-\u0967\u0966", "step1000-tokens2.B",
                 "step1000-tokens.5B", "step1000-tokens2.1.1B"):
        assert parse_step(name) is None, name
