"""`diffmix` command line (also `python flows.py ...`).

    diffmix build   --input SRC [--input SRC ...] --out DIR [--config FILE] [--workers N] [--dask-address ADDR]
    diffmix inspect DIR

Bad input ends in one line on stderr naming what is wrong and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Quiet, offline-safe defaults before Prefect / datasets are imported (a user's settings win).
for _key, _value in {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # Run logs go to the Prefect API (and UI); the terminal shows diffmix's own output,
    # so a bad input deep in a task still ends in one line, not a logged traceback.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}.items():
    os.environ.setdefault(_key, _value)

from diffmix.errors import DiffmixError  # noqa: E402

EXIT_BAD_INPUT = 2


def _build(args: argparse.Namespace) -> int:
    from diffmix.flows import run_build_corpus

    overrides: dict[str, Any] = {}
    if args.format:
        overrides["format"] = args.format
    manifest = run_build_corpus(
        args.input,
        args.out,
        config_path=args.config,
        workers=args.workers,
        dask_address=args.dask_address,
        overwrite=args.overwrite,
        config_overrides=overrides,
    )
    counts = manifest["counts"]
    dropped = ", ".join(f"{k} {v}" for k, v in counts["dropped"].items()) or "none"
    print(f"{args.out}: {counts['kept']} documents from {counts['in']} rows in {len(manifest['shards'])} shard(s); dropped: {dropped}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from diffmix.inspect import describe

    print(describe(Path(args.dir), documents=args.documents))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmix", description="Commit data -> diff-model documents -> mixtures -> skill-acquisition speed.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser("build", help="build a document corpus from commits or synthetic sources")
    build.add_argument("--input", action="append", required=True, metavar="SRC", help="git repo, .parquet, .jsonl[.gz|.zst], hf:NAME[:SPLIT] or synthetic:TASK?k=v (repeatable)")
    build.add_argument("--out", required=True, metavar="DIR")
    build.add_argument("--config", metavar="FILE", help="build config YAML (default: the packaged configs/build.yaml)")
    build.add_argument("--format", metavar="NAME", help="document format (overrides the config), e.g. openelm_v1")
    build.add_argument("--workers", type=int, default=2, metavar="N", help="Dask LocalCluster worker processes (default 2)")
    build.add_argument("--dask-address", metavar="ADDR", help="use an existing Dask scheduler instead of a LocalCluster")
    build.add_argument("--overwrite", action="store_true", help="replace a different build already in --out")
    build.set_defaults(run=_build)

    inspect = sub.add_parser("inspect", help="print a dataset's counts, sizes and a document")
    inspect.add_argument("dir", metavar="DIR")
    inspect.add_argument("--documents", type=int, default=1, metavar="N", help="documents to pretty-print (default 1)")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except DiffmixError as exc:
        print(f"diffmix {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"diffmix {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
