"""Training stage against its baselines, measured in one run on the same mixture.

    python benchmarks/train.py [--steps 300] [--repeat 3] [--threads 1] [--out DIR]
                               [--device cpu|cuda] [--compile] [--workers N] [--skip-loader]

Prints (Markdown tables):
* the loader: global batches (x, y, loss mask) per second and tokens/s of
  `diffmix.training.data` against iterating the same shards with `datasets`
  (`Dataset.from_file` per shard, `with_format("torch")`, a torch DataLoader
  whose collate pads and builds the same mask); target >= 2x;
* the trainer: tokens/s of `train()` (its loop time, evaluation and checkpoints
  excluded and shown apart) against a bare torch loop over the same model, the
  same initial weights and the same batches built in advance; target overhead <= 10%;
* evaluation time as a fraction of training time with the default probe settings
  (200 held-out documents per source, every 100 steps); target <= 20%.

Two workloads, both 3-digit addition with balanced operand lengths, pre-tokenised
with the shared character tokenizer and mixed by `build_mixture`: the plain format
(about 14 tokens a document) and the simplified scratchpad (about 50).
Timings are best-of-`repeat`, runs of the two sides interleaved: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, table  # noqa: E402
from diffmix.mixers.mixture import build_mixture  # noqa: E402
from diffmix.mixers.recipe import parse_recipe  # noqa: E402
from diffmix.mixers.synthetic import parse_synthetic_uri, synthetic_documents  # noqa: E402
from diffmix.pipelines.io import sha256_json  # noqa: E402
from diffmix.pipelines.shards import shard_paths, write_manifest, write_table_shards  # noqa: E402
from diffmix.pipelines.tokenize import (  # noqa: E402
    char_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenize_documents,
)
from diffmix.schemas.manifest import Counts, Manifest  # noqa: E402
from diffmix.training import load_train_config, train  # noqa: E402
from diffmix.training.config import TrainConfig  # noqa: E402
from diffmix.training.data import (  # noqa: E402
    MixtureBatches,
    MixtureTokens,
    eos_id,
    make_loader,
    open_mixture,
)
from diffmix.training.loop import deterministic_kernels  # noqa: E402
from diffmix.training.model import GPT  # noqa: E402

WORKLOADS = {
    "plain": "synthetic:addition?digits=3&format=plain&operands=balanced&n=20000&test=500&seed=0",
    "simplified_scratchpad": "synthetic:addition?digits=3&format=simplified_scratchpad&operands=balanced&n=20000&test=500&seed=0",
}
BATCH = 64


def tokenized_corpus(uri: str, out: Path) -> Path:
    """A synthetic source as a pre-tokenised corpus directory (char tokenizer saved beside the shards)."""
    docs = synthetic_documents(parse_synthetic_uri(uri))
    tokenizer = char_tokenizer(docs.column("text").to_pylist())
    table_ = tokenize_documents(docs, tokenizer)
    entries = write_table_shards(out, "data", table_, target_bytes=1 << 20)
    splits = {s: int(pc.sum(pc.equal(table_.column("split"), s)).as_py()) for s in ("train", "test")}
    manifest = Manifest(
        kind="corpus",
        config={"uri": uri},
        config_hash=sha256_json({"uri": uri}),
        inputs=[],
        counts=Counts.model_validate({"in": table_.num_rows, "kept": table_.num_rows}),
        columns=table_.column_names,
        shards=entries,
        splits=splits,
        tokenizer=save_tokenizer(tokenizer, out),
    )
    write_manifest(out, manifest)
    return out


def mixture(source: Path, out: Path, samples: int) -> Path:
    recipe = parse_recipe(
        {
            "name": out.name,
            "global_batch_size": BATCH,
            "budget": {"samples": samples},
            "sources": [{"name": "add", "path": str(source)}],
            "schedule": {"type": "constant", "weights": "uniform"},
        },
        base_dir=out.parent,
    )
    build_mixture(recipe, out, shard_bytes=1 << 20)
    return out


def config(steps: int, threads: int, device: str = "cpu", **overrides: object) -> TrainConfig:
    base = {
        "steps": steps,
        "batch_size": BATCH,
        "device": device,
        "threads": threads,
        "progress": False,
        "eval_interval": steps,
        "checkpoint_interval": steps,
        "probes.samples": 50,
        "max_eval_fraction": 10.0,
    }
    base.update(overrides)
    return load_train_config(None, **base)


# --- loader -------------------------------------------------------------------------


def load_tokens(mix: Path) -> MixtureTokens:
    """A pre-tokenised mixture as the trainer holds it."""
    table_, _, _ = open_mixture(mix)
    return MixtureTokens.from_columns(
        table_.column("input_ids"),
        table_.column("target_token_start").to_numpy(),
        table_.column("source"),
        table_.column("source_row").to_numpy(),
        table_.column("phase").to_numpy(),
        eos_id=eos_id(load_tokenizer(mix)),
    )


def ours_loader(mix: Path, batches: int) -> tuple[float, float, int]:
    """(seconds to open the mixture, seconds to iterate, tokens)."""
    t0 = time.perf_counter()
    dataset = MixtureBatches(load_tokens(mix), BATCH, 256, pad_id=eos_id(load_tokenizer(mix)))
    opened = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = 0
    for batch in make_loader(dataset, 0, batches):
        tokens += batch["x"].numel()  # padded positions included, as for datasets below
    return opened, time.perf_counter() - t0, tokens


def datasets_loader(mix: Path, batches: int) -> tuple[float, float, int]:
    """The same shards through `datasets` + `with_format("torch")` + a padding collate."""
    import datasets

    t0 = time.perf_counter()
    parts = [datasets.Dataset.from_file(str(p)) for p in shard_paths(mix)]
    ds = datasets.concatenate_datasets(parts).with_format("torch", columns=["input_ids", "target_token_start"])
    opened = time.perf_counter() - t0

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        seqs = [r["input_ids"][:257].long() for r in rows]
        padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
        lengths = torch.tensor([len(s) for s in seqs])
        starts = torch.stack([r["target_token_start"] for r in rows]).long()
        j = torch.arange(1, padded.shape[1])[None, :]
        mask = (j < lengths[:, None]) & (j >= starts[:, None])
        return {"x": padded[:, :-1], "y": padded[:, 1:], "mask": mask}

    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False, collate_fn=collate)
    t0 = time.perf_counter()
    tokens = 0
    for i, batch in enumerate(loader):
        if i == batches:
            break
        tokens += batch["x"].numel()
    return opened, time.perf_counter() - t0, tokens


# --- trainer vs a bare loop --------------------------------------------------------------


def bare_loop(mix: Path, cfg: TrainConfig) -> tuple[float, int]:
    """nanoGPT's loop with nothing else: the same model, init, optimiser, clipping, masked loss and batches
    (on CUDA: pinned batches copied per step, bf16 autocast and TF32, as the trainer runs by default)."""
    tokenizer = load_tokenizer(mix)
    batches = MixtureBatches(load_tokens(mix), cfg.batch_size, cfg.model.block_size, pad_id=eos_id(tokenizer))
    cuda = cfg.device == "cuda"
    # built in advance: the loop measures compute (and, on CUDA, the copies to the device) only
    prepared = [{k: v.pin_memory() if cuda else v for k, v in batches[k].items() if k in ("x", "y", "weight")} for k in range(cfg.steps)]
    tokens = sum(batches.info(k).tokens for k in range(cfg.steps))  # non-pad input tokens, as train() counts
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT(cfg.model, tokenizer.get_vocab_size()).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True
    )
    forward = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with deterministic_kernels(cfg.deterministic):  # the kernels the trainer runs with (on by default)
        for batch in prepared:
            x, y, weight = (batch[k].to(device, non_blocking=True) for k in ("x", "y", "weight"))
            with autocast:
                logits = forward(x)
            targets = torch.where(weight > 0, y, -100)  # nanoGPT's ignore_index masking
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
    return time.perf_counter() - t0, tokens


def trainer(mix: Path, cfg: TrainConfig, run: Path) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    train(mix, run, cfg)
    wall = time.perf_counter() - t0
    timing = json.loads((run / "timing.json").read_text())
    timing["wall"] = wall
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-steps", type=int, default=500, help="steps of the eval-fraction runs (default probes)")
    parser.add_argument("--out", type=Path, help="keep the scratch data here (default: a temporary directory)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the trainer and the bare loop run")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--workers", type=int, default=0, help="the trainer's DataLoader worker processes (num_workers)")
    parser.add_argument("--skip-loader", action="store_true", help="skip the loader comparison (it needs `datasets`)")
    args = parser.parse_args()
    scratch = args.out or Path(tempfile.mkdtemp(prefix="bench-train-"))
    scratch.mkdir(parents=True, exist_ok=True)
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"machine: {machine()}, torch {torch.__version__}, {args.threads} thread(s){gpu}; device {args.device}, compile {args.compile}, loader workers {args.workers}\n")

    loader_rows, trainer_rows, eval_rows = [], [], []
    for name, uri in WORKLOADS.items():
        source = tokenized_corpus(uri, scratch / f"{name}-src")
        mix = mixture(source, scratch / f"{name}-mix", samples=20000)
        n_batches = 20000 // BATCH

        if not args.skip_loader:
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(ours_loader(mix, n_batches))
                theirs.append(datasets_loader(mix, n_batches))
            o = min(ours, key=lambda r: r[1])
            t = min(theirs, key=lambda r: r[1])
            loader_rows.append(
                [name, n_batches, f"{o[0]:.2f}", f"{o[2] / o[1]:,.0f}", f"{t[0]:.2f}", f"{t[2] / t[1]:,.0f}", f"{(o[2] / o[1]) / (t[2] / t[1]):.1f}x"]
            )

        cfg = config(args.steps, args.threads, args.device, compile=args.compile, num_workers=args.workers)
        runs, bares = [], []
        for r in range(args.repeat):
            runs.append(trainer(mix, cfg, scratch / f"{name}-run{r}"))
            bares.append(bare_loop(mix, cfg))
        best_run = max(runs, key=lambda t_: t_["tokens_per_second"])
        bare_tps = max(tok / sec for sec, tok in bares)
        overhead = 1 - best_run["tokens_per_second"] / bare_tps
        fixed = best_run["wall"] - best_run["train_seconds"] - best_run["eval_seconds"] - best_run["checkpoint_seconds"]
        trainer_rows.append(
            [name, args.steps, f"{bare_tps:,.0f}", f"{best_run['tokens_per_second']:,.0f}", f"{overhead:+.1%}", f"{fixed:.1f}"]
        )

        ev = trainer(mix, config(args.eval_steps, args.threads, args.device, compile=args.compile, eval_interval=100, checkpoint_interval=args.eval_steps, **{"probes.samples": 200}), scratch / f"{name}-eval")
        eval_rows.append([name, args.eval_steps, ev["evals"], f"{ev['train_seconds']:.1f}", f"{ev['eval_seconds']:.1f}", f"{ev['eval_fraction']:.1%}"])

    if loader_rows:
        print("### Loader: global batches of 64 (x, y, loss mask), in training order\n")
        print(table(["workload", "batches", "ours: open s", "ours tokens/s", "datasets: open s", "datasets tokens/s", "ratio (target >= 2x)"], loader_rows))
    print("\n### Trainer vs a bare torch loop (same model, init, batches; eval and checkpoints excluded)\n")
    print(table(["workload", "steps", "bare tokens/s", "train() tokens/s", "overhead (target <= 10%)", "fixed start-up s"], trainer_rows))
    print("\n### Evaluation cost with the default probes (200 held-out documents, every 100 steps)\n")
    print(table(["workload", "steps", "evals", "train s", "eval s", "eval / train (target <= 20%)"], eval_rows))
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
