"""End-to-end training runs on the copy task: learning, resume equality, DDP equivalence, run-directory rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from diffmix.errors import DiffmixError
from diffmix.training import train
from diffmix.training.config import TrainConfig
from diffmix.training.loop import CHECKPOINT, load_checkpoint
from tests.training.mixtures import COPY_URI, mix, synthetic_corpus, tiny_config

REPO = Path(__file__).resolve().parents[2]


def _train_rows(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "metrics.parquet").filter(pl.col("kind") == "train")


def test_a_tiny_model_learns_the_copy_task(copy_mixture: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tiny_config(steps=1000, batch_size=32, eval_interval=50, checkpoint_interval=1000, stop_when="exact_match")
    summary = train(copy_mixture, run, config)

    skill = summary["skills"]["copy/exact_match"]
    assert skill["censored"] is False, skill
    assert skill["final"] >= 0.9
    # stopped once the skill held for k=2 evals, long before the 1,000 steps
    assert summary["stopped_on"] == "exact_match" and summary["steps"] < 1000
    assert skill["steps"] <= summary["steps"] and skill["tokens"] > 0 and 0 < skill["unique_examples"] <= 1000
    assert summary["heldout_loss"]["copy"] < 0.5
    for name in ("metrics.parquet", "summary.json", "loss.png", "skills.png", "tokenizer.json", "timing.json", "generations.jsonl", CHECKPOINT):
        assert (run / name).is_file(), name
    sample = json.loads((run / "generations.jsonl").read_text().splitlines()[0])
    assert sample["source"] == "copy" and sample["step"] == summary["steps"] and isinstance(sample["generated"], str)
    assert json.loads((run / "summary.json").read_text()) == summary

    frame = pl.read_parquet(run / "metrics.parquet")
    train_rows = frame.filter(pl.col("kind") == "train")
    eval_rows = frame.filter(pl.col("kind") == "eval")
    assert train_rows["step"].to_list() == list(range(1, summary["steps"] + 1))
    assert eval_rows["step"].to_list() == list(range(50, summary["steps"] + 1, 50))
    assert eval_rows["probe/copy/exact_match"].tail(2).min() >= 0.9
    assert (train_rows["tokens"].diff().drop_nulls() > 0).all()
    assert train_rows["unique_examples"].max() == 1000  # every train document seen; later epochs repeat them
    assert train_rows["epoch"].max() > 1
    first, last = train_rows["loss_ema"][0], train_rows["loss_ema"][-1]
    assert last < first / 5
    n_eff = summary["effective_params"]
    assert n_eff["ema_loss"] == pytest.approx(summary["final_loss_ema"])  # from the run's own final EMA loss
    assert n_eff["clamped"] == (n_eff["ema_loss"] < n_eff["loss_floor"]) and n_eff["loss_used"] == max(n_eff["ema_loss"], n_eff["loss_floor"])
    assert summary["model"]["params"] < 1_000_000

    # a finished run of the same config is not run again
    mtime = (run / "metrics.parquet").stat().st_mtime_ns
    assert train(copy_mixture, run, config) == summary
    assert (run / "metrics.parquet").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("dropout", "deterministic"), [(0.0, False), (0.1, False), (0.1, True)])
def test_a_resumed_run_continues_exactly(copy_mixture: Path, tmp_path: Path, dropout: float, deterministic: bool) -> None:
    config = tiny_config(steps=40, checkpoint_interval=10, deterministic=deterministic, **{"model.dropout": dropout})
    straight = train(copy_mixture, tmp_path / "straight", config)
    # deterministic kernels (every op the run uses has one) are the run's setting, not the process's
    assert torch.are_deterministic_algorithms_enabled() is False

    resumed_run = tmp_path / "resumed"
    partial = train(copy_mixture, resumed_run, config.model_copy(update={"stop_after": 20}))
    assert partial == {"complete": False, "step": 20, "steps": 40}
    assert not (resumed_run / "summary.json").exists()
    ckpt = load_checkpoint(resumed_run / CHECKPOINT)  # weights_only=True
    assert ckpt["progress"]["step"] == 20 and len(ckpt["progress"]["rows"]) == 20

    resumed = train(copy_mixture, resumed_run, config)
    assert resumed == straight
    a, b = _train_rows(tmp_path / "straight"), _train_rows(resumed_run)
    assert a["loss"].to_list() == b["loss"].to_list()  # bit for bit on CPU
    assert (tmp_path / "straight" / "metrics.parquet").read_bytes() == (resumed_run / "metrics.parquet").read_bytes()
    sa = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)["model"]
    sb = torch.load(resumed_run / CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_two_runs_and_a_resumed_run_write_the_same_metrics(copy_mixture: Path, tmp_path: Path) -> None:
    """bf16 autocast, TF32 and fused AdamW on the GPU, with the default deterministic kernels."""
    config = tiny_config(steps=40, checkpoint_interval=10, device="cuda")
    first = train(copy_mixture, tmp_path / "first", config)
    second = train(copy_mixture, tmp_path / "second", config)
    assert train(copy_mixture, tmp_path / "resumed", config.model_copy(update={"stop_after": 20}))["complete"] is False
    resumed = train(copy_mixture, tmp_path / "resumed", config)
    assert first == second == resumed and first["complete"]
    metrics = {run: (tmp_path / run / "metrics.parquet").read_bytes() for run in ("first", "second", "resumed")}
    assert metrics["first"] == metrics["second"] == metrics["resumed"]


def test_an_op_without_a_deterministic_kernel_is_one_clear_error(copy_mixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch raises a RuntimeError for such an op (some CUDA ops, some torch versions); a run says which, and the way out."""
    from diffmix.training import model as model_module

    def forward(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("index_add_cuda_ does not have a deterministic implementation, but you set 'torch.use_deterministic_algorithms(True)'.\nmore")

    monkeypatch.setattr(model_module.GPT, "forward", forward)
    with pytest.raises(DiffmixError, match=r"^index_add_cuda_ does not have a deterministic implementation.*\(set deterministic: false to train with it\)$"):
        train(copy_mixture, tmp_path / "run", tiny_config(steps=4))
    with pytest.raises(RuntimeError, match="does not have a deterministic"):  # not ours to explain without the setting
        train(copy_mixture, tmp_path / "run2", tiny_config(steps=4, deterministic=False))
    assert torch.are_deterministic_algorithms_enabled() is False


def test_a_run_killed_while_finishing_is_finished_by_its_rerun(copy_mixture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.json marks a run finished, so it is written last: a kill while the curves are
    drawn leaves no summary, and the rerun writes every file an uninterrupted run has."""
    from diffmix.training import plots

    config = tiny_config(steps=10)
    straight = train(copy_mixture, tmp_path / "straight", config)
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(plots, "plot_run", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))  # the kill
        with pytest.raises(KeyboardInterrupt):
            train(copy_mixture, run, config)
    assert not (run / "summary.json").exists()
    assert train(copy_mixture, run, config) == straight
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "straight").iterdir())


def test_resuming_under_another_config_is_refused(copy_mixture: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(copy_mixture, run, tiny_config(steps=20, stop_after=10))
    recorded = (run / "config.json").read_bytes()
    with pytest.raises(DiffmixError, match="different config"):
        train(copy_mixture, run, tiny_config(steps=20, lr=1e-2))
    assert (run / "config.json").read_bytes() == recorded  # refused before anything was written


@pytest.mark.parametrize("finished", [True, False])
def test_a_run_directory_of_another_mixture_is_refused(copy_mixture: Path, tmp_path: Path, finished: bool) -> None:
    """Same config, another mixture: neither the old summary returned nor the old checkpoint resumed."""
    other = mix(tmp_path / "other-mix", {"copy": copy_mixture.parent / "copy-src"}, samples=500)
    run = tmp_path / "run"
    train(copy_mixture, run, tiny_config(steps=10, stop_after=None if finished else 5))
    recorded = (run / "config.json").read_bytes()
    with pytest.raises(DiffmixError, match="different config or mixture"):
        train(other, run, tiny_config(steps=10))
    assert (run / "config.json").read_bytes() == recorded


def test_bad_data_leaves_no_run_directory(copy_mixture: Path, tmp_path: Path) -> None:
    """A shard edited after the mix: one clear error, and no run directory left behind."""
    damaged = tmp_path / "damaged"
    shutil.copytree(copy_mixture, damaged)
    shard = next((damaged / "data").glob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DiffmixError, match="sha256 does not match"):
        train(damaged, tmp_path / "run", tiny_config(steps=5))
    assert not (tmp_path / "run").exists()


def test_a_killed_writers_temporaries_are_removed(copy_mixture: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(copy_mixture, run, tiny_config(steps=10, stop_after=5))
    (run / ".checkpoint.pt.tmp-4242").write_bytes(b"half a checkpoint")  # a SIGKILL mid-save
    train(copy_mixture, run, tiny_config(steps=10))
    assert not list(run.glob(".*.tmp-*"))


@pytest.mark.parametrize("out", ["run", "run/sub"])
def test_out_that_is_or_is_under_a_file_is_refused(copy_mixture: Path, tmp_path: Path, out: str) -> None:
    (tmp_path / "run").write_text("not a run")
    with pytest.raises(DiffmixError, match="run: exists and is not a directory"):
        train(copy_mixture, tmp_path / out, tiny_config(steps=5))


def test_out_that_holds_a_dataset_is_refused(copy_mixture: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "mix"
    shutil.copytree(copy_mixture, dataset)
    before = sorted(p.name for p in dataset.iterdir())
    with pytest.raises(DiffmixError, match="holds a dataset"):
        train(copy_mixture, dataset, tiny_config(steps=5))
    assert sorted(p.name for p in dataset.iterdir()) == before


@pytest.mark.parametrize(
    ("batching", "loss_on", "schedule"),
    [("pack", "all", "cosine"), ("pad", "all", "onecycle"), ("pack", "target", "cyclic")],
)
def test_batching_loss_and_schedule_variants_train(copy_mixture: Path, tmp_path: Path, batching: str, loss_on: str, schedule: str) -> None:
    summary = train(copy_mixture, tmp_path / "run", tiny_config(steps=20, batching=batching, loss_on=loss_on, schedule=schedule, eval_interval=10))
    rows = _train_rows(tmp_path / "run")
    assert summary["complete"] and rows.height == 20
    assert rows["loss"][-1] < rows["loss"][0]
    assert np.isfinite(rows["lr"].to_numpy()).all()


def test_an_index_only_mixture_trains_as_the_materialised_one(tmp_path: Path) -> None:
    """Pre-tokenised sources: the index-only mixture brings their tokens and tokenizer along."""
    source = synthetic_corpus(COPY_URI, tmp_path / "src", tokenize={"kind": "char"})
    runs = {}
    for index_only in (False, True):
        mixture = mix(tmp_path / f"mix-{index_only}", {"copy": source}, samples=200, index_only=index_only)
        train(mixture, tmp_path / f"run-{index_only}", tiny_config(steps=6, eval_interval=6, checkpoint_interval=6))
        runs[index_only] = _train_rows(tmp_path / f"run-{index_only}")
        # the run encodes with the sources' tokenizer, not one it built from the text
        assert (tmp_path / f"run-{index_only}" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert runs[True].equals(runs[False])


def test_a_run_being_written_is_not_written_twice(copy_mixture: Path, tmp_path: Path) -> None:
    from diffmix.pipelines.io import output_lock

    with output_lock(tmp_path / "run"), pytest.raises(DiffmixError, match="another diffmix run is writing here"):
        train(copy_mixture, tmp_path / "run", tiny_config(steps=2))


def test_not_a_mixture_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DiffmixError, match="no manifest.json"):
        train(tmp_path, tmp_path / "run", tiny_config())


def test_ddp_with_two_gloo_processes_matches_one_process(copy_mixture: Path, tmp_path: Path) -> None:
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed beside this python")
    settings = {"steps": 12, "eval_interval": 6, "checkpoint_interval": 12, "batch_size": 16}
    single = train(copy_mixture, tmp_path / "single", tiny_config(**settings))

    overrides = {**settings, "progress": False, "device": "cpu", "lr": 3e-3, "warmup_steps": 10, "threads": 1}
    overrides.update({f"model.{k}": v for k, v in {"n_layer": 2, "d_model": 64, "n_head": 4, "block_size": 48}.items()})
    overrides.update({"probes.samples": 32, "probes.batch_size": 32, "skills.plateau_patience": 20, "skills.epoch_window": 5})
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "diffmix.training",
        "--data",
        str(copy_mixture),
        "--out",
        str(tmp_path / "ddp"),
        *[arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")],
    ]
    # the repository first, then whatever PYTHONPATH already holds (packages installed there)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")  # torchrun's log directories (torchelastic_*) go here, not /tmp
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"final_loss_ema"') == 1  # rank 0 alone prints the final line

    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert json.loads((tmp_path / "ddp" / "timing.json").read_text())["world_size"] == 2
    a, b = _train_rows(tmp_path / "single"), _train_rows(tmp_path / "ddp")
    np.testing.assert_allclose(b["loss"].to_numpy(), a["loss"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(b["loss/copy"].to_numpy(), a["loss/copy"].to_numpy(), rtol=1e-4)
    assert b["tokens"].to_list() == a["tokens"].to_list()
    assert ddp["config_digest"] == single["config_digest"]


def test_a_context_that_no_target_reaches_is_one_clear_error(copy_mixture: Path, tmp_path: Path) -> None:
    """Padded rows, loss on targets, every prompt longer than the context: no step could learn anything."""
    with pytest.raises(DiffmixError, match="model.block_size 2: every document's target starts beyond the context"):
        train(copy_mixture, tmp_path / "run", tiny_config(steps=5, **{"model.block_size": 2}))
    assert not (tmp_path / "run").exists()
    assert train(copy_mixture, tmp_path / "packed", tiny_config(steps=5, batching="pack", **{"model.block_size": 2}))["complete"]


def test_a_source_whose_test_documents_exceed_the_context_still_trains(copy_mixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A context shorter than every copy document: no probe fits, the run (packed rows: it has a loss) still finishes.
    summary = train(copy_mixture, tmp_path / "run", tiny_config(steps=20, batching="pack", **{"model.block_size": 8}))
    (probe_set,) = summary["probe_sets"].values()
    assert probe_set["documents"] == 0 and probe_set["skipped_too_long"] > 0
    assert summary["complete"] and summary["steps"] == 20
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "is not probed" in line]  # said, not only in summary.json
    assert f"none of its {probe_set['skipped_too_long']:,} held-out documents fits model.block_size 8" in line


def test_an_evaluation_over_budget_is_one_warning_line(copy_mixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(copy_mixture, tmp_path / "run", tiny_config(steps=10, eval_interval=5, max_eval_fraction=1e-6))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "evaluation took" in line and "lower probes.samples or raise eval_interval" in line


def test_a_stop_when_that_no_probe_reports_is_refused(copy_mixture: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffmixError, match="stop_when: 'parsd' is no probe score here \\(scores: exact_match, parsed\\)"):
        train(copy_mixture, tmp_path / "run", tiny_config(steps=5, stop_when="parsd"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("batching", ["pad", "pack"])
def test_default_steps_are_one_pass_and_the_loss_is_the_masked_mean(tmp_path: Path, batching: str, capsys: pytest.CaptureFixture) -> None:
    source = synthetic_corpus(COPY_URI.replace("n=1000", "n=100"), tmp_path / "copy")
    mixture = mix(tmp_path / "mix", {"copy": source}, samples=40, global_batch_size=16)  # steps of 16, 16 and 8 rows
    config = tiny_config(steps=None, batch_size=None, batching=batching, eval_interval=1000, checkpoint_interval=1000)
    summary = train(mixture, tmp_path / "run", config)
    rows = _train_rows(tmp_path / "run")
    if batching == "pad":  # the recipe's 3 steps; the last one holds the 8 remaining rows, none repeated
        assert rows["examples"].to_list() == [16, 32, 40] and summary["steps"] == 3
    else:  # as many windows of the block as one pass over the tokens takes
        assert summary["steps"] == rows.height and rows["examples"][-1] == 40 and rows["examples"][-2] < 40
        # the default's number of steps given explicitly is another run, not this finished one
        with pytest.raises(DiffmixError, match="holds a run of a different config"):
            train(mixture, tmp_path / "run", config.model_copy(update={"steps": TrainConfig().steps}))
    # one source: the step's loss (weighted over the loss mask) is that source's mean loss
    assert rows["loss"].to_list() == pytest.approx(rows["loss/copy"].to_list(), rel=1e-5)
    assert "passes over the mixture" not in capsys.readouterr().err


def test_a_larger_batch_takes_fewer_steps_and_a_longer_run_says_it_replays(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from diffmix.pipelines.shards import read_manifest
    from diffmix.training.loop import resolve_config

    source = synthetic_corpus(COPY_URI.replace("n=1000", "n=100"), tmp_path / "copy")
    mixture = mix(tmp_path / "mix", {"copy": source}, samples=40, global_batch_size=16)
    manifest = read_manifest(mixture)
    mixture_plan = resolve_config(tiny_config(steps=None, batch_size=None), manifest)
    assert (mixture_plan.steps, mixture_plan.batch_size) == (3, 16)
    assert resolve_config(tiny_config(steps=None, batch_size=32), manifest).steps == 2  # not the mixture's 3 steps of 16
    train(mixture, tmp_path / "run", tiny_config(steps=5, batch_size=16, eval_interval=1000, checkpoint_interval=1000))
    assert "5 steps make 1.67 passes over the mixture (3 steps of 16 each)" in capsys.readouterr().err


def test_a_run_folder_is_only_ever_this_run(copy_mixture: Path, tmp_path: Path) -> None:
    # a folder of the user's: refused, nothing in it touched (not even files named like temporaries)
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"theme": "dark"}')
    (folder / "sub" / ".draft.tmp-42").write_text("mine")
    with pytest.raises(DiffmixError, match=r"not empty and not a diffmix run \(config.json, sub\)"):
        train(copy_mixture, folder, tiny_config(steps=2))
    assert (folder / "config.json").read_text() == '{"theme": "dark"}' and (folder / "sub" / ".draft.tmp-42").is_file()
    # a run of another config killed before its first checkpoint: its tokenizer is not this run's
    run = tmp_path / "run"
    train(copy_mixture, run, tiny_config(steps=2, eval_interval=1000, checkpoint_interval=1000, stop_after=1))
    (run / CHECKPOINT).unlink()
    with pytest.raises(DiffmixError, match="holds a run of a different config or mixture"):
        train(copy_mixture, run, tiny_config(steps=3, eval_interval=1000, checkpoint_interval=1000))


_FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from diffmix.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(12):  # warm up: torch's 64-byte-aligned blocks take a few rounds of frees to coalesce into one that fits
    torch.ones(2 << 20)  # 8 MB, as an activation of a training step
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(2 << 20)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activations_are_reused_under_dasks_malloc_setting() -> None:
    """Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536: without keep_freed_memory every
    8 MB tensor is a fresh mapping (about 2,000 page faults), with it the freed block is reused."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}

    def faults(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", _FAULTS_PER_ALLOCATION, mode], env=env, capture_output=True, text=True, check=True)
        return float(done.stdout)

    assert faults("default") > 1000
    assert faults("keep") < 100
