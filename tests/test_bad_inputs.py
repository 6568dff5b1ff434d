"""The catalogue of bad inputs: each is one clear line, a non-zero exit, no traceback, nothing half-written.

Every case runs the real CLI through ``main(argv)`` on real files (a tiny GPT-NeoX saved
to disk, real HDF5 captures, the micro suite). The assertion is the contract from the
README: exactly one non-empty line on stderr, ``scalelens: error: <problem>; <fix>``,
exit code 2 (argument errors included), no traceback unless ``--debug``, and no output
left behind: no new file (nor ``.creating`` temp file), or an existing file byte for
byte unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_run import assert_one_line
from cli_run import run_cli as _run
from tiny_models import prompts, tiny_model, word_tokenizer

from scalelens.cache.reader import CaptureFile
from scalelens.cli import main


class Hung(Exception):
    """A bad input that was not refused within the deadline (the CLI reports it as internal, exit 1)."""


@contextlib.contextmanager
def _deadline(seconds: float = 60.0) -> Iterator[None]:
    """Raise :class:`Hung` inside the CLI if it runs longer than ``seconds``: nothing may hang."""
    def hung(signum, frame):
        raise Hung(f"no answer within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _tree(root: Path) -> dict[str, str | None]:
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------------------
# shared inputs
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Models, prompt files and captures the cases start from (treat as read-only)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    model = root / "model"
    tiny_model().save_pretrained(model)
    word_tokenizer().save_pretrained(model)
    other = root / "other_model"
    tiny_model(seed=1).save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    ptxt = root / "prompts.txt"
    ptxt.write_text("\n".join(prompts(5)) + "\n")
    complete = root / "complete.h5"
    assert main(["capture", "--model", str(model), "--prompts", str(ptxt), "--probes", "resid",
                 "--out", str(complete), "--batch-size", "2"]) == 0
    return {"root": root, "model": model, "other": other, "prompts": ptxt, "complete": complete}


@dataclass
class Ctx:
    """Paths of one case: the shared inputs plus a private directory."""

    tmp: Path
    model: Path
    other: Path
    prompts: Path
    complete: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out.h5"

    def capture(self, *extra: str, model: Path | None = None, prompts: Path | None = None,
                out: Path | None = None) -> list[str]:
        return ["capture", "--model", str(model or self.model), "--prompts", str(prompts or self.prompts),
                "--out", str(out or self.out), *extra]

    def measure(self, *extra: str) -> list[str]:
        return ["measure", "--model", str(self.model), *extra, "--out", str(self.tmp / "m")]

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    def copy_complete(self) -> Path:
        dst = self.tmp / "existing.h5"
        shutil.copyfile(self.complete, dst)
        return dst


@pytest.fixture()
def ctx(inputs, tmp_path) -> Ctx:
    return Ctx(tmp_path, inputs["model"], inputs["other"], inputs["prompts"], inputs["complete"])


def _bert_dir(ctx: Ctx) -> Path:
    from transformers import BertConfig, BertLMHeadModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, is_decoder=True)
    return _saved(BertLMHeadModel(cfg), ctx.tmp / "bert")


def _saved(model, d: Path) -> Path:
    """``model`` saved to ``d`` with the word tokenizer."""
    model.save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return d


def _unknown_type_dir(ctx: Ctx) -> Path:
    d = ctx.tmp / "florp"
    shutil.copytree(ctx.model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "florp"
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _small_vocab_dir(ctx: Ctx) -> Path:
    """A model with 40 embedding rows saved with the 64-token word tokenizer."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    return _saved(GPTNeoXForCausalLM(cfg), ctx.tmp / "small_vocab")


