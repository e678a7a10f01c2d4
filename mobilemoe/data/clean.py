"""Text normalisation, chunking and quality filters for pre-training documents.

    from mobilemoe.data.clean import normalize, chunk, check_quality, quality_score
    text = normalize(raw, "NFC")
    for piece in chunk(text, 4000): reason = check_quality(piece, cfg.clean)  # None = keep

The filters are cheap heuristics in the spirit of Gopher's quality rules (Rae et al. 2021;
the paper gives none, docs/paper.md#what-the-paper-leaves-open): length, long lines, a
character/language check (letters, Latin script, English function words) and repetition
(duplicated lines, the top word bigram, words inside repeated 5-grams). ``check_quality``
names the first rule a text fails, so the stats can count drops per filter.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Literal

from ..config.data import CleanConfig
from .hashing import words_of

# Frequent English function words; a text with almost none of them is not English prose.
STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers him his how i if in into is it its itself just
me more most my no nor not now of off on once only or other our out over own same she should
so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your
""".split()
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_OVERSTRIKE = re.compile(r".\x08")  # "X\bX" (bold in man pages/fortunes) -> "X"
_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_BLANKS = re.compile(r"\n{3,}")
_PARA = re.compile(r"\n\s*\n")


def normalize(text: str, form: Literal["NFC", "NFKC"] = "NFC") -> str:
    """Unicode normal form, no control characters, ``\\n`` newlines, tidy blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x08" in text:
        text = _OVERSTRIKE.sub("", text)
    text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text).replace("\u00a0", " ")
    text = _TRAILING_WS.sub("\n", text)
    text = _MANY_BLANKS.sub("\n\n", text)
    return text.strip()


def chunk(text: str, max_chars: int) -> list[str]:
    """Split ``text`` at paragraph breaks into pieces of at most about ``max_chars``
    (a paragraph longer than that stays whole; the line filter judges it)."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    cur: list[str] = []
    size = 0
    for para in _PARA.split(text):
        if cur and size + len(para) + 2 > max_chars:
            pieces.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        pieces.append("\n\n".join(cur))
    return [p.strip() for p in pieces if p.strip()]


def _latin(ch: str) -> bool:
    return ch.isascii() or "LATIN" in unicodedata.name(ch, "")


def check_quality(text: str, cfg: CleanConfig, min_chars: int | None = None) -> str | None:
    """The name of the first filter ``text`` fails, or None to keep it."""
    if not text:
        return "empty"
    # a source may lower min_chars for short records (fortunes); min_words follows (~8 chars/word)
    min_words = cfg.min_words if min_chars is None else min(cfg.min_words, max(1, min_chars // 8))
    if len(text) < (cfg.min_chars if min_chars is None else min_chars):
        return "min_chars"
    lines = text.split("\n")
    if max(len(line) for line in lines) > cfg.max_line_chars:
        return "max_line_chars"
    words = words_of(text)
    if not words or len(words) < min_words:
        return "min_words"
    # character / language heuristic
    non_space = sum(1 for c in text if not c.isspace())
    letters = [c for c in text if c.isalpha()]
    if len(letters) < cfg.min_alpha_fraction * non_space:
        return "alpha_fraction"
    if not all(c.isascii() for c in letters):
        non_latin = sum(1 for c in letters if not _latin(c))
        if non_latin > cfg.max_non_latin_fraction * len(letters):
            return "non_latin"
    stop = sum(1 for w in words if w in STOPWORDS)
    if stop < cfg.min_stopword_fraction * len(words):
        return "stopwords"
    # repetition
    stripped = [line.strip() for line in lines if line.strip()]
    if len(stripped) > 3:
        counts = Counter(stripped)
        dup_chars = sum(len(line) * (n - 1) for line, n in counts.items() if n > 1)
        if dup_chars > cfg.max_dup_line_fraction * sum(len(line) for line in stripped):
            return "dup_lines"
    word_chars = sum(len(w) for w in words)
    if len(words) >= 20:
        bigrams = Counter(zip(words, words[1:]))
        (w1, w2), n = bigrams.most_common(1)[0]
        if n > 1 and n * (len(w1) + len(w2)) > cfg.max_top_bigram_fraction * word_chars:
            return "top_bigram"
        grams = Counter(zip(words, words[1:], words[2:], words[3:], words[4:]))
        covered = bytearray(len(words))
        for i in range(len(words) - 4):
            if grams[(words[i], words[i + 1], words[i + 2], words[i + 3], words[i + 4])] > 1:
                covered[i : i + 5] = b"\x01\x01\x01\x01\x01"
        dup = sum(len(w) for w, c in zip(words, covered) if c)
        if dup > cfg.max_dup_5gram_fraction * word_chars:
            return "dup_5grams"
    return None


def quality_score(text: str) -> float:
    """A rough prose-quality score in [0, 1] that ranks documents for the mid-training mix:
    English function-word rate (saturating at 0.4, typical of prose) times the letter share
    of non-space characters times the share of lines that end a sentence or paragraph."""
    words = words_of(text)
    if not words:
        return 0.0
    stop = sum(1 for w in words if w in STOPWORDS) / len(words)
    non_space = sum(1 for c in text if not c.isspace()) or 1
    alpha = sum(1 for c in text if c.isalpha()) / non_space
    paras = [p for p in _PARA.split(text) if p.strip()]
    ends = sum(1 for p in paras if p.rstrip()[-1:] in ".!?:\"'”)") / max(len(paras), 1)
    return round(min(stop / 0.4, 1.0) * alpha * (0.5 + 0.5 * ends), 4)
