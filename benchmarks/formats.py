"""Per format: mean prompt and target length in tokens on the dev commits, plus the addition formats.

    python benchmarks/formats.py [--rows 2000] [--vocab 8192] [--out benchmarks/results/formats.md]

Longer targets cost tokens; the training stage measures whether they pay for
themselves. Edit formats are measured on an evenly spread sample of the dev
parquet (every document round-trips first), tokenised with a byte-level BPE
trained on a sample of the same files; the addition formats on 2,000 problems
with the character tokenizer (the Lee et al. setting) and with the same BPE.
Also reported: render and parse time per document, and encode throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEV_PARQUET as DEV  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from diffmix.formats.base import format_names, get_format
from diffmix.formats.edit import EditRecord, has_literal_tag
from diffmix.formats.window import window_record
from diffmix.mixers.synthetic import (
    parse_synthetic_uri,
    synthetic_documents,
    synthetic_problems,
)
from diffmix.pipelines.diff import BinaryDiffError
from diffmix.pipelines.tokenize import (
    char_tokenizer,
    token_stats,
    tokenize_documents,
    train_bpe,
)


def load_records(path: Path, rows: int) -> list[EditRecord]:
    """An evenly spread sample of real edits (text both sides, changed, no literal tags)."""
    source = pq.ParquetFile(path)
    total = source.metadata.num_rows
    step = max(1, total // rows)
    columns = ["new_file", "old_contents", "new_contents", "message", "change_type", "is_binary"]
    records: list[EditRecord] = []
    for group in range(source.metadata.num_row_groups):
        table = source.read_row_group(group, columns=columns)
        for row in table.take(list(range(0, table.num_rows, step))).to_pylist():
            old, new, msg = row["old_contents"], row["new_contents"], row["message"] or ""
            if old is None or new is None or row["is_binary"] or old == new:
                continue
            if has_literal_tag(old) or has_literal_tag(new) or has_literal_tag(msg):
                continue
            try:
                records.append(EditRecord.from_texts(row["new_file"], old, msg, new, row["change_type"] == "A"))
            except BinaryDiffError:
                continue
    return records


def measure(name: str, records: list, tokenizer, label: str | None = None) -> dict:
    fmt = get_format(name)
    start = time.perf_counter()
    docs = [fmt.render(r) for r in records]
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    for record, doc in zip(records, docs):
        assert fmt.parse(doc.prompt, doc.target) == fmt.answer(record), (name, getattr(record, "path", record))
    parse_s = time.perf_counter() - start
    table = pa.table(
        {
            "text": pa.array([d.text for d in docs], pa.large_string()),
            "target_start": pa.array([d.target_start for d in docs], pa.int32()),
        }
    )
    chars = sum(len(d.text.encode()) for d in docs)
    start = time.perf_counter()
    out = tokenize_documents(table, tokenizer, add_eos=False)
    encode_s = time.perf_counter() - start
    stats = token_stats(out)
    n = len(docs)
    return {
        "format": label or name,
        "docs": n,
        "prompt_tokens": stats["prompt"] / n,
        "target_tokens": stats["target"] / n,
        "target_chars": sum(len(d.target) for d in docs) / n,
        "render_ms": render_s * 1e3 / n,
        "parse_ms": parse_s * 1e3 / n,
        "encode_mb_s": chars / 1e6 / encode_s,
    }


def encoder_comparison(tokenizer, texts: list[str], max_mb: float = 10.0) -> str:
    """encode_batch vs encode_batch_fast (no offsets) on the same texts, best of two runs each."""
    sample, size = [], 0
    for text in texts:
        if size >= max_mb * 1e6:
            break
        sample.append(text)
        size += len(text.encode())
    lines = ["| encoder | MB | best of 2 (s) | MB/s |", "|---|---|---|---|"]
    for name in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tokenizer, name, None)
        if encode is None:
            continue
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            encode(sample, add_special_tokens=False)
            best = min(best, time.perf_counter() - start)
        lines.append(f"| {name} | {size / 1e6:.1f} | {best:.2f} | {size / 1e6 / best:.2f} |")
    parallel = os.environ.get("TOKENIZERS_PARALLELISM", "unset")
    return "\n".join(lines) + f"\n\nTOKENIZERS_PARALLELISM={parallel}.\n"


def table_md(rows: list[dict], tokenizer_name: str, baseline: str) -> str:
    head = (
        f"| format | docs | mean prompt tokens ({tokenizer_name}) | mean target tokens | target / {baseline} "
        "| mean target chars | render ms/doc | parse ms/doc | encode MB/s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    base = next(r["target_tokens"] for r in rows if r["format"] == baseline)
    lines = [
        f"| {r['format']} | {r['docs']:,} | {r['prompt_tokens']:,.1f} | {r['target_tokens']:,.1f} | "
        f"{r['target_tokens'] / base:.2f}x | {r['target_chars']:,.0f} | {r['render_ms']:.3f} | {r['parse_ms']:.3f} | "
        f"{r['encode_mb_s']:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--rows", type=int, default=2000, help="edit documents sampled from the dev parquet")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--bpe-chars", type=int, default=20_000_000, help="training text for the BPE")
    parser.add_argument("--out", type=Path, help="also write the Markdown here (the committed write-up is benchmarks/results/formats.md)")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: dev data not found")
    where = machine()
    start = time.perf_counter()
    records = load_records(args.data, args.rows)
    load_s = time.perf_counter() - start
    print(f"{len(records)} edit records in {load_s:.1f}s")

    start = time.perf_counter()
    # Train on the files themselves (both sides) and messages: the text every format is made of.
    corpus = [t for r in records for t in (r.before, r.after, r.message)]
    bpe = train_bpe(corpus, args.vocab, max_chars=args.bpe_chars)
    train_s = time.perf_counter() - start
    print(f"BPE vocab {args.vocab} trained in {train_s:.1f}s")

    edit_rows = []
    for name in format_names("edit"):
        edit_rows.append(measure(name, records, bpe))
        print(edit_rows[-1])
    windowed = [window_record(r, 3) for r in records]
    for name in ("openelm_v1", "scratch_lines_v1", "scratch_quote_v1"):
        edit_rows.append(measure(name, windowed, bpe, f"{name} + window k=3"))
        print(edit_rows[-1])

    encoders = encoder_comparison(bpe, [r.before for r in records])
    print(encoders)

    problems = [p for _, p in synthetic_problems(parse_synthetic_uri("synthetic:addition?n=2000&test=0"))]
    all_text = synthetic_documents(parse_synthetic_uri("synthetic:addition?n=10&test=0&format=detailed_scratchpad"))
    chars = char_tokenizer(all_text.column("text").to_pylist(), alphabet="0123456789$+=\n")
    arith_char, arith_bpe = [], []
    for name in format_names("addition"):
        arith_char.append(measure(name, problems, chars))
        arith_bpe.append(measure(name, problems, bpe))
        print(arith_char[-1])
    copies = [p for _, p in synthetic_problems(parse_synthetic_uri("synthetic:copy?n=2000&test=0"))]
    copy_chars = char_tokenizer(alphabet="abcdefghijklmnopqrstuvwxyz<>CTXQA \n")
    arith_char.append(measure("copy_v1", copies, copy_chars))

    end_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    report = (
        "# Document formats: prompt and target length in tokens\n\n"
        f"Machine: {where}, at the end {end_load}. Shared with other engineers while measuring, so the ms and MB/s columns are noisy "
        "(compare within a column). Run: `python benchmarks/formats.py` "
        f"(`--rows {args.rows} --vocab {args.vocab}`).\n\n"
        f"## Edit formats on the dev commits\n\n{len(records):,} real (commit, file) edits spread evenly over "
        f"`commits-dev.parquet` (text both sides, changed, no literal tags); every document round-trips before it "
        f"is counted. Byte-level BPE, vocab {args.vocab}, trained on {min(args.bpe_chars, sum(map(len, corpus))):,} "
        f"characters of the same files and messages ({train_s:.1f} s). Prompt and target are encoded separately "
        "(as `tokenize_documents` does); no end-of-text token counted.\n\n"
        + table_md(edit_rows, f"BPE {args.vocab}", "openelm_v1")
        + "\n## Addition (3 digits, uniform operands, 2,000 problems) and copy\n\nCharacter tokenizer (one token "
        "per character, the Lee et al. setting):\n\n"
        + table_md(arith_char, "char", "plain_v1")
        + f"\nThe same addition problems with the code BPE (vocab {args.vocab}):\n\n"
        + table_md(arith_bpe, f"BPE {args.vocab}", "plain_v1")
        + "\n## Encoder throughput (byte-level BPE, real files)\n\n"
        + "`tokenize_documents` uses `encode_batch_fast` where tokenizers has it (0.21+): it skips offsets.\n\n"
        + encoders
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
