"""The public Pythia suite: configs built from its published hyperparameters, and its steps."""

from __future__ import annotations

import re
from typing import Any

from transformers import GPTNeoXConfig

from ..errors import ScalelensError

_SHAPES: dict[str, tuple[int, int, int, int]] = {
    # size: (num_hidden_layers, hidden_size, num_attention_heads, vocab_size)
    "14m": (6, 128, 4, 50304),
    "31m": (6, 256, 8, 50304),
    "70m": (6, 512, 8, 50304),
    "160m": (12, 768, 12, 50304),
    "410m": (24, 1024, 16, 50304),
    "1b": (16, 2048, 8, 50304),
    "1.4b": (24, 2048, 16, 50304),
    "2.8b": (32, 2560, 32, 50304),
    "6.9b": (32, 4096, 32, 50432),
    # 12b's embedding matrices are padded further than 6.9b's (50688 rows): with 50432
    # the total comes out 2,621,440 = 2 * 5120 * 256 short of the published count.
    "12b": (36, 5120, 40, 50688),
}


def _config_dict(layers: int, width: int, heads: int, vocab: int) -> dict[str, Any]:
    return {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "vocab_size": vocab,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "max_position_embeddings": 2048,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


PYTHIA_CONFIGS: dict[str, dict[str, Any]] = {size: _config_dict(*shape) for size, shape in _SHAPES.items()}
"""GPTNeoXConfig keyword arguments per Pythia size (``70m`` ... ``12b``)."""

PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**i for i in range(10)) + tuple(range(1000, 143001, 1000))
"""The 154 public checkpoint steps: 0, 1, 2, 4, ..., 512, 1000, 2000, ..., 143000."""


def pythia_config(size: str) -> GPTNeoXConfig:
    """Build the ``GPTNeoXConfig`` of a Pythia size.

    Args:
        size: One of ``PYTHIA_CONFIGS`` (``"70m"``, ``"160m"``, ... ``"12b"``).

    Returns:
        A config from which ``AutoModelForCausalLM.from_config`` builds the model.
    """
    if size not in PYTHIA_CONFIGS:
        known = ", ".join(PYTHIA_CONFIGS)
        raise ScalelensError(f"unknown Pythia size {size!r}; use one of: {known}")
    return GPTNeoXConfig(**PYTHIA_CONFIGS[size])


def pythia_revision(step: int) -> str:
    """Return the hub revision (``step3000``) of a public Pythia checkpoint step."""
    if step not in PYTHIA_STEPS:
        raise ScalelensError(
            f"Pythia has no checkpoint at step {step}; use one of 0, 1, 2, 4, ..., 512, "
            "or a multiple of 1000 up to 143000"
        )
    return f"step{step}"


_PYTHIA_REPO = re.compile(r"EleutherAI/pythia-(?P<size>[\w.]+?)(-deduped)?")


def pythia_revisions(repo_id: str) -> tuple[str, ...] | None:
    """The branches of a public Pythia repo (``step0`` ... ``step143000``, ``main``).

    ``None`` for any other repo (``-v0`` and seed variants included), whose branches
    only the hub knows.
    """
    m = _PYTHIA_REPO.fullmatch(repo_id)
    if m is None or m.group("size") not in PYTHIA_CONFIGS:
        return None
    return (*(f"step{s}" for s in PYTHIA_STEPS), "main")
