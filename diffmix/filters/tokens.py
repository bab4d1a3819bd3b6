"""The token budget: a whole document must fit the model's context (drop, never truncate).

CarperAI excluded files over 2,048 tokens; a truncated DFF would teach a model
to stop mid-diff. Counting was the most expensive score of the build (HF
`tokenizers` runs at ~1.5 MB/s here), so it is *lazy* and bounded twice:

* a byte-level BPE spends at least one byte per token, so a document of at
  most `max_tokens` UTF-8 bytes fits without counting;
* the ByteLevel pre-tokenizer splits text into pieces that each become at
  least one token, and the runs of letters, of digits and of other non-space
  characters (less the `'s`-style contractions it merges) plus the runs of 2+
  whitespace characters never outnumber those pieces: a regex count
  (`f_tokens_min`; compiled for ASCII texts) that drops most over-long documents
  without tokenising. A text that spells out an added token (`<|endoftext|>`, one
  token where the runs count three) gets 0 and is counted.

Only the documents between the two bounds are tokenised (`f_tokens`), and
only those every other rule keeps. The BPE merges only within a pre-token, so
a count is the sum of the counts of a text's pre-tokens: with a GPT-2-style
tokenizer (the default) the texts are cut into them in compiled code (HF's own
pre-tokenizer is most of its ~1.5 MB/s here) and each distinct word is
encoded once per process; any other tokenizer encodes whole texts. The count
is exact (the same as encoding the whole text; tested).

The default tokenizer is a byte-level BPE (8,192 tokens) shipped with the
package, trained on the CPython standard library (see
`scripts/train_filter_tokenizer.py`); `tokenizer:` takes any `tokenizer.json`.
The end-of-text token a trainer appends is not counted.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field
from tokenizers import Tokenizer, pre_tokenizers

from diffmix import _line_stats
from diffmix.filters.base import Check, Filter, register, utf8_bytes
from diffmix.pipelines.tokenize import encode_ids, load_tokenizer

DEFAULT_TOKENIZER = Path(__file__).resolve().parent / "data" / "tokenizer.json"


@functools.lru_cache(maxsize=4)
def budget_tokenizer(path: str | None = None) -> Tokenizer:
    """A tokenizer.json (the packaged one when None), loaded once per process."""
    return load_tokenizer(path or DEFAULT_TOKENIZER)


@functools.lru_cache(maxsize=4)
def known_words(path: str | None = None) -> dict[str, int]:
    """The token counts of the words this process has counted with the tokenizer at `path`:
    the partitions of one worker share most words (identifiers, indentation)."""
    return {}


KNOWN_WORDS_MAX = 500_000  # emptied when it grows past this
KNOWN_WORD_CHARS = 128  # longer words (a line of CJK text) are counted again, not kept


def pretoken_lower_bound(text: pl.Expr) -> pl.Expr:
    """A lower bound on the byte-level BPE token count of each text (see the module docstring)."""
    # The classes are disjoint, so one alternation counts the runs and the 2+ whitespace runs together.
    runs = text.str.count_matches(r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s{2,}")
    contractions = text.str.count_matches(r"'(?:s|t|re|ve|m|ll|d)")
    return (runs - contractions).cast(pl.Int32)


def pretoken_lower_bounds(texts: pl.Series) -> pl.Series:
    """`pretoken_lower_bound` of each text (Int32): pure-ASCII texts counted in one compiled
    pass over their bytes (`diffmix._line_stats.pretoken_bound`, the same count; the regex
    runs at about 130 MB/s), the others with the regex."""
    where = utf8_bytes(texts)
    bounds = np.empty(len(texts), dtype=np.int64)
    _line_stats.pretoken_bound(where.buffers, where.buffer_ids, where.starts, where.lengths, bounds)
    out = pl.Series(texts.name, bounds, dtype=pl.Int64).cast(pl.Int32)
    rest = pl.Series(np.flatnonzero((bounds < 0) | ~where.valid), dtype=pl.UInt32)  # not ASCII, or null
    if len(rest):
        out = out.scatter(rest, texts.gather(rest).to_frame("text").select(pretoken_lower_bound(pl.col("text"))).to_series())
    return out


def gpt2_pretokenized(tokenizer: Tokenizer) -> bool:
    """Does `tokenizer` cut texts into words exactly as `_line_stats.pretoken_words` does: no
    normaliser, tokenizers' ByteLevel pre-tokenizer with its GPT-2 regex and no prefix space?"""
    pre = tokenizer.pre_tokenizer
    # getattr: a tokenizers release without these getters gets the whole-text count, not a wrong one.
    plain = getattr(pre, "use_regex", False) is True and getattr(pre, "add_prefix_space", True) is False
    return tokenizer.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel) and plain


