"""`diffmix inspect DIR`: what a dataset holds, in a terminal page."""

from __future__ import annotations

from pathlib import Path

from diffmix.errors import DiffmixError
from diffmix.pipelines.io import read_ipc_stream, read_json
from diffmix.pipelines.shards import open_dataset, read_manifest, shard_paths, verify_files
from diffmix.schemas.manifest import PIPELINE_STAGES, Manifest

_MAX_SECTION_LINES = 12
_MAX_LINE_CHARS = 200  # a minified file's one line would be the whole page


def describe(directory: Path, documents: int = 1) -> str:
    """A training run's skills, a mixture's audit, or a corpus's counts, sizes and documents;
    a file that parses but lacks what diffmix writes there fails in one line."""
    try:
        return _describe(directory, documents)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # (a DiffmixError is none of these)
        raise DiffmixError(f"{directory}: not as diffmix writes it ({type(exc).__name__}: {exc})") from None


def _describe(directory: Path, documents: int) -> str:
    if (directory / "summary.json").is_file() and not (directory / "manifest.json").is_file():
        return describe_run(directory)
    if (directory / "config.json").is_file() and not (directory / "manifest.json").is_file():
        if not isinstance(read_json(directory / "config.json"), dict) or "digest" not in read_json(directory / "config.json"):
            raise DiffmixError(f"{directory}: not a diffmix dataset or run (its config.json is not a run's)")
        raise DiffmixError(f"{directory}: a training run that has not finished (no summary.json yet); the same `diffmix train` command resumes it")
    if read_manifest(directory).kind == "mixture":
        from diffmix.mixers.mixture import MixtureReader, describe_mixture

        reader = MixtureReader(directory)  # its shards and tokenizer checked; an index-only one's sources too
        first = reader.rows(0, min(documents, len(reader))).to_pylist()  # the start of training, in order
        return "\n".join([describe_mixture(directory), *(_pretty(row) for row in first)])
    manifest = open_dataset(directory)  # every shard there, with its size and sha256: damage fails in one line
    verify_files(directory, manifest.rejects)  # a refilter reads them: damage there fails here too
    lines = [f"{directory}  ({manifest.kind}, config {manifest.config_hash[:12]}; shards and rejects verified)"]
    lines += [f"  input  {i.kind:9} {i.uri}  {i.fingerprint[:24]}" for i in manifest.inputs]
    counts = manifest.counts
    lines.append(f"\nrows in {counts.rows_in:,}  kept {counts.kept:,}  dropped {counts.rows_in - counts.kept:,}")
    # In pipeline order (the manifest's JSON keys are sorted).
    order = {stage: i for i, stage in enumerate(PIPELINE_STAGES)}
    for stage, info in sorted(counts.by_stage.items(), key=lambda kv: order.get(kv[0], len(order))):
        lines.append(f"  {stage:<11} in {info['in']:>9,}  kept {info['kept']:>9,}")
        for reason, n in sorted(info.get("dropped", {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason:<28} {n:>9,}  {100 * n / max(1, info['in']):5.1f}%")
    total = sum(s.bytes for s in manifest.shards)
    lines.append(f"\nshards {len(manifest.shards)}  ({total / 1e6:,.1f} MB)   rejects {len(manifest.rejects)} file(s)")
    lines.append("splits  " + ("  ".join(f"{k} {v:,}" for k, v in manifest.splits.items()) or "none (no document kept)"))
    lines.append("formats " + ("  ".join(f"{k} {v:,}" for k, v in manifest.formats.items()) or "none (no document kept)"))
    if manifest.tokenizer:
        lines.append(f"tokenizer {manifest.tokenizer}")
    lines += [_pretty(row) for row in _sample(directory, manifest, documents)]
    return "\n".join(lines)


def describe_run(directory: Path) -> str:
    """Per skill: steps / tokens / unique examples to the threshold (or censored), AULC, final score."""
    summary = read_json(directory / "summary.json")
    tau, k = summary["threshold"]["tau"], summary["threshold"]["k"]
    loss = summary.get("final_loss_ema")
    lines = [f"{directory}  (run: {summary.get('steps')} steps, {summary.get('tokens') or 0:,} tokens, final EMA loss {_num(loss)})"]
    lines.append(f"skill speed to tau = {tau} held for {k} evals:")
    for skill, entry in summary.get("skills", {}).items():
        if entry.get("censored"):
            reached = "censored (never held tau)"
        else:
            reached = f"{entry['steps']:,.0f} steps, {entry['tokens']:,.0f} tokens, {entry['unique_examples']:,.0f} unique examples"
        lines.append(f"  {skill:<40} {reached}; AULC {_num(entry.get('aulc'))}, final {_num(entry.get('final'))}")
    for plateau in summary.get("plateaus", []):
        lines.append(f"  plateau of the EMA loss: {plateau}")
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a plain-text table, each column as wide as its widest cell."""
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _sample(directory: Path, manifest: Manifest, per_format: int) -> list[dict]:
    """The first `per_format` documents of each format."""
    seen: dict[str, int] = {}
    picked = []
    for path in shard_paths(directory, manifest):
        table = read_ipc_stream(path)
        formats = table.column("format").to_pylist()
        for i, name in enumerate(formats):
            if seen.get(name, 0) < per_format:
                seen[name] = seen.get(name, 0) + 1
                picked.append(table.slice(i, 1).to_pylist()[0])
        if len(seen) == len(manifest.formats) and all(v >= per_format for v in seen.values()):
            break
    return picked


def _clip(text: str) -> str:
    """At most `_MAX_SECTION_LINES` lines (the first and last halves) of at most `_MAX_LINE_CHARS` characters each."""
    lines = text.split("\n")
    if len(lines) > _MAX_SECTION_LINES:
        lines = lines[: _MAX_SECTION_LINES // 2] + [f"  … {len(lines) - _MAX_SECTION_LINES} more lines …"] + lines[-_MAX_SECTION_LINES // 2 :]
    return "\n".join(line if len(line) <= _MAX_LINE_CHARS else f"{line[:_MAX_LINE_CHARS]} … {len(line) - _MAX_LINE_CHARS:,} more characters" for line in lines)


def _pretty(row: dict) -> str:
    where = " · ".join(str(row[k]) for k in ("repo", "path") if row.get(k)) or row.get("source", "")
    place = row["split"] if "split" in row else f"position {row['position']}, phase {row['phase']}"  # a mixture row
    head = f"\n── {row['doc_id']} · {row['format']} · {place} · {where} ──"
    prompt, target = row["text"][: row["target_start"]], row["text"][row["target_start"] :]
    return f"{head}\n{_clip(prompt)}\n▼ target ({len(target)} chars)\n{_clip(target)}"