def _truncated_weights(ctx: Ctx) -> Path:
    d = ctx.tmp / "truncated_model"
    shutil.copytree(ctx.model, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return d


def _truncated(ctx: Ctx) -> Path:
    p = ctx.tmp / "truncated.h5"
    p.write_bytes(ctx.complete.read_bytes()[:4096])
    return p


def _massive_capture(ctx: Ctx) -> Path:
    """A complete capture of the massive summary (one analysis reads it)."""
    assert main(ctx.capture("--probes", "massive", out=ctx.tmp / "massive.h5")) == 0
    return ctx.tmp / "massive.h5"


def _garbage(ctx: Ctx) -> Path:
    return ctx.file("garbage.h5", b"this is not an HDF5 file\n" * 100)


def _corrupt_middle(ctx: Ctx) -> Path:
    """A file whose signature is intact but whose root object header is overwritten."""
    p = ctx.copy_complete()
    raw = bytearray(p.read_bytes())
    raw[96:2048] = b"\xff" * (2048 - 96)
    p.write_bytes(bytes(raw))
    return p


def _newer_schema(ctx: Ctx) -> Path:
    p = ctx.copy_complete()
    with h5py.File(p, "r+") as f:
        f.attrs["schema_version"] = 99
    return p


def _bad_attr(ctx: Ctx) -> Path:
    p = ctx.copy_complete()
    with h5py.File(p, "r+") as f:
        f.attrs["model"] = "{not json"
    return p


def _attr_of_another_kind(ctx: Ctx, key: str, value: str) -> Path:
    """The complete capture with root attribute ``key`` valid JSON of the wrong kind."""
    p = ctx.copy_complete()
    with h5py.File(p, "r+") as f:
        f.attrs[key] = value
    return p


def _foreign_h5(ctx: Ctx) -> Path:
    p = ctx.tmp / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = [1, 2, 3]
    return p


def _damaged(ctx: Ctx, how: str) -> Path:
    """The complete capture with its identity intact but its contents damaged."""
    p = ctx.copy_complete()
    with h5py.File(p, "r+") as f:
        if how == "no progress":
            del f["progress"]
        elif how == "no dataset":
            f["progress"][...] = [2, 0]
            del f["probes/resid/values"]
        elif how == "past the end":
            f["progress"][...] = [99, 0]
        else:
            f.attrs["schema_version"] = "one"
    return p


def _creating_leftover(ctx: Ctx) -> Path:
    ctx.file("out.h5.creating", b"\x89HDF partial")
    return ctx.out


# ----------------------------------------------------------------------------------------
# the catalogue: (id, argv builder, words the one line must contain, what must stay untouched)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    argv: Callable[[Ctx], list[str]]
    needles: tuple[str, ...]
    keep: Callable[[Ctx], Path] | None = None  # a file that must be unchanged (else: nothing new)


CASES: dict[str, Case] = {
    # models and devices
    "model path does not exist": Case(
        lambda c: c.capture(model=Path("/nonexistent/model")), ("does not exist", "existing path or hub id")),
    "unsupported architecture (encoder)": Case(
        lambda c: c.capture(model=_bert_dir(c)), ("unsupported architecture 'bert'", "decoder-only")),
    "unsupported architecture (unknown model_type)": Case(
        lambda c: c.capture(model=_unknown_type_dir(c)), ("unsupported architecture", "model_type")),
    "truncated weights file": Case(
        lambda c: c.capture(model=_truncated_weights(c)), ("could not load", "deserializing header")),
    "tokenizer with ids past the model's vocabulary": Case(
        lambda c: c.capture(model=_small_vocab_dir(c), prompts=c.file("p.txt", "w1 w2\nw50 w51\n")),
        ("prompt index 1 has token id 51, past the model's vocabulary of 40", "tokenizer does not match")),
    "revision for a plain model directory": Case(
        lambda c: c.capture("--revision", "step3"), ("has no revisions", "drop revision")),
    "device without CUDA": Case(
        lambda c: c.capture("--device", "cuda"), ("CUDA is not available", "use cpu")),
    "unknown device": Case(lambda c: c.capture("--device", "tpu"), ("unknown device 'tpu'", "cpu or cuda")),
    "unknown dtype": Case(lambda c: c.capture("--dtype", "float8"), ("invalid choice: 'float8'", "--help")),
    # probes, layers, heads, positions
    "layer index out of range": Case(
        lambda c: c.capture("--layers", "0,7"), ("layer(s) [7] out of range", "3 layers (0..2)")),
    "head index out of range": Case(
        lambda c: c.capture("--probes", "attn", "--heads", "1,9"), ("head(s) [9] out of range", "4 heads")),
    "layer listed twice": Case(
        lambda c: c.capture("--layers", "1,1"), ("layer(s) [1] listed more than once",)),
    "per-head probe on the transformer-lens backend": Case(  # refused at the first batch: no file
        lambda c: c.capture("--probes", "attn", "--backend", "transformer-lens"),
        ("transformer-lens backend cannot capture attn_pattern", "native or nnsight")),
    "negative layer index": Case(lambda c: c.capture("--layers", "-1"), ("layer(s) [-1] out of range",)),
    "unknown probe or capture point": Case(
        lambda c: c.capture("--probes", "resid,resid_mid"), ("unknown probe 'resid_mid'", "capture point")),
    "probe listed twice": Case(lambda c: c.capture("--probes", "resid,resid"), ("twice",)),
    "empty probe list": Case(lambda c: c.capture("--probes", ","), ("--probes is empty",)),
    "--heads without a per-head probe": Case(
        lambda c: c.capture("--probes", "resid", "--heads", "0"), ("--heads applies to per-head probes",)),
    "bad --positions": Case(lambda c: c.capture("--positions", "first"), ("bad positions 'first'", "last")),
    "position out of range": Case(lambda c: c.capture("--positions", "0,40"), ("out of range for prompt",)),
    "segment label not in the prompts": Case(
        lambda c: c.capture("--positions", "segment:question"), ("segment 'question' not in the prompts",)),
    "head listed twice": Case(
        lambda c: c.capture("--probes", "attn", "--heads", "0,0"), ("head(s) [0] listed more than once",)),
    "position listed twice": Case(
        lambda c: c.capture("--positions", "0,0"), ("position(s) [0] listed more than once",)),
    "segment offset past any position": Case(
        lambda c: c.capture("--positions", "segment:a@99999999999999999999"),
        ("out of range (|x| < 2,147,483,648)",)),
    "non-integer layer list": Case(lambda c: c.capture("--layers", "0,x"), ("comma-separated integers",)),
    "empty layer list": Case(lambda c: c.capture("--layers", ","), ("comma-separated integers",)),
    # prompt files
    "prompt file does not exist": Case(
        lambda c: c.capture(prompts=c.tmp / "nope.txt"), ("prompt file", "does not exist")),
    "empty prompt file": Case(lambda c: c.capture(prompts=c.file("e.txt", "\n  \n")), ("has no prompts",)),
    "non-UTF-8 prompt file": Case(
        lambda c: c.capture(prompts=c.file("l1.txt", "caf\xe9 w1 w2\n".encode("latin-1"))),
        ("not UTF-8", "offset 3", "re-encode")),
    "binary prompt file": Case(
        lambda c: c.capture(prompts=c.file("b.txt", b"w1\x00w2\n")), ("NUL bytes",)),
    "invalid JSONL line": Case(
        lambda c: c.capture(prompts=c.file("p.jsonl", '{"text": "w1"}\n{"text": w2}\n')),
        ("p.jsonl:2", "invalid JSON")),
    "JSONL segments malformed": Case(
        lambda c: c.capture(prompts=c.file("s.jsonl", '{"segments": [{"label": "q"}]}\n')),
        ('"segments" must be',)),
    ".json instead of .jsonl": Case(
        lambda c: c.capture(prompts=c.file("p.json", '[{"text": "w1"}]')), (".json is not read", ".jsonl")),
    "prompt longer than the context": Case(
        lambda c: c.capture(prompts=c.file("long.txt", "w1 w2\n\n" + " ".join(["w1"] * 200) + "\n")),
        ("long.txt:3 has 200 tokens", "more than the limit 128")),  # its line, blank ones counted
    "JSONL prompt longer than the context": Case(
        lambda c: c.capture(prompts=c.file("long.jsonl", '{"text": "w1"}\n{"segments": [{"label": "d", '
                                           f'"text": "{" ".join(["w1"] * 200)}"}}]}}\n')),
        ("long.jsonl:2 has 200 tokens",)),
    "--max-length beyond the context": Case(
        lambda c: c.capture("--max-length", "4096"), ("exceeds the model's context of 128",)),
    # batch and capture settings
    "batch size 0": Case(lambda c: c.capture("--batch-size", "0"), ("batch size must be >= 1",)),
    "batch size past int32": Case(lambda c: c.capture("--batch-size", "100000000000"),
                                  ("batch size must be >= 1 and <= 2147483647, got 100000000000",)),
    "batch size not a number": Case(lambda c: c.capture("--batch-size", "many"), ("invalid int value",)),
    "max length 0": Case(lambda c: c.capture("--max-length", "0"), ("max length must be >= 1",)),
    "unknown backend": Case(lambda c: c.capture("--backend", "pyvene"), ("unknown backend 'pyvene'",)),
    # outputs
    "--out is a directory": Case(lambda c: c.capture(out=c.tmp), ("is a directory",)),
    "output directory missing": Case(
        lambda c: c.capture(out=c.tmp / "no" / "x.h5"), ("does not exist", "create it first")),
    "complete output without --overwrite": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", out=c.copy_complete()),
        ("already complete", "--overwrite"), keep=lambda c: c.tmp / "existing.h5"),
    "resume with another model": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", model=c.other, out=c.copy_complete()),
        ("different model", "--overwrite"), keep=lambda c: c.tmp / "existing.h5"),
    "resume with another probe spec": Case(
        lambda c: c.capture("--probes", "resid", "--layers", "0", "--batch-size", "2", out=c.copy_complete()),
        ("different probes", "another --out"), keep=lambda c: c.tmp / "existing.h5"),
    "resume with another prompt set": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", out=c.copy_complete(),
                            prompts=c.file("other.txt", "w1 w2\nw3 w4\n")),
        ("different prompts", "another --out"), keep=lambda c: c.tmp / "existing.h5"),
    "resume into a truncated file": Case(
        lambda c: c.capture(out=_truncated(c)), ("not a readable capture", "--overwrite"),
        keep=lambda c: c.tmp / "truncated.h5"),
    "resume into a file of a newer schema": Case(
        lambda c: c.capture(out=_newer_schema(c)), ("schema version 99", "--overwrite"),
        keep=lambda c: c.tmp / "existing.h5"),
    "resume into a file without /progress": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", out=_damaged(c, "no progress")),
        ("is damaged (no readable /progress)", "--overwrite"), keep=lambda c: c.tmp / "existing.h5"),
    "resume into a file missing a dataset": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", out=_damaged(c, "no dataset")),
        ("dataset probes/resid/values is missing", "--overwrite"), keep=lambda c: c.tmp / "existing.h5"),
    "resume into a file whose progress is past its prompts": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2", out=_damaged(c, "past the end")),
        ("says 99 of 5 prompts are done",), keep=lambda c: c.tmp / "existing.h5"),
    # reading captures
    "inspect a file whose schema version is not a number": Case(
        lambda c: ["inspect", str(_damaged(c, "schema"))], ("schema_version 'one' is not an integer",),
        keep=lambda c: c.tmp / "existing.h5"),
    "inspect a missing file": Case(lambda c: ["inspect", str(c.tmp / "none.h5")], ("does not exist",)),
    "inspect the root directory": Case(lambda c: ["inspect", "/"],
                                       ("/ holds no .h5 captures", "sweep's run directory")),
    "inspect after an interrupted creation": Case(
        lambda c: ["inspect", str(_creating_leftover(c))], ("interrupted while creating", "rerun")),
    "inspect a truncated file": Case(
        lambda c: ["inspect", str(_truncated(c))], ("truncated or corrupted", "--overwrite"),
        keep=lambda c: c.tmp / "truncated.h5"),
    "inspect a non-HDF5 file": Case(
        lambda c: ["inspect", str(_garbage(c))], ("not a readable HDF5 file",),
        keep=lambda c: c.tmp / "garbage.h5"),
    "inspect a corrupted file": Case(
        lambda c: ["inspect", str(_corrupt_middle(c))], ("corrupted", "--overwrite"),
        keep=lambda c: c.tmp / "existing.h5"),
    "inspect a file of a newer schema": Case(
        lambda c: ["inspect", str(_newer_schema(c))], ("schema version 99", "upgrade scalelens"),
        keep=lambda c: c.tmp / "existing.h5"),
    "inspect an HDF5 file that is no capture": Case(
        lambda c: ["inspect", str(_foreign_h5(c))], ("not a scalelens capture",),
        keep=lambda c: c.tmp / "foreign.h5"),
    "inspect a file with a corrupted attribute": Case(
        lambda c: ["inspect", str(_bad_attr(c))], ("attribute 'model' is not valid JSON",),
        keep=lambda c: c.tmp / "existing.h5"),
    "analysis of a file lacking its probe": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--analyses", "massive_activations"],
        ("lacks probe 'massive' needed by massive_activations", "scalelens measure"),
        keep=lambda c: c.tmp / "existing.h5"),
    "analyze a file with no analysable probe": Case(
        lambda c: ["analyze", str(c.copy_complete())], ("holds none of the probes",),
        keep=lambda c: c.tmp / "existing.h5"),
    "unknown analysis (analyze)": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--analyses", "retrieval"],
        ("unknown analysis retrieval",),
        keep=lambda c: c.tmp / "existing.h5"),
    "analysis that needs the model": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--analyses", "superposition"],
        ("needs the model", "scalelens measure"), keep=lambda c: c.tmp / "existing.h5"),
    "analyze a missing path": Case(lambda c: ["analyze", str(c.tmp / "nothing")], ("does not exist",)),
    "unknown analysis (measure)": Case(
        lambda c: c.measure("--analyses", "massive"),
        ("unknown analysis massive", "massive_activations")),
    "measure batch size 0": Case(
        lambda c: c.measure("--batch-size", "0"),
        ("batch size must be >= 1",)),
    "measure threshold not a finite number": Case(
        lambda c: c.measure("--gate", "nan"),
        ("--gate must be a finite number, got nan",)),
    # bars outside their quantity's range: nothing (or, for no reason, everything) passes them
    "measure --gate above 1": Case(
        lambda c: c.measure("--gate", "2"), ("--gate must be at most 1", "ROUGE-1 recall", "got 2")),
    "measure negative --threshold": Case(
        lambda c: c.measure("--threshold", "-0.5"), ("--threshold must be 0 to 1", "got -0.5")),
    "measure negative --ratio-threshold": Case(
        lambda c: c.measure("--ratio-threshold", "-5"), ("--ratio-threshold must be >= 0", "got -5")),
    "analyze --gate above 1": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--gate", "2"], ("--gate must be at most 1",),
        keep=lambda c: c.tmp / "existing.h5"),
    "analyze --threshold above 1": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--threshold", "1.5"], ("--threshold must be 0 to 1",),
        keep=lambda c: c.tmp / "existing.h5"),
    "analyze negative --ratio-threshold": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--ratio-threshold", "-5"],
        ("--ratio-threshold must be >= 0",), keep=lambda c: c.tmp / "existing.h5"),
    "measure capacity bias infinite": Case(
        lambda c: c.measure("--capacity-bias", "inf"),
        ("--capacity-bias must be a finite number",)),
    "measure sequence length 0": Case(
        lambda c: c.measure("--seq-length", "0"),
        ("--seq-length must be >= 1",)),
    "measure context length 0": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--context-lengths", "0"),
        ("--context-lengths must be >= 1 token each, got [0]",)),
    "measure empty depths": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--depths", ","),
        ("expected comma-separated numbers",)),
    "measure depth not finite": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--depths", "0.5,nan"),
        ("expected finite numbers",)),
    "analyze with a threshold that is not a number": Case(
        lambda c: ["analyze", str(c.copy_complete()), "--threshold", "nan"],
        ("--threshold must be a finite number, got nan",), keep=lambda c: c.tmp / "existing.h5"),
    "inspect a file whose capture attribute is no object": Case(
        lambda c: ["inspect", str(_attr_of_another_kind(c, "capture", "5"))],
        ("attribute 'capture' is not a JSON object",), keep=lambda c: c.tmp / "existing.h5"),
    "resume into a file whose capture attribute is no object": Case(
        lambda c: c.capture("--probes", "resid", "--batch-size", "2",
                            out=_attr_of_another_kind(c, "capture", "5")),
        ("holds a capture with different capture setting",), keep=lambda c: c.tmp / "existing.h5"),
    "analyze a file whose probes attribute holds no specs": Case(
        lambda c: ["analyze", str(_attr_of_another_kind(c, "probes", "[5]"))],
        ("attribute 'probes' is not a JSON list",), keep=lambda c: c.tmp / "existing.h5"),
    "measure negative ablation k": Case(
        lambda c: c.measure("--ablation-k", "-2"),
        ("--ablation-k must be >= 0",)),
    "needle tests longer than the model's context (fast)": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--context-lengths", "20,120"),
        ("needle tests of up to", "exceed the model's context of 128 tokens",
         "use --context-lengths 88 or less")),
    "needle tests longer than the model's context (reference)": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--retrieval-mode", "reference",
                            "--context-lengths", "120"),
        ("exceed the model's context of 128 tokens", "use --context-lengths 88 or less")),
    "measure --out under a file": Case(
        lambda c: ["measure", "--model", str(c.model), "--out", str(c.file("afile", "x") / "sub")],
        ("lies under", "which is a file")),
    "needle tests too long, listed after a capturing analysis": Case(
        lambda c: c.measure("--analyses", "massive_activations,retrieval_heads", "--context-lengths", "120"),
        ("exceed the model's context of 128 tokens",)),
    "dilutions too long, listed after a capturing analysis": Case(
        lambda c: c.measure("--analyses", "massive_activations,text_dominance", "--dilutions", "1,100"),
        ("too short for a x100 dilution", "use --dilutions 39 or less")),
    "non-UTF-8 haystack file": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--haystack",
                            str(c.file("h.txt", "caf\xe9 au lait.\n".encode("latin-1")))),
        ("haystack file", "is not UTF-8 (bad byte at offset 3)", "re-encode")),
    "non-UTF-8 needle file": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--needles",
                            str(c.file("n.jsonl", b'{"needle": "caf\xe9"}\n'))),
        ("needle file", "is not UTF-8")),
    "needle with a null answer": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--needles",
                            str(c.file("n.jsonl", '{"needle": "a", "question": "q", "answer": null}\n'))),
        ('n.jsonl:1: "answer" must be non-empty text, got null',)),
    "needle answer not in its needle, on the second line": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--needles", str(c.file(
            "n.jsonl", '{"needle": "a b", "question": "q", "answer": "b"}\n\n'
                       '{"needle": "a b", "question": "q", "answer": "c"}\n'))),
        ("n.jsonl:3: needle answer 'c' does not occur in its needle sentence",)),
    "haystack file of blank lines": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--haystack",
                            str(c.file("h.txt", "\r\n  \n\n"))),
        ("haystack file", "h.txt has no sentences")),
    "haystack sizes far past the context (refused before building them)": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--context-lengths", "20,100000000"),
        ("--context-lengths up to 100000000 tokens exceed the model's context of 128 tokens",
         "use --context-lengths 88 or less")),
    "needle tests past the context, by haystack size alone (reference)": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--retrieval-mode", "reference",
                            "--context-lengths", "2000"),
        ("--context-lengths up to 2000 tokens exceed the model's context of 128 tokens",)),
    "huge --n-needles": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--n-needles", "100000000"),
        ("--n-needles must be 1 to 1,000, got 100,000,000",)),
    "zero --n-needles": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--n-needles", "0"),
        ("--n-needles must be 1 to 1,000, got 0",)),
    "more English needles than there are": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--n-needles", "5"),
        ("--n-needles 5: the built-in English set has 2 needles", "--needles FILE.jsonl")),
    "huge --dominance-prompts": Case(
        lambda c: c.measure("--analyses", "text_dominance", "--dominance-prompts", "100000000"),
        ("--dominance-prompts must be 1 to 999, got 100,000,000",)),
    "huge --n-sequences": Case(
        lambda c: c.measure("--analyses", "massive_activations", "--n-sequences", "100000000"),
        ("--n-sequences must be at most 100,000, got 100,000,000",)),
    "huge --pool for soft tokens": Case(
        lambda c: c.measure("--analyses", "text_dominance", "--dominance-modality", "embeds",
                            "--pool", "100000000"),
        ("--pool 100000000 is more than the", "tokens of the haystack text", "use --pool")),
    "non-UTF-8 probe text, listed after a capturing analysis": Case(
        lambda c: c.measure("--analyses", "retrieval_heads,massive_activations", "--context-lengths", "40",
                            "--text", str(c.file("t.txt", "caf\xe9 au lait.\n".encode("latin-1")))),
        ("text file", "is not UTF-8 (bad byte at offset 3)", "re-encode")),
    "missing probe text for activation sparsity, listed after a capturing analysis": Case(
        lambda c: c.measure("--analyses", "retrieval_heads,activation_sparsity", "--context-lengths", "40",
                            "--text", str(c.tmp / "none.txt")),
        ("text file", "does not exist")),
    "haystack given as a directory": Case(
        lambda c: c.measure("--analyses", "retrieval_heads", "--haystack", str(c.tmp)),
        ("haystack file", "is a directory; give a file")),
    "--seq-length past the context, listed after a capturing analysis": Case(
        lambda c: c.measure("--analyses", "retrieval_heads,information_capacity", "--context-lengths", "40",
                            "--seq-length", "500"),
        ("--seq-length 500 exceeds the model's context of 128 tokens", "--seq-length 128 or less")),
    "measure --out is a file": Case(
        lambda c: ["measure", "--model", str(c.model), "--analyses", "superposition", "--out",
                   str(c.file("f.txt", "x"))], ("not a directory",), keep=lambda c: c.tmp / "f.txt"),
    "analyze with an empty analysis list": Case(
        lambda c: ["analyze", str(_massive_capture(c)), "--analyses", ""], ("unknown analysis (none)",)),
    "empty --positions": Case(lambda c: c.capture("--positions", ""), ("bad positions ''", "use all, last")),
    # --out names an input: refused before it could be replaced (with --overwrite, the capture
    # replaced the prompt file; without, the error told the user to pass --overwrite)
    "capture --out is the prompt file, with --overwrite": Case(
        lambda c: c.capture("--overwrite", prompts=c.file("p.txt", "\n".join(prompts(3))),
                            out=c.tmp / "p.txt"),
        ("--out", "p.txt is the --prompts file; give another --out"), keep=lambda c: c.tmp / "p.txt"),
    "capture --out is the prompt file": Case(
        lambda c: c.capture(prompts=c.file("p.txt", "\n".join(prompts(3))), out=c.tmp / "p.txt"),
        ("is the --prompts file",), keep=lambda c: c.tmp / "p.txt"),
    # the command line itself
    "demo with an unknown preset": Case(lambda c: ["demo", "--preset", "gpu", "--out", str(c.tmp / "d")],
                                        ("argument --preset: invalid choice: 'gpu'",)),
    "unknown sub-command": Case(lambda c: ["captur"], ("invalid choice: 'captur'",)),
    "unknown option": Case(lambda c: c.capture("--layer", "1"),
                           ("unrecognized arguments: --layer 1", "scalelens capture --help")),
    "abbreviated option": Case(lambda c: c.capture("--over"), ("unrecognized arguments: --over",)),
    # a trailing slash names a directory: the capture was written as a file named "new"
    "capture --out ending in a slash": Case(
        lambda c: c.capture(out=f"{c.tmp / 'new'}/"),  # type: ignore[arg-type]
        ("new/ names a directory", "new/capture.h5")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ctx, capsys):
    case = CASES[name]
    argv = case.argv(ctx)
    kept = case.keep(ctx) if case.keep else None
    before_tree, before = _tree(ctx.tmp), (_digest(kept) if kept else None)
    with _deadline():
        rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, *case.needles)
    if kept is not None:
        assert _digest(kept) == before, "an existing file was modified"
    assert _tree(ctx.tmp) == before_tree, "something was written"


