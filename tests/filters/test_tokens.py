"""The token budget: exact counts from cut pieces, a true lower bound, lazy fills."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmix.filters.tokens import (
    KNOWN_WORD_CHARS,
    TokenBudget,
    budget_tokenizer,
    count_tokens,
    gpt2_pretokenized,
    pretoken_lower_bound,
    pretoken_lower_bounds,
)
from diffmix.schemas.config import BuildConfig
from tests.filters.conftest import BEFORE, engine_verdict

# Code-like text: identifiers, digits, quotes and contractions, runs of spaces and newlines, some non-ASCII.
ALPHABET = st.sampled_from(list("abcXYZ019_'\"()[]{}:=+-.,# \t\n") + ["  ", "\n\n", "    ", "'s", "'ll", "é", "ß", "日本", "\r\n", "\u00a0"])
TEXTS = st.lists(ALPHABET, max_size=200).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_lower_bound_never_exceeds_the_count(text: str) -> None:
    tokenizer = budget_tokenizer()
    bound = pl.select(pretoken_lower_bound(pl.lit(text))).item()
    assert bound <= len(tokenizer.pre_tokenizer.pre_tokenize_str(text)) <= len(tokenizer.encode(text, add_special_tokens=False).ids)


def _regex_bounds(texts: list[str | None]) -> list[int | None]:
    return pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(pretoken_lower_bound(pl.col("t"))).to_series().to_list()


# Every ASCII class the regex tells apart (controls count as "other"; \x1c-\x1f are not \s there).
ASCII_TEXTS = st.lists(st.sampled_from(list("aZ09_'.\x00\x1c\x7f \t\n\x0b\x0c\r") + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'r", "'v", "'l", "  "]), max_size=60).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ASCII_TEXTS, TEXTS, st.none()), max_size=20))
def test_compiled_bound_is_the_regex_count(texts: list[str | None]) -> None:
    assert pretoken_lower_bounds(pl.Series("t", texts, dtype=pl.String)).to_list() == _regex_bounds(texts)


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("", 0),
        ("abc", 1),
        ("abc123", 2),
        ("a b", 2),  # one space is no match of its own
        ("a  b", 3),  # two are
        ("  ", 1),
        (" a ", 1),
        ("x\r\n\ty", 3),
        ("it's", 2),  # "it", "'s": the run "'" and the run "s" less one contraction
        ("'re'll", 2),
        ("'r", 2),  # not a contraction
        ("a\x00\x1cb", 3),  # controls are "other", \x1c is not whitespace
        ("a.b", 3),
        ("é", 1),  # not ASCII: the regex counts it
        ("a é", 2),
    ],
)
def test_compiled_bound_table(text: str, bound: int) -> None:
    assert _regex_bounds([text]) == [bound]
    assert pretoken_lower_bounds(pl.Series([text, "pad"])).to_list() == [bound, 1]


@pytest.mark.parametrize(("starts", "lengths"), [([0], [9]), ([-1], [1]), ([2], [7]), ([0, 0], [1, -1])])
def test_compiled_bound_refuses_texts_outside_their_buffer(starts: list[int], lengths: list[int]) -> None:
    from diffmix import _line_stats

    out = np.zeros(len(starts), dtype=np.int64)
    with pytest.raises(ValueError, match="outside its buffer"):
        _line_stats.pretoken_bound([np.frombuffer(b"abcdefgh", np.uint8)], np.zeros(len(starts), np.int64), np.array(starts, np.int64), np.array(lengths, np.int64), out)


def _encoded(texts: list[str | None]) -> list[int]:
    tokenizer = budget_tokenizer()
    return [len(tokenizer.encode(t or "", add_special_tokens=False).ids) for t in texts]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ASCII_TEXTS, TEXTS), max_size=12))
def test_counting_words_is_exact(texts: list[str]) -> None:
    known: dict[str, int] = {}
    assert count_tokens(pl.Series(texts, dtype=pl.String), budget_tokenizer(), known).tolist() == _encoded(texts)
    assert count_tokens(pl.Series(texts, dtype=pl.String), budget_tokenizer(), known).tolist() == _encoded(texts)  # from `known`
    assert all(len(word) <= KNOWN_WORD_CHARS for word in known)


def test_long_words_are_counted_not_kept() -> None:
    text = "日本語" * 100 + " x"  # one piece of 300 characters, then a word
    known: dict[str, int] = {}
    assert count_tokens(pl.Series([text, text]), budget_tokenizer(), known).tolist() == _encoded([text, text])
    assert list(known) == [" x"]


@pytest.mark.parametrize(
    "text",
    [
        "", "x", "\t\tx", "  \n  x", "x  ", "x's it'll ('s", "'re'", "a\x1cb\x00", "\r\n\r\n",
        "é x", "x\u00a0 y", "\u3000\u3000x", "日本 語", "a é\nb  c", "é", " é", "é\t\tx", "x\n\u2028y",
        "<|endoftext|>", 'eos = "<|endoftext|>"', "é <|endoftext|>",  # an added token: one token, cut out first
    ],
)  # fmt: skip
def test_counting_words_table(text: str) -> None:
    assert count_tokens(pl.Series([text, None, text]), budget_tokenizer()).tolist() == [*_encoded([text]), 0, *_encoded([text])]


@settings(max_examples=200, deadline=None)
@given(ASCII_TEXTS)
def test_ascii_words_are_the_pretokenizers(text: str) -> None:
    from diffmix import _line_stats
    from diffmix.filters.base import utf8_bytes

    where, firsts = utf8_bytes(pl.Series([text])), np.empty(2, dtype=np.int64)
    words, ids = _line_stats.pretoken_words(where.buffers, where.buffer_ids, where.starts, where.lengths, firsts)
    cut = [words[i] for i in np.frombuffer(ids, dtype=np.int32)]
    assert cut == [text[a:b] for _, (a, b) in budget_tokenizer().pre_tokenizer.pre_tokenize_str(text)]


def test_other_tokenizers_are_counted_whole() -> None:
    from tokenizers import Tokenizer, pre_tokenizers

    tokenizer = Tokenizer.from_str(budget_tokenizer().to_str())
    assert gpt2_pretokenized(tokenizer)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert not gpt2_pretokenized(tokenizer)
    texts = ["x = 1\ny = 2\n", "é  x"]  # pieces would each get a prefix space
    assert count_tokens(pl.Series(texts), tokenizer).tolist() == [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]


def test_words_refuse_texts_outside_their_buffer() -> None:
    from diffmix import _line_stats

    firsts = np.empty(2, dtype=np.int64)
    with pytest.raises(ValueError, match="outside its buffer"):
        _line_stats.pretoken_words([np.frombuffer(b"abc", np.uint8)], np.zeros(1, np.int64), np.array([1], np.int64), np.array([3], np.int64), firsts)
    with pytest.raises(ValueError, match="differ in length"):
        _line_stats.pretoken_words([np.frombuffer(b"abc", np.uint8)], np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.int64), firsts[:1])


def test_count_matches_the_tokenizer_on_real_code() -> None:
    texts = [BEFORE, BEFORE.replace("\n", "\r\n"), "x = 1\n\n\ny = 2\n" * 50, ""]
    assert count_tokens(pl.Series(texts), budget_tokenizer()).tolist() == _encoded(texts)


def test_fill_counts_only_what_decides() -> None:
    rule = TokenBudget(max_tokens=100)
    small, medium, huge = "def f():\n    return 1\n", "x = a + b\n" * 12, "value_one = other_value\n" * 200
    frame = pl.DataFrame({"text": [small, medium, huge, medium]})
    filled = rule.fill(frame, pl.Series([True, True, True, False]))
    lower, exact = filled["f_tokens_min"].to_list(), filled["f_tokens"].to_list()
    assert lower[0] is None and exact[0] is None  # fewer bytes than the budget: fits without counting
    assert lower[1] is not None and lower[1] <= 100 and exact[1] is not None  # between the bounds: counted
    assert lower[2] > 100 and exact[2] is None  # the lower bound already exceeds the budget
    assert lower[3] is None and exact[3] is None  # an earlier rule dropped it: nothing computed
    assert rule.fill(frame, pl.Series([False] * 4))["f_tokens"].null_count() == 4


def test_a_spelled_out_added_token_gets_no_bound() -> None:
    """`<|endoftext|>` is one token where the pre-token runs count three: the bound is 0 there
    and the exact count decides (a document of 600 of them fits a budget of 1,000)."""
    rule = TokenBudget(max_tokens=1000)
    text = "<|endoftext|>" * 600
    filled = rule.fill(pl.DataFrame({"text": [text, "x = 1\n" * 400]}), pl.Series([True, True]))
    assert filled["f_tokens_min"].to_list()[0] == 0 and filled["f_tokens"].to_list()[0] == 600
    assert filled["f_tokens_min"].to_list()[1] > 1000  # an ordinary text keeps its bound


@pytest.mark.parametrize(("budget", "expected"), [(2048, None), (100, "too_many_tokens"), (None, None)])
def test_budget_in_the_rule_chain(budget: int | None, expected: str | None) -> None:
    config = BuildConfig.model_validate({"filters": {"rules": [{"token_budget": {"max_tokens": budget}}]}})
    assert engine_verdict(config) == expected
