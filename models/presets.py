"""Shapes, data and schedules of the mini Pythia-style suites (``default``, ``micro``, ``gpu``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from transformers import GPTNeoXConfig

from ..errors import ScalelensError
from .corpus import CorpusConfig
from .params import count_parameters
from .train import TrainConfig


@dataclass(frozen=True)
class SizeSpec:
    """Shape of one suite member; everything else follows Pythia.

    Attributes:
        n_layers: Decoder layers.
        d_model: Residual width; the MLP is ``4 * d_model`` wide.
        n_heads: Attention heads (``d_model`` must divide evenly).
    """

    n_layers: int
    d_model: int
    n_heads: int

    def __post_init__(self) -> None:
        if min(self.n_layers, self.d_model, self.n_heads) < 1 or self.d_model % self.n_heads:
            raise ScalelensError(
                f"bad size {self.shape}: need positive layers/width/heads with width divisible by heads"
            )
        if (self.d_model // self.n_heads) < 8:
            raise ScalelensError(f"size {self.shape} has heads narrower than 8; use fewer heads")

    @property
    def shape(self) -> str:
        """``LAYERSxWIDTHxHEADS``, the form ``parse_size`` accepts."""
        return f"{self.n_layers}x{self.d_model}x{self.n_heads}"

    def config(self, vocab_size: int, max_position: int) -> GPTNeoXConfig:
        """Pythia-shaped GPT-NeoX config: parallel residual, 25% rotary, untied embeddings."""
        kwargs: dict[str, Any] = {
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": 4 * self.d_model,
            "vocab_size": vocab_size,
            "rotary_pct": 0.25,
            "max_position_embeddings": max_position,
            "use_parallel_residual": True,
            "tie_word_embeddings": False,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 1,
            "attn_implementation": "sdpa",
        }
        return GPTNeoXConfig(**kwargs)


def parse_size(text: str) -> SizeSpec:
    """Parse ``LAYERSxWIDTHxHEADS`` (e.g. ``4x128x8``) into a ``SizeSpec``."""
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text.strip())
    if not m:
        raise ScalelensError(f"bad size {text!r}; use a preset size name or LAYERSxWIDTHxHEADS like 4x128x8")
    return SizeSpec(*(int(g) for g in m.groups()))


def size_name(n_params: int) -> str:
    """Name a size by its total parameter count, Pythia style (``91k``, ``1.1m``)."""
    for unit, scale in (("b", 1e9), ("m", 1e6), ("k", 1e3)):
        if n_params >= scale:
            value = n_params / scale
            text = f"{value:.2g}" if value < 10 else f"{round(value)}"
            return f"{text}{unit}"
    return str(n_params)


def checkpoint_steps(total_steps: int, every: int) -> list[int]:
    """Pythia's schedule scaled down: 0, powers of two below ``every``, then multiples of it.

    Pythia itself is ``checkpoint_steps(143000, 1000)``.
    """
    if total_steps < 1 or every < 1:
        raise ScalelensError("total_steps and checkpoint interval must be >= 1")
    log_part = [2**i for i in range(64) if 2**i < min(every, total_steps + 1)]
    linear = list(range(every, total_steps + 1, every))
    steps = sorted({0, *log_part, *linear, total_steps})
    return steps


@dataclass(frozen=True)
class SuitePreset:
    """Everything that determines a suite apart from the seed and the corpus file.

    Attributes:
        name: Preset name.
        sizes: Shapes, smallest first.
        train: Optimisation settings shared by all sizes.
        corpus: Built-in corpus settings (ignored when a corpus file is given).
        vocab_size: Tokenizer vocabulary; the embedding matrices have exactly this many rows.
        checkpoint_every: Linear checkpoint interval (see ``checkpoint_steps``).
        valid_fraction: Share of documents held out for the validation loss.
        device: Device a build uses unless told otherwise.
        workers: Parallel single-threaded training processes on CPU; ``None`` means one
            per core (capped by the number of sizes).
    """

    name: str
    sizes: tuple[SizeSpec, ...]
    train: TrainConfig
    corpus: CorpusConfig
    vocab_size: int
    checkpoint_every: int
    valid_fraction: float = 0.05
    device: str = "cpu"
    workers: int | None = None

    def steps(self) -> list[int]:
        """Checkpoint steps of this preset."""
        return checkpoint_steps(self.train.total_steps, self.checkpoint_every)

    def with_seed(self, seed: int) -> SuitePreset:
        """The same preset with ``seed`` for init, batch order and corpus."""
        return replace(self, train=replace(self.train, seed=seed), corpus=replace(self.corpus, seed=seed))

    def size_configs(self) -> dict[str, GPTNeoXConfig]:
        """Configs keyed by size name, smallest first."""
        out: dict[str, GPTNeoXConfig] = {}
        for spec in self.sizes:
            cfg = spec.config(self.vocab_size, self.train.seq_len)
            name = size_name(count_parameters(cfg)[0])
            if name in out:
                raise ScalelensError(f"two sizes are both named {name}; make their shapes differ more")
            out[name] = cfg
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "name": self.name,
            "sizes": [s.shape for s in self.sizes],
            "train": self.train.to_dict(),
            "corpus": self.corpus.to_dict(),
            "vocab_size": self.vocab_size,
            "checkpoint_every": self.checkpoint_every,
            "valid_fraction": self.valid_fraction,
        }


PRESETS: dict[str, SuitePreset] = {
    "default": SuitePreset(
        name="default",
        sizes=(SizeSpec(2, 32, 2), SizeSpec(2, 64, 4), SizeSpec(3, 96, 6), SizeSpec(4, 128, 8)),
        train=TrainConfig(total_steps=160, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=10),
        corpus=CorpusConfig(n_docs=6000),
        vocab_size=1024,
        checkpoint_every=20,
    ),
    "micro": SuitePreset(
        name="micro",
        sizes=(SizeSpec(1, 16, 2), SizeSpec(1, 32, 4), SizeSpec(2, 32, 4), SizeSpec(2, 48, 6)),
        train=TrainConfig(total_steps=24, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=4),
        corpus=CorpusConfig(n_docs=300, n_words=300, n_names=50),
        vocab_size=384,
        checkpoint_every=8,
        workers=1,
    ),
    "gpu": SuitePreset(
        name="gpu",
        sizes=(
            SizeSpec(6, 128, 4),
            SizeSpec(6, 256, 8),
            SizeSpec(6, 512, 8),
            SizeSpec(12, 768, 12),
        ),
        train=TrainConfig(total_steps=4000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=100),
        corpus=CorpusConfig(n_docs=400_000, n_words=5000, n_names=2000),
        vocab_size=4096,
        checkpoint_every=250,
        device="cuda",
        workers=1,
    ),
}


def get_preset(name: str) -> SuitePreset:
    """Look up a preset by name (``default``, ``micro`` or ``gpu``)."""
    if name not in PRESETS:
        raise ScalelensError(f"unknown suite preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def select_sizes(preset: SuitePreset, sizes: list[str] | None) -> SuitePreset:
    """Restrict or replace a preset's sizes.

    Args:
        preset: The preset.
        sizes: Names from ``preset.size_configs()`` or ``LAYERSxWIDTHxHEADS`` shapes;
            ``None`` keeps all.

    Returns:
        The preset with the chosen sizes, ordered by parameter count.
    """
    if not sizes:
        return preset
    by_name = dict(zip(preset.size_configs(), preset.sizes, strict=True))
    chosen = [by_name[s] if s in by_name else _parse_or_explain(s, by_name) for s in sizes]
    chosen = sorted(
        set(chosen), key=lambda s: count_parameters(s.config(preset.vocab_size, preset.train.seq_len))[0]
    )
    return replace(preset, sizes=tuple(chosen))


def _parse_or_explain(text: str, by_name: dict[str, SizeSpec]) -> SizeSpec:
    if re.fullmatch(r"\d+x\d+x\d+", text.strip()):
        return parse_size(text)
    raise ScalelensError(
        f"unknown size {text!r}; use one of {', '.join(by_name)} or LAYERSxWIDTHxHEADS like 4x128x8"
    )