def test_at_least_25_distinct_bad_inputs():
    assert len(CASES) + len(SWEEP_CASES) + 5 >= 25  # + the stand-alone tests below


def test_debug_shows_the_traceback(ctx, capsys):
    rc, _, err = _run(capsys, ctx.capture("--layers", "9", "--debug"))
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("scalelens: error:")
    rc, _, err = _run(capsys, ["--debug", *ctx.capture("--layers", "9")])
    assert rc == 2 and "Traceback" in err


def test_hub_id_not_in_the_offline_cache(ctx, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rc, _, err = _run(capsys, ctx.capture(model=Path("EleutherAI/pythia-70m")))
    assert_one_line(rc, err, "not in the hub cache", "HF_HUB_OFFLINE")
    assert not ctx.out.exists()


def test_bfloat16_on_a_gpu_without_it(ctx, capsys, monkeypatch):
    """dtype not supported on the device: refused before any model is loaded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("scalelens.models.load.bf16_supported", lambda index: False)
    rc, _, err = _run(capsys, ctx.capture("--device", "cuda", "--dtype", "bfloat16"))
    assert_one_line(rc, err, "does not support bfloat16", "use float16")
    rc, _, err = _run(capsys, ctx.capture("--device", "cuda:3"))
    assert_one_line(rc, err, "1 GPU(s)")
    assert not ctx.out.exists()


def test_attention_free_causal_lm_is_unsupported(ctx, capsys):
    from transformers import MambaConfig, MambaForCausalLM

    d = ctx.tmp / "mamba"
    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2)).save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    rc, _, err = _run(capsys, ctx.capture(model=d))
    assert_one_line(rc, err, "unsupported architecture")


def test_nonfinite_activations_are_flagged_not_averaged(ctx, capsys):
    """A model whose layer 1 overflows: the capture warns, inspect and analyze name the prompts/layers,
    and the massive-activation ratios of the affected layers are absent, not averaged."""
    model = tiny_model()
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.bias[3] = float("inf")
    d = ctx.tmp / "inf_model"
    model.save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    rc, _, err = _run(capsys, ctx.capture("--probes", "resid,massive", model=d))
    assert rc == 0
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warnings and all("NaN/inf" in w for w in warnings) and "layers 1,2" in err
    rc, out, err = _run(capsys, ["inspect", str(ctx.out)])
    assert rc == 0 and "non-finite values" in out and "massive/top_values" in err
    rc, out, err = _run(capsys, ["analyze", str(ctx.out)])
    assert rc == 0
    result = json.loads(out)["out.h5"]["massive_activations"]
    flagged = {(h["probe"], h["dataset"]) for h in result["nonfinite"]}
    assert ("massive", "top_values") in flagged
    assert {layer for h in result["nonfinite"] for layer in h["layers"]} == {1, 2}
    assert all(h["prompts"] == [0, 1, 2, 3, 4] for h in result["nonfinite"])
    ratios = {row["layer"]: row["ratio"] for row in result["per_layer"]}
    assert ratios[0] is not None and ratios[1] is None and ratios[2] is None
    with CaptureFile(ctx.out) as f:  # analyze scans only the probes its analyses read
        assert {h.probe for h in f.nonfinite()} == {"resid", "massive"}
        assert {h.probe for h in f.nonfinite(probes=iter(["massive", "absent"]))} == {"massive"}


def test_float16_storage_overflow_names_store_dtype(ctx, capsys):
    """A float32 model whose residual holds 1e5: float16 storage makes it inf, and the warning
    says so and names the fix; float32 storage keeps the value and warns of nothing."""
    model = tiny_model()
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_4h_to_h.bias[3] = 1e5
    d = ctx.tmp / "big_model"
    model.save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    rc, _, err = _run(capsys, ctx.capture("--probes", "resid", model=d))
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert rc == 0 and len(warnings) == 1 and "probe resid/values" in warnings[0]
    assert "--store-dtype float32" in warnings[0]
    out32 = ctx.tmp / "f32.h5"
    argv = ctx.capture("--probes", "resid", "--store-dtype", "float32", model=d, out=out32)
    rc, _, err = _run(capsys, argv)
    assert rc == 0 and "warning" not in err
    with h5py.File(out32) as f:
        assert np.abs(f["probes/resid/values"][0, 0]).max() > 9e4


# ----------------------------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------------------------


def _spec(c: Ctx, suite: Path, text: str) -> Path:
    return c.file("sweep.toml", f'suite = "{suite}"\n{text}')


SWEEP_CASES: dict[str, tuple[Callable[[Ctx, Path], list[str]], tuple[str, ...]]] = {
    "sweep spec with a typo in a key": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "chekpoints = [8]\n")), "--out", str(c.tmp / "r")],
        ("unknown key(s) chekpoints (did you mean checkpoints?)",)),
    "sweep spec with a wrong type": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, 'sizes = "16k"\n')), "--out", str(c.tmp / "r")],
        ("sizes must be a list",)),
    "sweep spec with an unknown analysis": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, 'analyses = ["massive_activation"]\n')),
                      "--out", str(c.tmp / "r")],
        ("unknown analysis massive_activation", "massive_activations")),
    "sweep spec with an unknown setting": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "[settings]\nn_needle = 1\n")),
                      "--out", str(c.tmp / "r")],
        ("unknown sweep setting(s) n_needle (did you mean n_needles?)",)),
    "sweep spec with a bad setting value": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "[settings]\nbatch_size = 0\n")),
                      "--out", str(c.tmp / "r")],
        ("batch size must be >= 1",)),
    "sweep spec with a gate above 1": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "[settings]\ngate = 2\n")),
                      "--out", str(c.tmp / "r")],
        ("--gate must be at most 1",)),
    "sweep spec that is not TOML": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "sizes = [16k\n")), "--out", str(c.tmp / "r")],
        ("not valid TOML",)),
    "sweep spec missing": (
        lambda c, s: ["sweep", "--spec", str(c.tmp / "none.toml"), "--out", str(c.tmp / "r")],
        ("does not exist",)),
    "sweep spec that is a directory": (  # it said "does not exist"
        lambda c, s: ["sweep", "--spec", str(c.tmp), "--out", str(c.tmp / "r")],
        ("sweep spec", "is a directory; give a TOML file")),
    "sweep with an unknown size": (
        lambda c, s: ["sweep", "--suite", str(s), "--sizes", "16k,17k", "--out", str(c.tmp / "r")],
        ("unknown size(s) 17k", "available: 16k, 37k")),
    "sweep with an unavailable checkpoint": (
        lambda c, s: ["sweep", "--suite", str(s), "--checkpoints", "8,9", "--out", str(c.tmp / "r")],
        ("step(s) [9] not available",)),
    "sweep of a missing suite": (
        lambda c, s: ["sweep", "--suite", str(c.tmp / "suite"), "--out", str(c.tmp / "r")],
        ("does not exist", "scalelens suite build")),
    "sweep with an empty analysis list": (
        lambda c, s: ["sweep", "--suite", str(s), "--analyses", "", "--out", str(c.tmp / "r")],
        ("unknown analysis (none)",)),
    "sweep with an empty size list": (  # it said "sizes is an empty list", not naming --sizes
        lambda c, s: ["sweep", "--suite", str(s), "--sizes", " , ", "--out", str(c.tmp / "r")],
        ("--sizes is empty", "leave it out for all")),
    "sweep with nothing to sweep": (lambda c, s: ["sweep", "--out", str(c.tmp / "r")], ("--suite DIR",)),
    "sweep flags combined with --spec": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, "")), "--sizes", "16k", "--out", str(c.tmp / "r")],
        ("--sizes cannot be combined with --spec",)),
    "unreachable Ray address": (
        lambda c, s: ["sweep", "--suite", str(s), "--executor", "ray", "--address", "127.0.0.1:9",
                      "--out", str(c.tmp / "r")],
        ("cannot reach the Ray cluster at 127.0.0.1:9", "ray start --head")),
    "malformed Ray address": (
        lambda c, s: ["sweep", "--suite", str(s), "--executor", "ray", "--address", "headnode",
                      "--out", str(c.tmp / "r")],
        ("bad Ray address 'headnode'", "HOST:PORT")),
    "Ray address without the Ray executor": (
        lambda c, s: ["sweep", "--suite", str(s), "--address", "127.0.0.1:6379", "--out", str(c.tmp / "r")],
        ("--address is for --executor ray",)),
    "sweep --model without a size": (
        lambda c, s: ["sweep", "--model", str(s / "16k"), "--out", str(c.tmp / "r")],
        ("--model wants SIZE=SOURCE",)),
    "sweep --model naming one size twice": (
        lambda c, s: ["sweep", "--model", f"a={s / '16k'}", "--model", f"a={s / '37k'}",
                      "--out", str(c.tmp / "r")],
        ("gives size a twice",)),
    "sweep --model of a missing path": (
        lambda c, s: ["sweep", "--model", f"a={c.tmp / 'none'}", "--out", str(c.tmp / "r")],
        ("size a: model path", "does not exist")),
    "sweep --model with --suite": (
        lambda c, s: ["sweep", "--model", f"a={s / '16k'}", "--suite", str(s), "--out", str(c.tmp / "r")],
        ("not allowed with argument",)),
    "sweep spec with a models entry that is not a path": (
        lambda c, s: ["sweep", "--spec", str(c.file("m.toml", "[models]\na = 3\n")),
                      "--out", str(c.tmp / "r")],
        ("model of size a must be a path or hub id",)),
    "sweep spec with models and a suite": (
        lambda c, s: ["sweep", "--spec", str(_spec(c, s, f'[models]\na = "{s / "16k"}"\n')),
                      "--out", str(c.tmp / "r")],
        ("exactly one of suite=DIR", "--suite DIR, --family pythia or --model SIZE=SOURCE",)),
    "sweep --tokenizer that does not exist": (
        lambda c, s: ["sweep", "--suite", str(s), "--tokenizer", str(c.tmp / "tok"),
                      "--out", str(c.tmp / "r")],
        ("tokenizer path", "tok does not exist")),
    "sweep --out is a file": (
        lambda c, s: ["sweep", "--suite", str(s), "--checkpoints", "final", "--sizes", "16k",
                      "--out", str(c.file("r", "x"))],
        ("is not a directory",)),
}


@pytest.mark.parametrize("name", list(SWEEP_CASES))
def test_bad_sweep_input(name, ctx, micro_suite, capsys):
    build, needles = SWEEP_CASES[name]
    argv = build(ctx, micro_suite)
    suite_before = _tree(micro_suite)
    before = _tree(ctx.tmp)
    with _deadline():
        rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, *needles)
    assert _tree(ctx.tmp) == before, "something was written"
    assert _tree(micro_suite) == suite_before


def test_sweep_refuses_to_resume_with_other_settings(ctx, micro_suite, capsys):
    run = ctx.tmp / "run"
    base = ["sweep", "--suite", str(micro_suite), "--sizes", "16k", "--checkpoints", "final",
            "--out", str(run)]
    rc, _, err = _run(capsys, [*base, "--analyses", "superposition"])
    assert rc == 0, err
    before = _tree(run)
    rc, _, err = _run(capsys, [*base, "--analyses", "superposition,massive_activations"])
    assert_one_line(rc, err, "holds a sweep with different analyses", "--overwrite")
    assert _tree(run) == before


def test_sweep_refuses_to_resume_on_a_rebuilt_suite(ctx, micro_suite, capsys):
    """A suite rebuilt in place with other settings holds other models under the same task
    keys: resuming would mix its results with the old models'."""
    suite = ctx.tmp / "suite"
    shutil.copytree(micro_suite, suite)
    run = ctx.tmp / "run"
    argv = ["sweep", "--suite", str(suite), "--sizes", "16k", "--checkpoints", "final",
            "--analyses", "superposition", "--out", str(run)]
    rc, _, err = _run(capsys, argv)
    assert rc == 0, err
    recorded = json.loads((run / "sweep_spec.json").read_text())
    manifest = json.loads((suite / "manifest.json").read_text())
    assert recorded["suite_build"] == manifest["settings_hash"]
    manifest["settings_hash"] = "0" * 16  # what a rebuild with other settings changes
    (suite / "manifest.json").write_text(json.dumps(manifest))
    before = _tree(run)
    rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, "suite build settings", "--overwrite")
    assert _tree(run) == before
    rc, out, err = _run(capsys, [*argv, "--overwrite"])
    assert rc == 0 and "1 done" in out, err


