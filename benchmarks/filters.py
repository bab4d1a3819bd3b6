"""Quality filters, dedup and redaction on the whole dev Parquet, measured in one run.

    python benchmarks/filters.py [--workers 2] [--examples 20] [--near-docs N]

Prints (Markdown tables):
* the I/O floor: pyarrow reading the Parquet and writing the same rows as one Arrow IPC stream;
* the build's data stages on a Dask LocalCluster of `--workers` single-threaded
  processes, without Prefect (its start-up is not data work; the cluster's is
  printed on its own line): wall time per phase, and inside the map the seconds
  and rows/s of each step summed over partitions;
* what each rule drops, as a share of all input rows, and per stage;
* near-dedup against `datasketch` MinHashLSH on the same documents (the
  shingled text of every rendered document) and parameters, one process each;
* `--examples N`: N dropped and N kept documents (seeded sample) to read by hand.

Target (issue 3): near-dedup >= 5x faster than datasketch; the build within ~4x the floor on 2 workers.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.build import floor  # noqa: E402
from benchmarks.common import machine, require_dev_data, self_peak_rss_mb, table  # noqa: E402


def run_stages(parquet: Path, out: Path, workers: int) -> tuple[object, dict[str, float], list, float]:
    """The stages as `build_corpus` runs them, on a process-based LocalCluster; wall seconds per phase."""
    from distributed import Client, LocalCluster

    from diffmix.pipelines import build
    from diffmix.schemas.config import load_build_config

    config = load_build_config()
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        startup = time.perf_counter() - start
        client.run(lambda: __import__("diffmix.pipelines.build"))  # imports are start-up, not data work
        phases: dict[str, float] = {}
        t = time.perf_counter()
        plan = build.prepare_build([str(parquet)], out, config)
        parts = build.plan_partitions(plan, {})
        stats = client.gather(client.map(build.process_partition, [plan] * len(parts), parts, pure=False))
        phases["map: partitions -> scored documents"] = time.perf_counter() - t
        t = time.perf_counter()
        groups = build.prepare_dedup(plan, parts)
        phases["filter verdicts + exact dedup"] = time.perf_counter() - t
        t = time.perf_counter()
        edges = client.gather(client.map(build.near_dedup_group, [plan] * len(groups), [parts] * len(groups), groups, pure=False))
        phases["near-dedup band groups"] = time.perf_counter() - t
        t = time.perf_counter()
        specs = build.decide(plan, parts, edges)
        phases["clusters, caps, shard plan"] = time.perf_counter() - t
        t = time.perf_counter()
        shards = client.gather(client.map(build.write_data_shard, [plan] * len(specs), specs, pure=False))
        phases["data shards"] = time.perf_counter() - t
        t = time.perf_counter()
        manifest = build.finalize(plan, parts, stats, shards)
        phases["rejects + manifest"] = time.perf_counter() - t
    return manifest, phases, stats, startup


def drop_table(manifest, alone: dict[str, float]) -> list[list[object]]:
    """Rows dropped per reason as a share of all input rows (each row counted once, by the first
    rule that drops it, in config order), and the share of documents each check drops on its own."""
    counts = manifest.counts
    n = counts.rows_in
    rows = []
    for stage, entry in counts.by_stage.items():
        if stage == "filter":
            for rule, r in entry["rules"].items():
                for reason, k in r["dropped"].items():
                    rows.append([stage, rule, reason, k, 100 * k / n, alone.get(reason, "")])
        else:
            for reason, k in entry["dropped"].items():
                rows.append([stage, "", reason, k, 100 * k / n, ""])
    rows.append(["kept", "", "", counts.kept, 100 * counts.kept / n, ""])
    return rows


def alone_shares(out: Path, config_dict: dict) -> dict[str, str]:
    """Per check: % of rendered documents it drops on its own (from the stored scores)."""
    from diffmix.filters import engine
    from diffmix.filters.tokens import pretoken_lower_bound
    from diffmix.pipelines.io import read_ipc_stream
    from diffmix.pipelines.shards import read_manifest
    from diffmix.schemas.config import BuildConfig

    config = BuildConfig.model_validate(config_dict)
    manifest = read_manifest(out)
    tables = [pl.from_arrow(read_ipc_stream(out / e.path)) for e in [*manifest.shards, *manifest.rejects]]
    docs = pl.concat([t.select(engine.CORPUS_SCHEMA.names) for t in tables if isinstance(t, pl.DataFrame)], how="vertical_relaxed").filter(pl.col("text").is_not_null())
    shares: dict[str, str] = {}
    for rule in engine.configured_rules(config):
        for check in rule.checks():
            if rule.lazy:  # counts exist only where they decided: bound from below with the pre-token count
                budget = getattr(rule, "max_tokens")
                known = docs.select(pl.coalesce("f_tokens", pretoken_lower_bound(pl.col("text"))) > budget).to_series()
                shares[check.reason] = f">= {100 * known.sum() / docs.height:.1f}"
            else:
                shares[check.reason] = f"{100 * docs.select(check.drop.fill_null(False)).to_series().sum() / docs.height:.1f}"
    return shares


# --- near-dedup against datasketch ------------------------------------------------------------


def shingle_texts(out: Path, limit: int | None) -> list[str]:
    """What near-dedup shingles, for every document that reaches it (those with a signature)."""
    from diffmix.filters.dedup import shingle_text
    from diffmix.pipelines.io import read_ipc_stream
    from diffmix.pipelines.shards import read_manifest

    manifest = read_manifest(out)
    columns = ["text", "dff_start", "bef_start", "msg_start", "input_row", "f_minhash"]
    tables = [read_ipc_stream(out / e.path, columns) for e in [*manifest.shards, *manifest.rejects]]
    docs = pl.concat([pl.from_arrow(t) for t in tables], how="vertical_relaxed").filter(pl.col("f_minhash").is_not_null()).sort("input_row")
    assert isinstance(docs, pl.DataFrame)
    diff = docs.select(pl.col("text").str.slice(pl.col("dff_start") + 6)).to_series()
    before = docs.select(pl.col("text").str.slice(pl.col("bef_start") + 6, pl.col("msg_start") - pl.col("bef_start") - 7)).to_series()
    texts = [t.encode()[:8192].decode(errors="ignore") for t in shingle_text(before, diff, "diff").to_list()]
    return texts[:limit] if limit else texts


def ours(texts: list[str], threshold: float, permutations: int, bands: int, rows: int) -> tuple[float, set[int]]:
    from diffmix.filters.dedup import MinHasher, band_keys, bucket_pairs, components

    start = time.perf_counter()
    signatures = MinHasher(permutations=permutations, max_bytes=8192).signatures(texts)
    nodes = np.arange(len(texts))
    pairs = bucket_pairs(band_keys(signatures, list(range(bands)), rows), nodes)
    similar = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1) >= threshold
    label = components(len(texts), pairs[similar])
    dropped = set(np.flatnonzero(label != nodes).tolist())
    return time.perf_counter() - start, dropped


def theirs(texts: list[str], threshold: float, permutations: int, bands: int, rows: int) -> tuple[float, set[int]]:
    """datasketch MinHash + MinHashLSH with the same shingles and LSH layout, on its fastest documented
    path (`MinHash.bulk`, an insertion session); union-find on its candidates (no pair verification,
    so it drops a few more documents than diffmix, which checks each candidate pair's estimate)."""
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=permutations, params=(bands, rows))
    shingle_sets = []
    for text in texts:
        data = text.encode()
        shingle_sets.append(list({data[j : j + 5] for j in range(max(1, len(data) - 4))}) if data else [])
    sketches = MinHash.bulk(shingle_sets, num_perm=permutations)
    with lsh.insertion_session() as session:
        for i, sketch in enumerate(sketches):
            session.insert(i, sketch)
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, sketch in enumerate(sketches):
        for j in lsh.query(sketch):
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    dropped = {i for i in range(len(texts)) if find(i) != i}
    return time.perf_counter() - start, dropped