def holds_added_token(texts: pl.Series, tokenizer: Tokenizer) -> pl.Series:
    """Which texts spell out one of the tokenizer's added tokens (`<|endoftext|>`): tokenizers
    cuts those out before pre-tokenizing, even without special tokens, so one token stands where
    the pre-token rules see several (Boolean; a null is False)."""
    contents = sorted({token.content for token in tokenizer.get_added_tokens_decoder().values()})
    if not contents:
        return pl.Series(texts.name, [False] * len(texts), dtype=pl.Boolean)
    return texts.str.contains_any(contents).fill_null(False)


def count_tokens(texts: pl.Series, tokenizer: Tokenizer, known: dict[str, int] | None = None) -> np.ndarray:
    """Exact token counts of a text column, no special tokens (int64; a null counts 0).

    For a GPT-2-style tokenizer the texts are cut where its pre-tokenizer cuts them, in one
    compiled pass (`_line_stats.pretoken_words`: into pre-tokens where a text is ASCII, else
    into pieces of whole pre-tokens), and each distinct word is encoded once, or taken from
    `known` (word -> count; words up to `KNOWN_WORD_CHARS` are added, and it is emptied past
    `KNOWN_WORDS_MAX`). Texts that spell out an
    added token, and every text under any other tokenizer, are encoded whole: an added token, a
    prefix space or a normaliser would make a sum over pieces differ.
    """
    if not gpt2_pretokenized(tokenizer):
        return _count_whole(texts, tokenizer)
    where = utf8_bytes(texts)
    firsts = np.empty(len(texts) + 1, dtype=np.int64)
    words, word_ids = _line_stats.pretoken_words(where.buffers, where.buffer_ids, where.starts, where.lengths, firsts)
    known = {} if known is None else known
    if len(known) > KNOWN_WORDS_MAX:
        known.clear()
    new = [word for word in words if word not in known]
    counted = dict(zip(new, (len(ids) for ids in encode_ids(tokenizer, new))))
    per_word = np.array([known[word] if word in known else counted[word] for word in words], dtype=np.int64)
    known.update((word, count) for word, count in counted.items() if len(word) <= KNOWN_WORD_CHARS)
    running = np.concatenate([[0], np.cumsum(per_word[np.frombuffer(word_ids, dtype=np.int32)])])
    counts = running[firsts[1:]] - running[firsts[:-1]]
    special = holds_added_token(texts, tokenizer).arg_true()
    if len(special):
        counts[special.to_numpy()] = _count_whole(texts.gather(special), tokenizer)
    return counts


def _count_whole(texts: pl.Series, tokenizer: Tokenizer) -> np.ndarray:
    return np.array([len(ids) for ids in encode_ids(tokenizer, texts.fill_null("").to_list())], dtype=np.int64)


@register
class TokenBudget(Filter):
    """The whole document within `max_tokens` tokens of a byte-level BPE."""

    name: ClassVar[str] = "token_budget"
    reasons: ClassVar[tuple[str, ...]] = ("too_many_tokens",)
    score_fields: ClassVar[tuple[pa.Field, ...]] = (pa.field("f_tokens_min", pa.int32()), pa.field("f_tokens", pa.int32()))
    score_settings: ClassVar[tuple[str, ...]] = ("tokenizer",)
    lazy: ClassVar[bool] = True

    max_tokens: int | None = Field(2048, ge=1)
    tokenizer: str | None = None  # a tokenizer.json; None: the packaged byte-level BPE

    def checks(self) -> list[Check]:
        if self.max_tokens is None:
            return []
        return [Check("too_many_tokens", pl.coalesce("f_tokens", "f_tokens_min") > self.max_tokens)]

    def fill(self, frame: pl.DataFrame, alive: pl.Series) -> pl.DataFrame:
        """Set `f_tokens_min` / `f_tokens` exactly where this rule needs them, null elsewhere.

        `alive`: rows every non-lazy rule keeps. The result depends only on the
        rows and the settings, so a refilter fills (or clears) the same cells a
        fresh build would.
        """
        n = frame.height
        lower = pl.Series("f_tokens_min", [None] * n, dtype=pl.Int32)
        exact = pl.Series("f_tokens", [None] * n, dtype=pl.Int32)
        if self.max_tokens is not None:
            big = alive & (frame["text"].str.len_bytes() > self.max_tokens)
            rows = big.arg_true()
            if len(rows):
                texts, tokenizer = frame["text"].gather(rows), budget_tokenizer(self.tokenizer)
                # The pre-token runs of a spelled-out added token are one token: no bound there.
                bound = pretoken_lower_bounds(texts).scatter(holds_added_token(texts, tokenizer).arg_true(), 0)
                lower = lower.scatter(rows, bound)
                uncertain = rows.filter(bound <= self.max_tokens)
                if len(uncertain):
                    counts = count_tokens(frame["text"].gather(uncertain), tokenizer, known_words(self.tokenizer))
                    exact = exact.scatter(uncertain, pl.Series(counts, dtype=pl.Int32))
        return frame.with_columns(lower, exact)