def test_a_second_sweep_into_a_busy_run_directory_is_refused(ctx, micro_suite, capsys):
    """Two sweeps in one run directory mixed their tasks (an --overwrite deleted the other's
    finished work under it): while one holds the run directory, another is refused."""
    from scalelens.cache.lock import WriteLock

    run = ctx.tmp / "run"
    argv = ["sweep", "--suite", str(micro_suite), "--sizes", "16k", "--checkpoints", "final",
            "--analyses", "superposition", "--out", str(run)]
    assert _run(capsys, argv)[0] == 0
    before = _tree(run)
    lock = WriteLock(run, writer="sweep", lock_path=run / ".sweep.lock").acquire()  # as a running sweep
    try:
        for extra in ([], ["--overwrite"], ["--analyses", "massive_activations", "--overwrite"]):
            rc, _, err = _run(capsys, [*argv, *extra])
            assert_one_line(rc, err, "is being written by another sweep", f"process {os.getpid()}")
    finally:
        lock.release()
    assert _tree(run) == before
    rc, out, err = _run(capsys, argv)
    assert rc == 0 and "1 skipped" in out, err
    assert not (run / ".sweep.lock").exists()


def test_sweep_refuses_a_run_directory_of_an_older_or_newer_scalelens(ctx, micro_suite, capsys):
    """A run directory whose finished tasks were measured otherwise is not resumed.

    scalelens up to and including commit d5a6072 wrote sweep_spec.json without a
    results_format (its version stayed 0.1.0) while what a task measures changed under it: a
    run started at commit 0fa65f1 and resumed at d5a6072 mixed text-dominance rows of 29 and
    16 other-text tokens in one metrics.csv. Such a directory, or one of a newer format, is
    one clear line that leaves it untouched; --overwrite starts it afresh.
    """
    from scalelens.measure.run import RESULTS_FORMAT

    run = ctx.tmp / "run"
    argv = ["sweep", "--suite", str(micro_suite), "--sizes", "16k,37k", "--checkpoints", "final",
            "--analyses", "superposition", "--out", str(run)]
    assert _run(capsys, argv)[0] == 0
    path = run / "sweep_spec.json"
    recorded = json.loads(path.read_text())
    assert recorded["results_format"] == RESULTS_FORMAT
    done = sorted(run.glob("tasks/*/*/results.json"))
    assert [json.loads(p.read_text())["results_format"] for p in done] == [RESULTS_FORMAT] * 2
    done[0].unlink()  # as an interrupted sweep leaves it
    older = {k: v for k, v in recorded.items() if k != "results_format"}  # as d5a6072 wrote it
    for written, said in ((older, "written by an older scalelens (no results format"),
                          ({**recorded, "results_format": RESULTS_FORMAT + 1}, "upgrade scalelens"),
                          ({**recorded, "results_format": "1"}, "not a whole number")):
        path.write_text(json.dumps(written))
        before = _tree(run)
        rc, _, err = _run(capsys, argv)
        assert_one_line(rc, err, said, "--overwrite")
        assert _tree(run) == before
    path.write_text(json.dumps(older))
    rc, out, err = _run(capsys, [*argv, "--overwrite"])
    assert rc == 0 and "2 done, 0 skipped" in out, err
    assert json.loads(path.read_text()) == recorded


