"""3-digit addition in Lee et al.'s four formats: steps, unique examples and tokens to 90 %, over seeds.

    python benchmarks/arith_formats.py                       # the full run: 4 formats x 3 seeds (~30-40 min on 2 cores)
    python benchmarks/arith_formats.py --seeds 0 --quick     # minutes: 1 seed, shorter step caps
    python benchmarks/arith_formats.py --n 1000,2000,5000    # an N-sweep (the paper's x-axis)
    python benchmarks/arith_formats.py --device cuda --model lee --jobs 8   # on a GPU, at Lee et al.'s model size

Every run is the whole project path: `synthetic:addition?...&operands=balanced`
built as a corpus, mixed by a recipe (one pass over N unique training problems,
global batch 64), trained by `diffmix.training.train` (`--model cpu`: 2 layers,
d=128, 4 heads, about 0.4M parameters; `--model lee`: 6 layers, d=384, 6 heads,
10.6M, Lee et al.'s size; char tokenizer, AdamW 1e-3 with 100 warmup steps, loss on
the target) and probed every 100 steps on 200 of the 500 held-out problems (the
same problems for every format, seed and N). A run stops when exact match (the
parsed answer; for the scratchpads every step must be right too) has been
>= 90 % at two evals in a row, or at its step cap: then it is *censored*.

The axes, as the summary gives them: steps and tokens to 90 % (interpolated
between evals), and unique examples seen by then (at most N; the paper's axis is
N itself, so the N-sweep table gives "smallest N that reached 90 %").
Lee et al. 2023 (6 layers, d=384, 10.6M parameters) is printed beside it.
`--jobs N` trains N runs at once (separate processes; on one GPU they share it:
runs this small leave most of it idle). Data and mixtures are built first, in order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, table  # noqa: E402
from diffmix.mixers.mixture import build_mixture  # noqa: E402
from diffmix.mixers.recipe import parse_recipe  # noqa: E402
from diffmix.pipelines.build import build_synthetic, prepare_build  # noqa: E402
from diffmix.schemas.config import load_build_config  # noqa: E402
from diffmix.training import load_train_config, train  # noqa: E402

FORMATS = ("plain", "reverse", "simplified_scratchpad", "detailed_scratchpad")
# Step caps (full / --quick) and context per format; scratchpad documents are 4x and 20x longer.
STEP_CAPS = {"plain": (8000, 3000), "reverse": (12000, 3000), "simplified_scratchpad": (3000, 1500), "detailed_scratchpad": (1500, 400)}
BLOCK = {"plain": 32, "reverse": 32, "simplified_scratchpad": 96, "detailed_scratchpad": 320}
# Lee et al. 2023, test accuracy (%) by unique training examples (lee-ny/teaching_arithmetic plots/sample_efficiency.csv).
LEE = {
    "plain": {1000: 0.4, 2000: 1.7, 4000: 62.3, 10000: 87.4, 20000: 90.1},
    "reverse": {1000: 1.6, 2000: 30.6, 4000: 98.2, 10000: 100.0},
    "simplified_scratchpad": {1000: 84.6, 2000: 99.7, 4000: 99.9, 10000: 100.0},
    "detailed_scratchpad": {500: 92.8, 1000: 99.8, 2000: 99.6, 4000: 100.0},
}
MODELS = {"cpu": {"n_layer": 2, "n_head": 4, "d_model": 128}, "lee": {"n_layer": 6, "n_head": 6, "d_model": 384}}
LEE_N90 = {"plain": "20,000 (90.1 %)", "reverse": "4,000 (98.2 %)", "simplified_scratchpad": "2,000 (99.7 %)", "detailed_scratchpad": "500 (92.8 %)"}


def corpus(fmt: str, n: int, root: Path) -> Path:
    out = root / f"{fmt}-n{n}"
    if not (out / "manifest.json").is_file():
        uri = f"synthetic:addition?digits=3&format={fmt}&operands=balanced&n={n}&test=500&seed=0"
        build_synthetic(prepare_build([uri], out, load_build_config(None)))
    return out


def mixture(source: Path, n: int, seed: int) -> Path:
    out = source.parent / f"{source.name}-mix-s{seed}"
    recipe = parse_recipe(
        {
            "name": out.name,
            "seed": seed,
            "global_batch_size": 64,
            "budget": {"samples": n},
            "sources": [{"name": "add", "path": str(source)}],
            "schedule": {"type": "constant", "weights": "uniform"},
        },
        base_dir=out.parent,
    )
    build_mixture(recipe, out)
    return out


def run_one(fmt: str, n: int, seed: int, steps: int, mix: Path, threads: int, samples: int, device: str = "cpu", model: str = "cpu") -> dict[str, Any]:
    """Train one run on `mix` (built by `mixture` before any run starts); its folder sits beside it."""
    config = load_train_config(
        None,
        seed=seed,
        steps=steps,
        batch_size=64,
        eval_interval=100,
        checkpoint_interval=steps,
        stop_when="exact_match",
        device=device,
        threads=threads,
        progress=False,
        max_eval_fraction=1.0,
        **{"model.block_size": BLOCK[fmt], "probes.samples": samples, "probes.batch_size": samples},
        **{f"model.{key}": value for key, value in MODELS[model].items()},
    )
    # Everything that changes a run or its timings is in its name: `train` resumes (or returns) a run of its folder.
    run = mix.parent / f"run-{fmt}-n{n}-s{seed}-{model}-{device}-t{threads}-cap{steps}"
    t0 = time.perf_counter()
    summary = train(mix, run, config)
    wall = time.perf_counter() - t0
    timing = json.loads((run / "timing.json").read_text())
    skill = summary["skills"]["add/exact_match"]
    answer = summary["skills"].get("add/answer_match", skill)
    return {
        "format": fmt,
        "n": n,
        "seed": seed,
        "cap": steps,
        "steps_run": summary["steps"],
        "censored": skill["censored"],
        "steps": skill["steps"],
        "tokens": skill["tokens"],
        "unique_examples": skill["unique_examples"],
        "final": skill["final"],
        "best": skill["best"],
        "answer_best": answer["best"],
        "tokens_per_example": summary["mixture"]["tokens"] / summary["mixture"]["rows"],
        "steps_per_s": summary["steps"] / timing["train_seconds"],
        "wall_s": wall,
        "eval_fraction": timing["eval_fraction"],
        "params": summary["model"]["non_embedding_params"],
    }


def _spread(values: list[float]) -> str:
    """median [min-max] of the reached values."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def report(results: list[dict[str, Any]], seeds: list[int]) -> str:
    lines = []
    for n in sorted({r["n"] for r in results}):
        rows = []
        for fmt in FORMATS:
            runs = [r for r in results if r["format"] == fmt and r["n"] == n]
            if not runs:
                continue
            reached = [r for r in runs if not r["censored"]]
            rows.append(
                [
                    fmt,
                    f"{len(reached)}/{len(runs)}",
                    _spread([r["steps"] for r in reached]),
                    _spread([r["unique_examples"] for r in reached]),
                    _spread([r["tokens"] for r in reached]),
                    ", ".join(f"{100 * r['best']:.0f}" for r in runs),
                    f"{runs[0]['tokens_per_example']:.0f}",
                    f"{statistics.median(r['steps_per_s'] for r in runs):.1f}",
                    f"{sum(r['wall_s'] for r in runs) / len(runs):.0f}",
                    f"{LEE[fmt].get(n, '-')}",
                ]
            )
        params = ", ".join(sorted({f"{r['params'] / 1e6:.2f}M" for r in results if r["n"] == n}))
        lines.append(f"\n### N = {n:,} unique training problems (seeds {', '.join(map(str, seeds))}; {params} non-embedding parameters)\n")
        lines.append(
            table(
                [
                    "format",
                    "reached 90 %",
                    "steps to 90 %",
                    "unique examples",
                    "tokens to 90 %",
                    "best exact match % per seed",
                    "tokens/example",
                    "steps/s",
                    "s/run",
                    f"Lee et al. % at N={n:,}",
                ],
                rows,
            )
        )
        caps = ", ".join(f"{f} {next(r['cap'] for r in results if r['format'] == f)}" for f in FORMATS if any(r["format"] == f for r in results))
        lines.append(f"\nStep caps: {caps}. A run that has not held 90 % for 2 evals by its cap is censored: no number, only its best.")
    lines.append("\n### Lee et al. 2023: smallest N with >= 90 % (6 layers, d=384)\n")
    lines.append(table(["format", "N"], [[f, LEE_N90[f]] for f in FORMATS]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", default="2000", help="unique training problems, comma list for an N-sweep")
    parser.add_argument("--quick", action="store_true", help="the short step caps")
    parser.add_argument("--steps", type=int, help="one step cap for every format")
    parser.add_argument("--probe-samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="cpu", help="cpu: 2 layers, d=128 (0.4M); lee: 6 layers, d=384 (10.6M)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--out", type=Path, help="keep data, runs and results.json here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-arith-"))
    root.mkdir(parents=True, exist_ok=True)
    formats = args.formats.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(n) for n in args.n.split(",")]
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"machine: {machine()}{gpu}, torch {torch.__version__}, model {args.model}, {args.threads} thread(s) x {args.jobs} job(s)", flush=True)
    # dict.fromkeys: a value given twice would send two processes to one run folder.
    runs = list(dict.fromkeys((fmt, n, seed, args.steps or STEP_CAPS[fmt][1 if args.quick else 0]) for n in sizes for fmt in formats for seed in seeds))
    # Serially: runs in parallel must not build the same corpus at once.
    mixes = [mixture(corpus(fmt, n, root), n, seed) for fmt, n, seed, _ in runs]
    results: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"))  # spawn: CUDA does not survive a fork
    try:
        futures = [pool.submit(run_one, fmt, n, seed, cap, mix, args.threads, args.probe_samples, args.device, args.model) for (fmt, n, seed, cap), mix in zip(runs, mixes, strict=True)]
        for future in futures:
            results.append(future.result())
            print(json.dumps(results[-1]), flush=True)
            (root / "results.json").write_text(json.dumps(results, indent=1))
    except BaseException:  # one failed run stops the rest at once, as the serial loop did
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    print(report(results, seeds))


if __name__ == "__main__":
    main()
