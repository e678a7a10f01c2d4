"""Normalisation, chunking and the quality filters: each rule fires on what it targets."""

from __future__ import annotations

import dataclasses

import pytest

from mobilemoe.config.data import CleanConfig
from mobilemoe.data.clean import check_quality, chunk, normalize, quality_score

CFG = CleanConfig()
PROSE = (
    "The interpreter reads a program from a file and executes it one statement at a time. "
    "When an error occurs, the traceback shows where it happened and which call led to it, "
    "so that the programmer can find the cause and fix the code before running it again. "
    "Modules group related functions, and packages group modules, which keeps large "
    "programs readable for the people who maintain them over many years."
)


def test_normalize():
    assert normalize("e\u0301cole\r\nline\x00two\x07  \n\n\n\nend") == "\u00e9cole\nlinetwo\n\nend"
    assert normalize("B\bBo\bol\bld\bd text") == "Bold text"  # overstrike (fortunes, man pages)
    assert normalize("\ufb01ne", "NFKC") == "fine" and normalize("\ufb01ne", "NFC") == "\ufb01ne"
    assert normalize(" \n\t ") == ""


def test_chunk_splits_at_paragraphs():
    paras = [f"Paragraph {i}" + " word" * 80 for i in range(10)]
    text = "\n\n".join(paras)
    pieces = chunk(text, 1000)
    assert len(pieces) > 1 and all(len(p) <= 1000 for p in pieces)
    assert "\n\n".join(pieces) == text
    assert chunk("short", 1000) == ["short"]


def test_prose_passes_and_scores_high():
    assert check_quality(PROSE, CFG) is None
    assert quality_score(PROSE) > 0.8


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("Too short to teach anything.", "min_chars"),
        (PROSE + "x" * 2500, "max_line_chars"),
        ("| a | b | c |\n" + "|---|---|---|\n" * 30 + "| 1 | 2 | 3 |\n" * 30, "alpha_fraction"),
        (
            "Это русский текст, а не английский; фильтр языка должен его отбросить, потому что "
            "буквы не латинские и слов английского языка здесь почти нет. " * 3,
            "non_latin",
        ),
        ("xyzzy plugh frobnicate quux " * 20 + "lorem ipsum dolor sit amet " * 10, "stopwords"),
        (("Click here to subscribe to the newsletter today.\n" * 12) + PROSE, "dup_lines"),
        ("buy now " * 60 + PROSE, "top_bigram"),
        (" ".join(["the cat sat on the mat and then"] * 30) + " " + PROSE[:300], "dup_5grams"),
    ],
)
def test_each_filter_fires(text, reason):
    assert check_quality(text, CFG) == reason


def test_source_min_chars_override_relaxes_length_rules():
    fortune = "A day without sunshine is like, you know, night."
    assert check_quality(fortune, CFG) == "min_chars"
    assert check_quality(fortune, CFG, min_chars=40) is None


def test_bounds_are_config():
    loose = dataclasses.replace(
        CFG, max_dup_5gram_fraction=1.0, max_top_bigram_fraction=1.0, max_dup_line_fraction=1.0
    )
    text = " ".join(["the cat sat on the mat and then"] * 30) + " " + PROSE[:300]
    assert check_quality(text, loose) is None
