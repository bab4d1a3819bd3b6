"""Deduplication: exact keys and MinHash LSH near-duplicates, vectorised with NumPy.

Exact: two 64-bit xxh3 keys per document, of `(before, diff)` and of `diff`
alone (CommitBench dedups by both). Near: MinHash over byte 5-grams of the
diff with its hunk-header line numbers removed, 256 permutations, LSH bands
chosen for Jaccard 0.7 (BigCode's near-dedup defaults), every candidate pair
checked against the threshold with the full signatures, then connected
components. In each exact group or near cluster the oldest commit is kept
(then the smallest `doc_id`); the others are dropped with the kept doc_id as
their cluster id.

Why the diff and not before+diff (the research notes' choice): the BEF of a
file's next commit is this commit's new file, so consecutive edits of one file
share nearly all their before+diff shingles. On the dev data, before+diff at
0.7 clusters whole file histories and drops 79% of the documents; the diff
alone drops the real repeats (the same change cherry-picked onto a release
branch, the same version bump or header edit in many files) and keeps
successive, different edits of a file. `near.text: before_diff` restores the
literal rule.

MinHash, vectorised: a 5-gram of bytes packs into 40 bits, so shingles need no
hashing for identity; the distinct shingles of each document are mixed to 32
bits with a salted murmur3 64-bit finaliser, and the 256 permutations are
`a*x mod 2^32` with odd random `a` (bijections of already-random values),
computed as one (256, block) uint32 NumPy array per block of shingles and
reduced per document with `np.minimum.reduceat`: SIMD-friendly, one multiply
and one min per (permutation, shingle). `datasketch` hashes each shingle in
Python (sha1), then evaluates `a*x + b mod (2^61 - 1)` in uint64; both give
unbiased Jaccard estimates with the same spread (checked in the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import xxhash

from diffmix.filters.base import utf8_bytes
from diffmix.pipelines.apply import HUNK_NUMBERS

_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_BAND_PRIME = np.uint64(0x9E3779B97F4A7C15)
EMPTY = np.uint32(0xFFFFFFFF)
# Hunk headers lose their line numbers before shingling: the same change at
# another position (a cherry-pick onto a branch that moved) is still the same change.
_HUNK_NUMBERS = "(?m)^" + HUNK_NUMBERS


# --- exact ---------------------------------------------------------------------------


def exact_keys(before: pl.Series, diff: pl.Series) -> tuple[pl.Series, pl.Series]:
    """xxh3-64 of `before + NUL + diff` and of `diff` (UInt64; stable across runs and machines)."""
    keys_bd, keys_d = [], []
    for b, d in zip(utf8_bytes(before).views(), utf8_bytes(diff).views(), strict=True):
        keys_d.append(xxhash.xxh3_64_intdigest(d))
        streamed = xxhash.xxh3_64(b)  # before + NUL + diff, without joining them
        streamed.update(b"\0")
        streamed.update(d)
        keys_bd.append(streamed.intdigest())
    return pl.Series("f_exact_bd", keys_bd, dtype=pl.UInt64), pl.Series("f_exact_d", keys_d, dtype=pl.UInt64)


# --- MinHash -----------------------------------------------------------------------------


def shingle_text(before: pl.Series, diff: pl.Series, text: str) -> pl.Series:
    """What near-dedup compares: the diff without hunk line numbers, or before + that diff."""
    normalized = diff.str.replace_all(_HUNK_NUMBERS, "@@ -@@")
    return normalized if text == "diff" else before + "\n" + normalized


def _fmix64(v: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (in place): a bijection that mixes every input bit."""
    v ^= v >> np.uint64(33)
    v *= _FMIX1
    v ^= v >> np.uint64(33)
    v *= _FMIX2
    v ^= v >> np.uint64(33)
    return v


