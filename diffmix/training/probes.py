"""Skill probes: greedy generations on held-out documents, scored through each format.

Each source's probe set is a fixed, seeded sample of its held-out (test)
documents. At every eval the model continues each prompt greedily (batched,
with a KV cache) until EOS, a format stop sequence or a length cap; the
generation is scored against the reference target:

* every format: `parsed` (the format's parser accepts the generation) and
  `exact_match` (it parses to the reference's canonical answer);
* arithmetic (task "addition"): `digit_accuracy`, the share of the reference
  answer's digits right, aligned from the least significant; for scratchpads
  also `answer_match`, the answer line alone against the reference (Lee et
  al.'s metric; `exact_match` also requires every scratch step right);
* diff edits (openelm family), through `diffmix.pipelines.apply`:
  `diff_parsed` (hunks parse leniently), `hunk_grammar` (strictly: header
  counts match), `context_at_line` / `context_anywhere` (share of context and
  removed lines found verbatim in BEF at the stated line / anywhere),
  `strict_apply`, `lenient_apply` (every hunk found by content), and
  `exact_match` (the strictly patched file equals the reference's);
* per source, `heldout_loss`: mean loss on the target tokens (teacher forced).

Scores are means over a source's probe documents, in [0, 1] except the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from diffmix.formats.base import Format, ParseError, get_format
from diffmix.formats.edit import OpenElmParts, split_openelm
from diffmix.pipelines.apply import (
    DiffError,
    apply_lenient,
    apply_strict,
    parse_diff,
    split_lines,
)
from diffmix.pipelines.tokenize import tokenize_documents
from diffmix.training.config import ProbeConfig
from diffmix.training.data import MixtureBatches, MixtureTokens
from diffmix.training.model import GPT

# Edit formats whose documents split into (BEF, diff) for the diff-level scores, by family.
DIFF_SPLITTERS: dict[str, Callable[[str], OpenElmParts]] = {"openelm": split_openelm}

EDIT_SCORES = (
    "parsed",
    "exact_match",
    "diff_parsed",
    "hunk_grammar",
    "context_at_line",
    "context_anywhere",
    "strict_apply",
    "lenient_apply",
)


def cut_at_stop(fmt: Format, prompt: str, generated: str) -> str:
    """The generation up to its first stop sequence, cut where the format can parse it.

    Formats use stop sequences two ways: as the *start of what follows* an
    answer ("\n<NME> ", "\nInput:": cut before it, keeping a leading newline,
    which still ends the answer's last line) or as the answer's *own last
    characters* (reverse's "$": keep it). Both cuts are tried, in that order;
    the first the format parses wins (the first when neither does).
    """
    stops = fmt.stop_sequences()
    found = [(at, stop) for stop in stops if (at := generated.find(stop)) >= 0]
    if not found:
        return generated
    at, stop = min(found)
    candidates = [generated[: at + 1 if stop.startswith("\n") else at], generated[: at + len(stop)]]
    for candidate in candidates:
        try:
            fmt.parse(prompt, candidate)
            return candidate
        except ParseError:
            continue
    return candidates[0]


def score_generation(fmt: Format, prompt: str, reference: str, generated: str) -> dict[str, float]:
    """Score one generated target against the reference target (both without the prompt).

    Scores that do not apply (context fidelity of a diff without context or
    removed lines) are NaN and left out of the means.
    """
    want = fmt.parse(prompt, reference)
    try:
        got = fmt.parse(prompt, generated)
        parsed = 1.0
    except ParseError:
        got, parsed = None, 0.0
    scores = {"parsed": parsed, "exact_match": float(got is not None and got == want)}
    if fmt.task == "addition":
        final = got
        if hasattr(fmt, "final_answer"):  # scratchpads: the answer line alone, steps unchecked (Lee et al.'s metric)
            try:
                final = fmt.final_answer(generated)
            except ParseError:
                final = None
            scores["answer_match"] = float(final == want)
        scores["digit_accuracy"] = digit_accuracy(final, want)
    splitter = DIFF_SPLITTERS.get(fmt.family) if fmt.task == "edit" else None
    if splitter is not None:
        scores.update(score_diff(splitter, prompt, generated, want))
    return scores


def digit_accuracy(got: str | None, want: str) -> float:
    """Share of the reference's digits matched, aligned from the right (a missing digit is wrong)."""
    want_digits = [c for c in want if c.isdigit()]
    if not want_digits:
        return float(got == want)
    got_digits = [c for c in (got or "") if c.isdigit()]
    right = sum(1 for i in range(1, len(want_digits) + 1) if i <= len(got_digits) and got_digits[-i] == want_digits[-i])
    return right / len(want_digits)


def score_diff(splitter: Callable[[str], OpenElmParts], prompt: str, generated: str, want: str) -> dict[str, float]:
    """Diff-level scores of a generated edit (see the module docstring)."""
    out = dict.fromkeys(EDIT_SCORES[2:], 0.0)
    out["context_at_line"] = out["context_anywhere"] = math.nan
    try:
        parts = splitter(prompt + generated)
        hunks = parse_diff(parts.diff, strict=False)
    except (ParseError, DiffError):
        return out
    out["diff_parsed"] = 1.0
    try:
        parse_diff(parts.diff, strict=True)
        out["hunk_grammar"] = 1.0
    except DiffError:
        pass
    bef = [line.removesuffix("\n") for line in split_lines(parts.before)]
    known = set(bef)
    at_line = anywhere = total = 0
    for hunk in hunks:
        for offset, text in enumerate(hunk.old_side()):
            line = text.removesuffix("\n")
            index = hunk.old_start - 1 + offset
            at_line += 0 <= index < len(bef) and bef[index] == line
            anywhere += line in known
            total += 1
    if total:
        out["context_at_line"] = at_line / total
        out["context_anywhere"] = anywhere / total
    try:
        patched = apply_strict(parts.before, parts.diff)
        out["strict_apply"] = 1.0
        out["exact_match"] = float(patched == want)
    except DiffError:
        pass
    try:
        _, failed = apply_lenient(parts.before, parts.diff)
        out["lenient_apply"] = float(failed == 0)
    except DiffError:
        pass
    return out


@dataclass
class ProbeSet:
    """One source's held-out documents, tokenised, sorted by prompt length (less padding)."""

    source: str
    prompts: list[str]
    references: list[str]
    formats: list[str]
    prompt_ids: list[list[int]]
    target_ids: list[list[int]]
    skipped_too_long: int = 0
    score_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def build_probe_set(
    source: str,
    docs: pa.Table,
    tokenizer: Tokenizer,
    config: ProbeConfig,
    block_size: int,
    seed: int,
) -> ProbeSet:
    """Draw `config.samples` held-out documents (seeded) that fit the context with their answer.

    Candidates are taken in a seeded random order from a pool of at most
    4 x `samples` documents, so a large test split is not tokenised in full.
    """
    rng = np.random.default_rng([seed, 0x9B0BE])
    pool = np.sort(rng.permutation(docs.num_rows)[: 4 * config.samples])
    picked = tokenize_documents(docs.select(["text", "format", "target_start"]).take(pool), tokenizer)
    n_tokens = picked.column("n_tokens").to_numpy()
    fits = np.flatnonzero(n_tokens <= block_size)  # prompt + answer + EOS must fit the context
    chosen = picked.take(np.sort(fits[: config.samples]))
    ids = chosen.column("input_ids").to_pylist()
    cut = chosen.column("target_token_start").to_pylist()
    texts, starts = chosen.column("text").to_pylist(), chosen.column("target_start").to_pylist()
    formats = chosen.column("format").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: (cut[i], i))  # by prompt length: less padding
    score_names = sorted({score for name in set(formats) for score in _score_names(get_format(name))})
    return ProbeSet(
        source=source,
        prompts=[texts[i][: starts[i]] for i in order],
        references=[texts[i][starts[i] :] for i in order],
        formats=[formats[i] for i in order],
        prompt_ids=[ids[i][: cut[i]] for i in order],
        target_ids=[ids[i][cut[i] :] for i in order],
        skipped_too_long=int(len(pool) - len(fits)),
        score_names=score_names,
    )


def _score_names(fmt: Format) -> tuple[str, ...]:
    if fmt.task == "edit" and fmt.family in DIFF_SPLITTERS:
        return EDIT_SCORES
    if fmt.task == "addition":
        extra = ("answer_match",) if hasattr(fmt, "final_answer") else ()
        return ("parsed", "exact_match", *extra, "digit_accuracy")
    return ("parsed", "exact_match")


@torch.no_grad()
def heldout_loss(model: GPT, probe: ProbeSet, eos_id: int, pad_id: int, batch_size: int, device: torch.device) -> float:
    """Mean loss per target token (EOS included) with teacher forcing, through the training batcher."""
    rows = len(probe)
    if rows == 0:  # every held-out document was longer than the context (see `skipped_too_long`)
        return math.nan
    ids = pa.array([p + t for p, t in zip(probe.prompt_ids, probe.target_ids)], type=pa.list_(pa.int32()))
    data = MixtureTokens.from_columns(
        ids,
        np.array([len(p) for p in probe.prompt_ids]),
        pa.array([probe.source] * rows),
        np.arange(rows),
        np.zeros(rows),
        eos_id,
    )
    batches = MixtureBatches(data, batch_size, model.cfg.block_size, "pad", "target", pad_id)
    total, count = 0.0, 0
    for k in range(math.ceil(rows / batch_size)):
        batch = batches.global_batch(k)
        keep = slice(0, min(batch_size, rows - k * batch_size))  # the last batch wraps: drop the repeats
        x = torch.from_numpy(batch["x"][keep].astype(np.int64)).to(device)
        y = torch.from_numpy(batch["y"][keep].astype(np.int64)).to(device)
        mask = torch.from_numpy(batch["mask"][keep]).to(device)
        logits = model(x).float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
        total += float(loss[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


@torch.no_grad()
def run_probe_set(
    model: GPT,
    probe: ProbeSet,
    decode: Callable[[list[int]], str],
    eos_id: int,
    pad_id: int,
    config: ProbeConfig,
    device: torch.device,
) -> tuple[dict[str, float], list[str]]:
    """Generate for every probe document and return (mean score per name, generations)."""
    block = model.cfg.block_size
    generations: list[str] = []
    for lo in range(0, len(probe), config.batch_size):
        hi = min(lo + config.batch_size, len(probe))
        prompts = probe.prompt_ids[lo:hi]
        longest_answer = max(len(t) for t in probe.target_ids[lo:hi])  # EOS included
        room = block - max(len(p) for p in prompts)
        max_new = max(1, min(room, math.ceil(longest_answer * config.max_new_factor) + config.max_new_slack))
        stops = {s for name in probe.formats[lo:hi] for s in get_format(name).stop_sequences()}

        def stopped(rows: list[list[int]]) -> list[bool]:
            return [any(s in decode(r) for s in stops) for r in rows]

        out = model.generate(prompts, max_new, eos_id, pad_id, stopped if stops else None)
        for i, ids in enumerate(out):
            generations.append(cut_at_stop(get_format(probe.formats[lo + i]), probe.prompts[lo + i], decode(ids)))
    per_doc: dict[str, list[float]] = {name: [] for name in probe.score_names}
    for fmt_name, prompt, reference, generated in zip(probe.formats, probe.prompts, probe.references, generations):
        for name, value in score_generation(get_format(fmt_name), prompt, reference, generated).items():
            per_doc[name].append(value)
    means = {}
    for name, values in per_doc.items():
        arr = np.array(values, dtype=np.float64)
        means[name] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    means["heldout_loss"] = heldout_loss(model, probe, eos_id, pad_id, config.batch_size, device)
    return means, generations
