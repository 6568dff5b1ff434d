"""What every pipeline of the benchmark runs on: one model, one tokenizer, one prompt set.

The model is a random-init GPT-NeoX at a real Pythia config (compute does not depend on
weight values). The tokenizer is a word-level one over ``t0 ... t{V-3}`` so prompts are
plain strings every library tokenizes to the same ids, right-padded, no special tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from scalelens.models.describe import describe
from scalelens.models.info import ModelInfo
from scalelens.models.pythia import PYTHIA_CONFIGS, pythia_config

PAD, EOS = "[PAD]", "[EOS]"


def config_problem(name: str) -> str | None:
    """Why ``name`` is no known Pythia config (``pythia-70m`` or ``70m``); None when it is one."""
    if name.removeprefix("pythia-") in PYTHIA_CONFIGS:
        return None
    return f"unknown model config {name!r}; use pythia-{{{','.join(PYTHIA_CONFIGS)}}}"


def config_name(name: str) -> str:
    """``pythia-70m`` or ``70m`` -> ``70m`` (checked against the known Pythia sizes)."""
    problem = config_problem(name)
    if problem:
        raise SystemExit(problem)
    return name.removeprefix("pythia-")


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: ``t<i>`` -> i, then [PAD], [EOS]."""
    vocab = {f"t{i}": i for i in range(vocab_size - 2)}
    vocab.update({PAD: vocab_size - 2, EOS: vocab_size - 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=EOS, pad_token=PAD, eos_token=EOS, padding_side="right"
    )


@dataclass
class Loaded:
    """What ``scalelens.capture`` needs of a loaded model: the model, its tokenizer, its info."""

    model: Any
    tokenizer: Any
    info: ModelInfo


def build_model(size: str, device: str, dtype: torch.dtype, seed: int = 0) -> Loaded:
    """Random-init Pythia ``size`` with SDPA attention, eval mode, on ``device``."""
    cfg = pythia_config(size)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: a 1.4b model's CPU init takes minutes
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    model = model.to(device).eval()
    info = describe(cfg, name=f"pythia-{size}", source="<random init>", source_kind="memory", revision=None,
                    step=None, dtype=str(dtype).removeprefix("torch."), attn_implementation="sdpa")
    return Loaded(model, word_tokenizer(cfg.vocab_size), info)


def twin(loaded: Loaded) -> Any:
    """A deep copy of the model for a library that rewires the modules it wraps."""
    return copy.deepcopy(loaded.model).eval()


@dataclass(frozen=True)
class Prompts:
    """The prompt set: strings, and the same ids pre-tokenized for the floor.

    Attributes:
        texts: Prompt strings.
        ids: (prompt, seq) int64 right-padded with the pad id.
        lengths: (prompt,) real tokens per prompt.
    """

    texts: list[str]
    ids: np.ndarray
    lengths: np.ndarray

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens in the whole set."""
        return int(self.lengths.sum())

    def part(self, start: int, stop: int) -> Prompts:
        """Prompts ``start:stop``."""
        return Prompts(self.texts[start:stop], self.ids[start:stop], self.lengths[start:stop])

    def batches(self, batch_size: int) -> list[tuple[int, int, int]]:
        """``(start, stop, width)`` per batch, in order; width = longest prompt in the batch."""
        n = len(self.texts)
        return [
            (a, min(n, a + batch_size), int(self.lengths[a : a + batch_size].max()))
            for a in range(0, n, batch_size)
        ]


def make_prompts(n: int, seq: int, vocab_size: int, seed: int = 0) -> Prompts:
    """``n`` prompts of random words, lengths uniform in [3/4 seq, seq]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, (3 * seq) // 4), seq + 1, size=n)
    ids = np.full((n, seq), vocab_size - 2, dtype=np.int64)
    texts = []
    for i, m in enumerate(lengths):
        row = rng.integers(0, vocab_size - 2, size=int(m))
        ids[i, :m] = row
        texts.append(" ".join(f"t{t}" for t in row))
    return Prompts(texts, ids, lengths.astype(np.int64))