def test_sweep_overwrite_leaves_nothing_of_the_old_run(ctx, micro_suite, capsys):
    """--overwrite starts afresh: when no task of the new sweep finishes, the old run's
    metrics.csv, fits.json and report may not pass for the new run's."""
    run = ctx.tmp / "run"
    base = ["sweep", "--suite", str(micro_suite), "--sizes", "16k", "--checkpoints", "final",
            "--out", str(run)]
    rc, _, err = _run(capsys, [*base, "--analyses", "superposition"])
    assert rc == 0 and (run / "metrics.csv").is_file(), err
    (run / "report.html").write_text("old report")
    hay = ctx.file("haystack.txt", "")  # an empty haystack: every retrieval task fails
    spec = ctx.file("s.toml", f'suite = "{micro_suite}"\nsizes = ["16k"]\ncheckpoints = "final"\n'
                              f'analyses = ["retrieval_heads"]\n[settings]\nhaystack = "{hay}"\n')
    argv = ["sweep", "--spec", str(spec), "--out", str(run), "--overwrite"]
    rc, _, err = _run(capsys, argv)
    assert rc == 2 and "no task finished" in err, err
    left = sorted(p.name for p in run.iterdir())
    assert not {"metrics.csv", "metrics.parquet", "fits.json", "report.html"} & set(left), left


