"""A deterministic synthetic corpus for the mini Pythia-style suite.

The text is built from pseudo-words with Zipfian frequencies and sparse preferred
successors (so there are bigram statistics to learn, more than a small model can
memorise), sentences ending in `` .`` plus a newline (delimiter tokens), verbatim
repeats of earlier sentences and spans (so induction/copy heads pay off), and
key/value facts that are later queried (``what is the code of X ? Y``) so that
retrieval heads have a reason to form.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ScalelensError
from ..textfiles import read_utf8

_ONSETS = "b d f g k l m n p r s t v z".split() + ["ch", "sh", "tr", "pl"]
_VOWELS = "a e i o u".split() + ["ai", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l"]


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of the built-in corpus generator.

    Attributes:
        n_docs: Number of documents to generate.
        n_words: Size of the pseudo-word vocabulary.
        n_names: Number of capitalised names used as keys in facts.
        zipf_exponent: Exponent s of the Zipf law p(rank) ~ 1 / rank**s.
        n_successors: Preferred successors per word (the learnable bigram structure).
        p_successor: Probability that the next word is one of the preferred successors.
        p_repeat: Probability that a story sentence repeats an earlier one verbatim.
        mix: Relative frequency of story, fact and copy documents.
        seed: Seed of the generator; the same seed gives the same text.
    """

    n_docs: int = 2000
    n_words: int = 1200
    n_names: int = 300
    zipf_exponent: float = 1.0
    n_successors: int = 4
    p_successor: float = 0.6
    p_repeat: float = 0.3
    mix: tuple[float, float, float] = (0.4, 0.3, 0.3)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_docs < 1 or self.n_words < 10 or self.n_names < 10:
            raise ScalelensError("corpus needs n_docs >= 1, n_words >= 10 and n_names >= 10; raise them")
        if not 0.0 <= self.p_successor <= 1.0 or not 0.0 <= self.p_repeat <= 1.0:
            raise ScalelensError("corpus probabilities must lie in [0, 1]; fix the corpus settings")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ScalelensError("corpus mix needs 3 non-negative weights (story, facts, copy)")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        d = asdict(self)
        d["mix"] = list(self.mix)
        return d


def _pseudo_words(rng: random.Random, n: int, capitalise: bool = False) -> list[str]:
    """Draw ``n`` distinct pronounceable pseudo-words."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        n_syll = rng.choice((1, 2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syll))
        word = word.capitalize() if capitalise else word
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class _Lexicon:
    """Pseudo-words with Zipf weights and fixed preferred successors."""

    def __init__(self, cfg: CorpusConfig, rng: random.Random) -> None:
        self.cfg = cfg
        self.words = _pseudo_words(rng, cfg.n_words)
        self.names = _pseudo_words(rng, cfg.n_names, capitalise=True)
        self.cum_weights = list(
            itertools.accumulate(1.0 / (r + 1) ** cfg.zipf_exponent for r in range(cfg.n_words))
        )
        self.successors = {w: [rng.choice(self.words) for _ in range(cfg.n_successors)] for w in self.words}

    def unigram(self, rng: random.Random) -> str:
        return rng.choices(self.words, cum_weights=self.cum_weights)[0]

    def sentence(self, rng: random.Random) -> str:
        word = self.unigram(rng)
        out = [word]
        for _ in range(rng.randint(3, 11)):
            if rng.random() < self.cfg.p_successor:
                word = rng.choice(self.successors[word])
            else:
                word = self.unigram(rng)
            out.append(word)
        return " ".join(out) + " ."


def _story(lex: _Lexicon, rng: random.Random) -> list[str]:
    """Sentences from the Markov chain, some repeated verbatim."""
    lines: list[str] = []
    for _ in range(rng.randint(4, 12)):
        if len(lines) >= 2 and rng.random() < lex.cfg.p_repeat:
            lines.append(rng.choice(lines))
        else:
            lines.append(lex.sentence(rng))
    return lines


def _facts(lex: _Lexicon, rng: random.Random) -> list[str]:
    """Key/value facts among filler sentences, then questions answered from them."""
    keys = rng.sample(lex.names, rng.randint(2, 6))
    values = {k: str(rng.randint(100, 9999)) for k in keys}
    lines: list[str] = []
    for key in keys:
        lines.extend(lex.sentence(rng) for _ in range(rng.randint(0, 3)))
        lines.append(f"the code of {key} is {values[key]} .")
    lines.extend(lex.sentence(rng) for _ in range(rng.randint(1, 4)))
    for key in rng.sample(keys, rng.randint(1, len(keys))):
        lines.append(f"what is the code of {key} ? {values[key]} .")
    return lines


def _copy(lex: _Lexicon, rng: random.Random) -> list[str]:
    """A span of uniformly random words, then the same span again."""
    span = " ".join(rng.choice(lex.words) for _ in range(rng.randint(5, 20)))
    return [lex.sentence(rng), f"list : {span} .", lex.sentence(rng), f"again : {span} ."]


_DOC_MAKERS = (_story, _facts, _copy)


def generate_documents(cfg: CorpusConfig) -> list[str]:
    """Generate the built-in corpus.

    Args:
        cfg: Generator settings; the output depends only on them.

    Returns:
        ``cfg.n_docs`` documents; each line is a sentence ending in `` .`` and a newline.
    """
    rng = random.Random(cfg.seed)
    lex = _Lexicon(cfg, rng)
    docs = []
    for _ in range(cfg.n_docs):
        maker = rng.choices(_DOC_MAKERS, weights=cfg.mix)[0]
        docs.append("\n".join(maker(lex, rng)) + "\n")
    return docs


def check_corpus_file(path: str | Path) -> Path:
    """``path`` checked to be an existing file (a directory is named as one, not as missing).

    Raises:
        ScalelensError: One line when ``path`` is a directory or does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise ScalelensError(f"corpus file {p} is a directory; pass a text file")
    if not p.is_file():
        raise ScalelensError(f"corpus file {p} does not exist; pass an existing text file")
    return p


def read_text_file(path: str | Path) -> list[str]:
    """Read a user corpus: documents separated by blank lines.

    Args:
        path: UTF-8 text file.

    Returns:
        The non-empty documents, each ending in a newline.
    """
    p = check_corpus_file(path)
    text = read_utf8(p, "corpus file")
    docs = [d.strip("\n") + "\n" for d in text.split("\n\n") if d.strip()]
    if not docs:
        raise ScalelensError(f"corpus file {p} contains no text; pass a non-empty file")
    return docs


def documents_sha256(docs: list[str]) -> str:
    """Return a content hash of a list of documents."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