# --- examples ----------------------------------------------------------------------------------


def examples(out: Path, n: int, seed: int = 0) -> str:
    """n dropped (document-stage rejects) and n kept documents, for reading."""
    from diffmix.pipelines.io import read_ipc_stream
    from diffmix.pipelines.shards import read_manifest

    manifest = read_manifest(out)
    kept = pl.from_arrow(pa.concat_tables([read_ipc_stream(out / e.path) for e in manifest.shards]))
    rejected = pl.from_arrow(pa.concat_tables([read_ipc_stream(out / e.path) for e in manifest.rejects]))
    assert isinstance(kept, pl.DataFrame) and isinstance(rejected, pl.DataFrame)
    rejected = rejected.filter(pl.col("stage") != "structural")
    rng = random.Random(seed)
    lines = []
    for title, frame in (("DROPPED", rejected), ("KEPT", kept)):
        picks = rng.sample(range(frame.height), min(n, frame.height))
        for i in picks:
            row = frame.row(i, named=True)
            text = row["text"]
            subject = text[row["msg_start"] + 6 : row["dff_start"] - 1].split("\n")[0]
            diff = text[row["dff_start"] + 6 :].splitlines()[:8]
            why = f"{row.get('stage')}/{row.get('reason')}" + (f" ({row['detail']})" if row.get("detail") else "") if title == "DROPPED" else "kept"
            lines.append(f"--- {title} {row['repo']} {row['commit'][:8]} {row['path']} [{row['lang']}] {why}")
            lines.append(f"    subject: {subject!r}  old {row['old_chars']} chars, +{row['lines_added']}/-{row['lines_deleted']} lines, {row['n_hunks']} hunks, tokens {row['f_tokens'] or row['f_tokens_min']}")
            lines.extend(f"    | {line[:110]}" for line in diff)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--examples", type=int, default=0, metavar="N")
    parser.add_argument("--near-docs", type=int, default=None, metavar="N", help="compare near-dedup on the first N documents only")
    args = parser.parse_args()
    parquet = require_dev_data()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the CLI sets it (one thread per worker)
    print(f"machine: {machine()}\n")
    scratch = Path(tempfile.mkdtemp(prefix="diffmix-filters-"))
    try:
        t_floor, t_floor_median = floor(parquet, scratch)
        rows_in = pq_rows(parquet)
        header = ["floor: pyarrow read Parquet + write IPC stream", "rows", "best of 5 s", "median s"]
        print(table(header, [["whole dev Parquet", rows_in, t_floor, t_floor_median]]))

        out = scratch / "corpus"
        manifest, phases, stats, startup = run_stages(parquet, out, args.workers)
        print(f"\nstart-up (own line, not in any throughput): Dask LocalCluster of {args.workers} processes {startup:.1f} s")
        total = sum(phases.values())
        phase_rows = [[name, seconds, rows_in / seconds] for name, seconds in phases.items()]
        phase_rows.append(["all data stages", total, rows_in / total])
        print()
        print(table(["phase (wall, %d workers)" % args.workers, "seconds", "input rows/s"], phase_rows))
        print(f"\nall data stages / best floor: {total / t_floor:.2f}x")

        steps: Counter[str] = Counter()
        for s in stats:
            steps.update(s.seconds)
        documents = sum(s.documents for s in stats)
        step_rows = [[name, seconds, rows_in / seconds if seconds else float("inf")] for name, seconds in steps.items()]
        step_rows.append(["map total", sum(steps.values()), rows_in / sum(steps.values())])
        print()
        print(table(["map step (seconds summed over partitions)", "seconds", "input rows/s (one worker)"], step_rows))
        print(f"\nrendered documents: {documents}; redaction findings: {manifest.reports['redaction']['findings']}")

        print()
        shares = alone_shares(out, manifest.config)
        print(table(["stage", "rule", "reason", "rows", "% of input (first rule)", "% of documents (alone)"], drop_table(manifest, shares)))

        near = manifest.config["filters"]["dedup"]["near"]
        bands, rows = manifest.reports["near_dedup"]["bands"], manifest.reports["near_dedup"]["rows"]
        texts = shingle_texts(out, args.near_docs)
        t_ours, d_ours = ours(texts, near["threshold"], near["permutations"], bands, rows)
        t_theirs, d_theirs = theirs(texts, near["threshold"], near["permutations"], bands, rows)
        overlap = len(d_ours & d_theirs) / max(1, len(d_ours | d_theirs))
        size = sum(len(t.encode()) for t in texts) / 1e6
        print()
        print(
            table(
                ["near-dedup, one process", "documents", "MB shingled", "seconds", "docs/s", "dropped", "x faster"],
                [
                    ["diffmix (NumPy MinHash, LSH, verified pairs, components)", len(texts), size, t_ours, len(texts) / t_ours, len(d_ours), t_theirs / t_ours],
                    ["datasketch MinHash + MinHashLSH (+ union-find)", len(texts), size, t_theirs, len(texts) / t_theirs, len(d_theirs), 1.0],
                ],
            )
        )
        print(f"\n{bands} bands x {rows} rows, threshold {near['threshold']}, {near['permutations']} permutations, 5-byte shingles; dropped-set overlap (Jaccard) {overlap:.3f}")
        print(f"peak RSS of this process: {self_peak_rss_mb():.0f} MB")
        if args.examples:
            print("\n" + examples(out, args.examples))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pq_rows(parquet: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(parquet).metadata.num_rows


if __name__ == "__main__":
    main()