@dataclass(frozen=True)
class MinHasher:
    """MinHash signatures of byte n-grams (n <= 8), `permutations` uint32 values per text."""

    ngram: int = 5
    permutations: int = 256
    seed: int = 0
    max_bytes: int = 32768  # only the first bytes of a text are shingled (bounds the cost of huge diffs)
    block: int = 4096  # shingles per (permutations, block) matrix: stays in cache

    def __post_init__(self) -> None:
        if not 1 <= self.ngram <= 8:
            raise ValueError(f"ngram must be 1..8 bytes, got {self.ngram}")

    def _params(self) -> tuple[np.ndarray, np.uint64]:
        """The odd multipliers of the permutations and the salt of the shingle mix."""
        rng = np.random.default_rng(self.seed)
        a = rng.integers(0, 2**32, self.permutations, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        salt = np.uint64(int(rng.integers(0, 2**63)))
        return a, salt

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Distinct 32-bit shingle hashes of every text, grouped by text: (values, counts per text).

        A text shorter than n bytes is one (zero-padded) shingle; an empty text has none.
        """
        encoded = [t.encode()[: self.max_bytes] for t in texts]
        n, k = len(encoded), self.ngram
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
        windows = np.where(lengths >= k, lengths - k + 1, (lengths > 0).astype(np.int64))
        if not windows.sum():
            return np.zeros(0, np.uint32), np.zeros(n, np.int64)
        # Every byte position of the joined texts starts a window (zero padding after the end);
        # pack its n bytes into one integer: the shingle itself, no collisions.
        buf = np.frombuffer(b"".join(encoded) + bytes(k), dtype=np.uint8)
        total = len(buf) - k
        packed = buf[:total].astype(np.uint64)
        for j in range(1, k):
            packed <<= np.uint64(8)
            packed |= buf[j : total + j]
        # Keep the windows that start in a text and end inside it (or, for a short text, its first).
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        first = np.repeat(starts, windows)
        keep = first + (np.arange(len(first)) - np.repeat(np.cumsum(windows) - windows, windows))
        short = np.flatnonzero((lengths > 0) & (lengths < k))
        if len(short):  # bytes past a short text belong to the next one: mask them to zero
            mask = np.zeros(len(short), np.uint64)
            for j in range(k):
                mask = (mask << np.uint64(8)) | np.where(j < lengths[short], np.uint64(0xFF), np.uint64(0))
            packed[starts[short]] &= mask
        _, salt = self._params()
        hashed = _fmix64(packed[keep] ^ salt) >> np.uint64(32)
        owner = np.repeat(np.arange(n, dtype=np.uint64), windows)
        keyed = np.sort((owner << np.uint64(32)) | hashed)  # grouped by text
        keyed = keyed[np.concatenate([[True], keyed[1:] != keyed[:-1]])]  # distinct per text
        values = (keyed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        counts = np.bincount((keyed >> np.uint64(32)).astype(np.int64), minlength=n)
        return values, counts

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), permutations) uint32; a text without shingles gets all 0xFFFFFFFF."""
        a, _ = self._params()
        out = np.full((len(texts), self.permutations), EMPTY, dtype=np.uint32)
        values, counts = self.shingles(texts)
        if not len(values):
            return out
        owner = np.repeat(np.arange(len(texts)), counts)
        work = np.empty((self.permutations, self.block), dtype=np.uint32)
        for s in range(0, len(values), self.block):
            x, d = values[s : s + self.block], owner[s : s + self.block]
            h = work[:, : len(x)]
            np.multiply(a[:, None], x[None, :], out=h)
            cuts = np.flatnonzero(np.concatenate([[True], d[1:] != d[:-1]]))
            mins = np.minimum.reduceat(h, cuts, axis=1)
            rows = d[cuts]
            out[rows] = np.minimum(out[rows], mins.T)
        return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature values, row by row."""
    return (sig_a == sig_b).mean(axis=-1)


# --- LSH ------------------------------------------------------------------------------


def _integral(f, lo: float, hi: float, steps: int = 2001) -> float:
    x = np.linspace(lo, hi, steps)
    y = f(x)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


@functools.cache  # about 3,000 numerical integrals: 0.12 s, asked for by every partition's config
def optimal_bands(threshold: float, permutations: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive and false-negative areas
    of the LSH S-curve around `threshold` (the rule `datasketch.MinHashLSH` uses)."""
    best, best_cost = (1, permutations), float("inf")
    for bands in range(1, permutations + 1):
        for rows in range(1, permutations // bands + 1):
            fp = _integral(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)
            fn = _integral(lambda s: (1 - s**rows) ** bands, threshold, 1.0)
            cost = fp_weight * fp + fn_weight * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def band_keys(signatures: np.ndarray, bands: Sequence[int], rows: int) -> np.ndarray:
    """(n, len(bands)) uint64: one hash per band of `rows` consecutive signature values."""
    out = np.empty((len(signatures), len(bands)), dtype=np.uint64)
    for j, band in enumerate(bands):
        h = np.full(len(signatures), np.uint64((band * int(_BAND_PRIME) + 1) % 2**64), dtype=np.uint64)
        for c in range(band * rows, (band + 1) * rows):
            h ^= signatures[:, c].astype(np.uint64)
            h *= _BAND_PRIME
            h ^= h >> np.uint64(29)
        out[:, j] = h
    return out


def bucket_pairs(keys: np.ndarray, nodes: np.ndarray, max_bucket: int = 64) -> np.ndarray:
    """Candidate pairs (u < v) of nodes sharing a key in any band: every pair in a bucket of
    up to `max_bucket` nodes, each node with the bucket's smallest node beyond that (vectorised)."""
    pairs = []
    for j in range(keys.shape[1]):
        order = np.lexsort((nodes, keys[:, j]))
        k, n = keys[order, j], nodes[order]
        starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
        sizes = np.diff(np.concatenate([starts, [len(k)]]))
        group = np.repeat(np.arange(len(starts)), sizes)
        position = np.arange(len(k))
        small = sizes[group] <= max_bucket
        # In a small bucket, each member pairs with every later member.
        later = np.where(small, starts[group] + sizes[group] - position - 1, 0)
        first = np.repeat(position, later)
        second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
        pairs.append(np.stack([n[first], n[second]], axis=1))
        # In a big one, each member pairs with the first.
        big = np.flatnonzero(~small & (position != starts[group]))
        pairs.append(np.stack([n[starts[group[big]]], n[big]], axis=1))
    out = np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.unique(out, axis=0) if len(out) else out.reshape(0, 2)


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected components of nodes 0..n-1: each node's label is the smallest node in its component."""
    label = np.arange(n, dtype=np.int64)
    if not len(edges):
        return label
    u, v = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(label[u], label[v])
        before = label.copy()
        np.minimum.at(label, u, low)
        np.minimum.at(label, v, low)
        label = label[label]  # pointer jumping
        while not np.array_equal(label, label[label]):
            label = label[label]
        if np.array_equal(label, before):
            return label