# ----------------------------------------------------------------------------------------
# following the fix: a hint that names settings must name settings that work
# ----------------------------------------------------------------------------------------


def _follow(argv: list[str], line: str) -> list[str]:
    """``argv`` with the ``--option N`` pairs of the error line's fix (its last ``; `` part) applied."""
    pairs = re.findall(r"(--[a-z-]+) (\d+)", line.rsplit("; ", 1)[-1])
    assert pairs, f"the fix names no setting: {line}"
    argv = list(argv)
    for option, value in pairs:
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv


def _fixed_by_its_hint(capsys, argv: list[str], *needles: str) -> list[str]:
    """Run ``argv`` (refused with one line holding ``needles``), then as its fix says; the second succeeds."""
    rc, _, err = _run(capsys, argv)
    fixed = _follow(argv, assert_one_line(rc, err, *needles))
    rc, out, err = _run(capsys, fixed)
    assert rc == 0, f"following the fix ({fixed}) failed:\n{err}"
    assert "wrote" in out
    return fixed


def test_short_context_default_haystacks_hint_fits(ctx, micro_suite, capsys):
    """A 64-token model: the default sizes are refused naming a --context-lengths that fits
    beside the needles (it said 16, and 16 gave tests of 71 tokens)."""
    argv = ["measure", "--model", str(micro_suite / "16k"), "--analyses", "retrieval_heads",
            "--out", str(ctx.tmp / "m")]
    fixed = _fixed_by_its_hint(capsys, argv, "too short for the default haystack sizes", "--context-lengths")
    size = int(fixed[fixed.index("--context-lengths") + 1])
    rc, _, err = _run(capsys, [*argv[:-1], str(ctx.tmp / "m2"), "--context-lengths", str(size + 1)])
    assert_one_line(rc, err, "exceed the model's context of 64 tokens", f"--context-lengths {size} or less")


@pytest.mark.parametrize("mode, lengths",
                         [("fast", "20,120"), ("reference", "2000"), ("fast", "20,100000000")])
def test_context_lengths_past_the_context_hint_fits(ctx, capsys, mode, lengths):
    _fixed_by_its_hint(capsys, ctx.measure("--analyses", "retrieval_heads", "--retrieval-mode", mode,
                                           "--context-lengths", lengths),
                       "exceed the model's context of 128 tokens", "or less")


def test_too_many_built_in_needles_hint_fits(ctx, micro_suite, capsys):
    """No haystack fits beside all four synthetic needles in 64 tokens: fewer needles do."""
    argv = ["measure", "--model", str(micro_suite / "16k"), "--analyses", "retrieval_heads",
            "--n-needles", "4", "--context-lengths", "8", "--out", str(ctx.tmp / "m")]
    fixed = _fixed_by_its_hint(capsys, argv, "no haystack fits beside all 4 needles", "--n-needles")
    assert 1 <= int(fixed[fixed.index("--n-needles") + 1]) < 4


def test_needle_file_hint_names_the_needle_too_long(ctx, micro_suite, capsys):
    """A needle file whose second needle alone overflows the context: the line names it, and
    without it the measure runs."""
    short = '{"needle": "the code of bob is 1 .", "question": "what is the code of bob ?", "answer": "1"}\n'
    long = json.dumps({"needle": "word " * 60 + "the code of al is 2 .",
                       "question": "what is the code of al ?", "answer": "2"}) + "\n"
    argv = ["measure", "--model", str(micro_suite / "16k"), "--analyses", "retrieval_heads",
            "--needles", str(ctx.file("n.jsonl", short + long)), "--out", str(ctx.tmp / "m")]
    rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, "needle(s) number 2 of", "leave no room for a haystack")
    argv[argv.index("--needles") + 1] = str(ctx.file("n1.jsonl", short))
    rc, _, err = _run(capsys, argv)
    assert rc == 0, err


@pytest.mark.parametrize("dilutions", ["1,100", "1,40"])
def test_dilution_too_large_hint_fits(ctx, capsys, dilutions):
    """The largest dilution named fits (``smaller --dilutions`` sent users from 100 to 40: refused too)."""
    fixed = _fixed_by_its_hint(capsys, ctx.measure("--analyses", "text_dominance", "--dilutions", dilutions),
                               "too short for a x", "or less")
    largest = int(fixed[fixed.index("--dilutions") + 1])
    rc, _, err = _run(capsys, ctx.measure("--analyses", "text_dominance", "--dilutions", f"1,{largest + 1}"))
    assert_one_line(rc, err, f"--dilutions {largest} or less")


def _command_in(line: str, out: Path) -> list[str]:
    """The argv of the backticked ``scalelens ...`` command an error line names, ``DIR`` as ``out``."""
    found = re.search(r"`scalelens ([^`]*)`", line)
    assert found, f"no command in: {line}"
    return [str(out) if word == "DIR" else word for word in shlex.split(found.group(1))]


@pytest.mark.parametrize("analysis", ["superposition", "massive_activations"])
def test_analyze_names_a_measure_command_that_runs(ctx, capsys, analysis):
    """``analyze`` of a capture that cannot give ``analysis`` names the ``measure`` command that can,
    with the capture's model (it named ``scalelens measure --analyses X``: no --model, no --out)."""
    rc, _, err = _run(capsys, ["analyze", str(ctx.copy_complete()), "--analyses", analysis])
    argv = _command_in(assert_one_line(rc, err, "scalelens measure --model"), ctx.tmp / "m")
    assert argv[argv.index("--model") + 1] == str(ctx.model)
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    assert analysis in json.loads((ctx.tmp / "m" / "results.json").read_text())["analyses"]


def _empty_path_argv(name: str, c: Ctx, suite: Path) -> list[str]:
    run = c.tmp / "run"
    (run / "metrics.csv").parent.mkdir()
    (run / "metrics.csv").write_text("model,size,revision,step,n_params,n_params_non_embedding,analysis,"
                                     "metric,layer,head,value\n")
    return {
        "report --out": ["report", str(run), "--out", ""],
        "measure --out": ["measure", "--model", str(c.model), "--analyses", "superposition", "--out", ""],
        "sweep --out": ["sweep", "--suite", str(suite), "--sizes", "16k", "--checkpoints", "final",
                        "--analyses", "superposition", "--out", ""],
        "inspect": ["inspect", ""],
    }[name]


@pytest.mark.parametrize("name", ["report --out", "measure --out", "sweep --out", "inspect"])
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(name, ctx, micro_suite, capsys,
                                                                     monkeypatch):
    """``Path("")`` is ``.``: ``--out ""`` (an unset ``$RUN`` in ``--out "$RUN"``) wrote a measure's or
    a sweep's output into the working directory, and ``report --out ""`` was an internal error
    (ValueError: PosixPath('.') has an empty name). Each is one argument error naming the option."""
    argv = _empty_path_argv(name, ctx, micro_suite)
    monkeypatch.chdir(ctx.tmp)
    before = _tree(ctx.tmp)
    rc, _, err = _run(capsys, argv)
    option = "--out" if "--out" in name else "FILE_OR_RUN"
    assert_one_line(rc, err, f"argument {option}: empty path")
    assert _tree(ctx.tmp) == before, "something was written"


def test_sweep_refuses_finished_tasks_without_a_recorded_spec(ctx, micro_suite, capsys):
    """A run directory with finished tasks but no sweep_spec.json is not adopted.

    scalelens's demo (before commit 658d448) and sweep() from Python (before c59702f) wrote
    no sweep_spec.json, and their results.json no results_format: a sweep of the current
    scalelens into such a directory recorded its own spec and skipped the 8 finished tasks of
    a sweep() made at commit 1422d7c, whose information capacity (flops_per_token 19619.7 where
    this one measures 19264.0) went into metrics.csv beside its own. It is one line that
    leaves the directory untouched; --overwrite starts afresh. Tasks that left only an
    error.log finished nothing: such a directory is swept into.
    """
    from scalelens.measure.run import RESULTS_FORMAT

    run = ctx.tmp / "run"
    (run / "tasks" / "16k" / "step24").mkdir(parents=True)
    (run / "tasks" / "16k" / "step24" / "error.log").write_text("OSError: boom\n")
    argv = ["sweep", "--suite", str(micro_suite), "--sizes", "16k,37k", "--checkpoints", "final",
            "--analyses", "superposition", "--out", str(run)]
    rc, out, err = _run(capsys, argv)
    assert rc == 0 and "2 done, 0 skipped" in out, err
    (run / "sweep_spec.json").unlink()
    done = sorted(run.glob("tasks/*/*/results.json"))
    current = [json.loads(p.read_text()) for p in done]
    for said, fmt in (("holds finished tasks but no sweep_spec.json", RESULTS_FORMAT),
                      ("written by an older scalelens (no sweep_spec.json; its finished tasks "
                       "record no results format", None),
                      ("written by a newer scalelens", RESULTS_FORMAT + 1)):
        for path, data in zip(done, current, strict=True):
            data = {k: v for k, v in data.items() if k != "results_format"}
            path.write_text(json.dumps(data if fmt is None else {**data, "results_format": fmt}))
        before = _tree(run)
        rc, _, err = _run(capsys, argv)
        assert_one_line(rc, err, said, "--overwrite")
        assert _tree(run) == before
    rc, out, err = _run(capsys, [*argv, "--overwrite"])
    assert rc == 0 and "2 done, 0 skipped" in out, err
    assert [json.loads(p.read_text())["results_format"] for p in done] == [RESULTS_FORMAT] * 2



def test_sweep_refuses_tasks_an_older_scalelens_measured_with_other_settings(ctx, micro_suite, capsys):
    """A finished task measured with settings this scalelens reads otherwise is not resumed.

    Up to commit 4d1efa1 (results format 2 throughout) ``context_lengths = [16, 16, 32]``
    measured every 16-token needle test twice: a run made at f6a1df3 recorded [16, 16, 32]
    and 30 tests in its tasks' results.json, and the current scalelens resumed it, adding
    tasks of 20 tests ([16, 32]) to the same run. The spec recorded in sweep_spec.json is
    the same either way; each task's results.json tells. One line, nothing changed;
    --overwrite starts afresh.
    """
    run = ctx.tmp / "run"
    spec = ctx.file("s.toml", f'suite = "{micro_suite}"\nsizes = ["16k"]\ncheckpoints = "final"\n'
                              'analyses = ["superposition"]\n[settings]\ncontext_lengths = [16, 16, 32]\n')
    argv = ["sweep", "--spec", str(spec), "--out", str(run)]
    rc, out, err = _run(capsys, argv)
    assert rc == 0 and "1 done" in out, err
    (done,) = run.glob("tasks/*/*/results.json")
    data = json.loads(done.read_text())
    assert data["settings"]["retrieval"]["context_lengths"] == [16, 32]
    rc, out, err = _run(capsys, argv)
    assert rc == 0 and "0 done, 1 skipped" in out, err
    data["settings"]["retrieval"]["context_lengths"] = [16, 16, 32]  # as f6a1df3 recorded it
    done.write_text(json.dumps(data))
    before = _tree(run)
    rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, "measured with retrieval context_lengths [16, 16, 32]", "[16, 32]",
                    "--overwrite")
    assert _tree(run) == before
    rc, out, err = _run(capsys, [*argv, "--overwrite"])
    assert rc == 0 and "1 done, 0 skipped" in out, err


@pytest.mark.parametrize("name", ["measure", "sweep", "suite build", "report"])
def test_an_out_with_a_name_too_long_leaves_no_directory_behind(name, ctx, micro_suite, capsys):
    """``--out x/<300 characters>/y``: one line (File name too long) and nothing made; the
    directories before the long name (``x``) were made and left behind, empty."""
    out = ctx.tmp / "x" / ("a" * 300) / "y"
    run = ctx.tmp / "run"
    sweep = ["sweep", "--suite", str(micro_suite), "--sizes", "16k", "--checkpoints", "final",
             "--analyses", "superposition", "--out"]
    if name == "report":
        assert _run(capsys, [*sweep, str(run)])[0] == 0
    argv = {
        "measure": ["measure", "--model", str(ctx.model), "--analyses", "superposition", "--out", str(out)],
        "sweep": [*sweep, str(out)],
        "suite build": ["suite", "build", "--preset", "micro", "--out", str(out)],
        "report": ["report", str(run), "--out", str(out / "r.html")],
    }[name]
    before = _tree(ctx.tmp)
    rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, "File name too long")
    assert _tree(ctx.tmp) == before, "something was written"


@pytest.mark.parametrize("name", ["capture", "measure", "sweep", "suite build", "demo"])
def test_an_out_of_dash_is_refused_as_report_refuses_it(name, ctx, micro_suite, capsys, monkeypatch):
    """``--out -`` is no stdout: ``capture`` wrote a file named ``-`` and ``measure`` a directory so
    named, while ``report --out -`` was refused. Each is now one argument error, nothing written;
    ``./-`` names such a path."""
    argv = {
        "capture": ctx.capture(out=Path("-")),
        "measure": ["measure", "--model", str(ctx.model), "--analyses", "superposition", "--out", "-"],
        "sweep": ["sweep", "--suite", str(micro_suite), "--sizes", "16k", "--checkpoints", "final",
                  "--analyses", "superposition", "--out", "-"],
        "suite build": ["suite", "build", "--preset", "micro", "--out", "-"],
        "demo": ["demo", "--suite", str(micro_suite), "--out", "-"],
    }[name]
    monkeypatch.chdir(ctx.tmp)
    before = _tree(ctx.tmp)
    rc, _, err = _run(capsys, argv)
    assert_one_line(rc, err, "argument --out: - is not stdout here", "./- for one named -")
    assert _tree(ctx.tmp) == before, "something was written"
    if name == "capture":
        dash = ctx.capture("--probes", "resid")
        dash[dash.index("--out") + 1] = "./-"  # Path("./-") would be "-" again
        rc, _, err = _run(capsys, dash)
        assert rc == 0 and (ctx.tmp / "-").is_file(), err


def test_size_labels_that_differ_only_in_case_are_refused(ctx, capsys):
    """``--model Small=A --model small=B`` made tasks/Small and tasks/small: one directory on a
    case-insensitive file system (a macOS laptop), where the second size's task was 'skipped' as
    done with the first one's results. So was a rerun naming a recorded size in another case.
    Each is one line, nothing written."""
    run = ctx.tmp / "run"
    sweep = ["sweep", "--checkpoints", "final", "--analyses", "superposition", "--out", str(run)]
    before = _tree(ctx.tmp)
    rc, _, err = _run(capsys, [*sweep, "--model", f"Small={ctx.model}", "--model", f"small={ctx.other}"])
    assert_one_line(rc, err, "size labels Small and small differ only in case", "case-insensitive")
    assert _tree(ctx.tmp) == before, "something was written"
    rc, out, err = _run(capsys, [*sweep, "--model", f"Small={ctx.model}"])
    assert rc == 0 and "1 done" in out, err
    before = _tree(ctx.tmp)
    rc, _, err = _run(capsys, [*sweep, "--model", f"small={ctx.other}"])
    assert_one_line(rc, err, f"{run} holds a sweep with size Small, and size small differs from it "
                    "only in case")
    assert _tree(ctx.tmp) == before, "something was written"
