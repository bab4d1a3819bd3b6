"""`diffmix inspect`: a corpus, a mixture and a training run, each in a terminal page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffmix.cli import main
from diffmix.training import train
from tests.training.mixtures import COPY_URI, mix, synthetic_corpus, tiny_config


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    copy = synthetic_corpus(COPY_URI, root / "copy")
    addition = synthetic_corpus("synthetic:addition?digits=2&format=reverse&n=200&test=20", root / "addition")
    mixture = mix(root / "mixture", {"copy": copy, "addition": addition}, samples=320, weights={"copy": 0.75, "addition": 0.25})
    run = root / "run"
    train(mixture, run, tiny_config(steps=20))
    return {"corpus": copy, "mixture": mixture, "run": run}


def test_inspect_corpus(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(built["corpus"]), "--documents", "2"]) == 0
    out = capsys.readouterr().out
    assert "rows in 1,064  kept 1,064" in out and "copy_v1" in out
    assert out.count("▼ target") == 2 and "<A> " in out


def test_inspect_mixture(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(built["mixture"])]) == 0
    out = capsys.readouterr().out
    assert "requested" in out and "realised" in out
    assert "copy" in out and "addition" in out
    assert any(block in out for block in "▁▂▃▄▅▆▇█")  # the proportions sparkline
    assert out.count("▼ target") == 1 and "position 0, phase 0" in out  # the first document of training
    assert main(["inspect", str(built["mixture"]), "--documents", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("▼ target") == 3 and "position 2, phase 0" in out


def test_inspect_mixture_hashes_each_shard_once(built: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffmix.pipelines import shards

    hashed: list[str] = []
    real = shards.sha256_file
    monkeypatch.setattr(shards, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    assert main(["inspect", str(built["mixture"])]) == 0
    manifest = json.loads((built["mixture"] / "manifest.json").read_text())
    assert sorted(hashed) == sorted(Path(s["path"]).name for s in manifest["shards"])


def test_inspect_run(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(built["run"])]) == 0
    out = capsys.readouterr().out
    assert "skill speed to tau = 0.9" in out and "copy/exact_match" in out and "addition/exact_match" in out


def test_inspect_a_negative_document_count(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(built["corpus"]), "--documents", "-1"]) == 2
    assert "--documents must be 0 or more, got -1" in capsys.readouterr().err


def test_inspect_not_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_inspect_damaged_dataset(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    """Every shard is checked against the manifest (size and sha256) before anything is shown."""
    import shutil

    for kind in ("corpus", "mixture"):
        copy = tmp_path / kind
        shutil.copytree(built[kind], copy)
        shard = sorted((copy / "data").glob("*.arrow"))[0]
        if damage == "delete":
            shard.unlink()
        else:
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 0x01
            shard.write_bytes(bytes(data))
        assert main(["inspect", str(copy)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("sha256 does not match" in err if damage == "flip" else "listed in the manifest but missing" in err)


def test_an_unfinished_run_says_so_and_how_to_resume(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`diffmix train` with stop_after ends in one line (not a missing summary.json), and inspect names the run."""
    import diffmix.flows
    from diffmix.training import load_train_config

    def measure_in_process(data: str, out: str, config_path: str | None, overrides: dict) -> dict:  # no Prefect server here
        return train(data, out, load_train_config(config_path, **overrides))

    monkeypatch.setattr(diffmix.flows, "run_measure_mixture", measure_in_process)
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({**tiny_config(steps=20).model_dump(mode="json"), "stop_after": 5}))  # JSON is YAML
    run = tmp_path / "run"
    assert main(["train", "--data", str(built["mixture"]), "--out", str(run), "--config", str(config)]) == 0
    assert "stopped at step 5 of 20 (stop_after); the same command resumes it" in capsys.readouterr().out
    assert main(["inspect", str(run)]) == 2
    assert "a training run that has not finished" in capsys.readouterr().err


@pytest.mark.parametrize("escape", ["/etc/passwd", "../elsewhere/part-00000-of-00001.arrow", "link"])
def test_a_manifest_cannot_point_outside_its_directory(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, escape: str) -> None:
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(built["corpus"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["shards"][0]["path"]
    if escape == "link":  # a shard that is a symbolic link to a file outside, with matching bytes
        outside = tmp_path / "outside.arrow"
        shard.rename(outside)
        shard.symlink_to(outside)
    else:
        manifest["shards"][0]["path"] = escape
        (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("is not inside the dataset directory" in err or "a link to a file outside the dataset directory" in err), err


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"summary.json": "{"}, "not as diffmix writes it (JSONDecodeError"),
        ({"summary.json": "{}"}, "not as diffmix writes it (KeyError: 'threshold')"),
        ({"config.json": '{"theme": "dark"}'}, "not a diffmix dataset or run"),
    ],
)
def test_inspect_a_folder_diffmix_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_inspect_checks_the_row_counts(built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A manifest whose hashes match but whose row counts lie (a trainer would plan with them)."""
    import shutil

    copy = tmp_path / "corpus"
    shutil.copytree(built["corpus"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["rows"] += 99_999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rows, the manifest says" in err, err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\nb", "a\nb"),
        ("x" * 200, "x" * 200),
        ("x" * 250 + "\nshort", "x" * 200 + " … 50 more characters\nshort"),  # a minified file's one line
        ("\n".join(map(str, range(20))), "0\n1\n2\n3\n4\n5\n  … 8 more lines …\n14\n15\n16\n17\n18\n19"),
    ],
)
def test_a_pretty_printed_section_is_clipped_to_a_page(text: str, expected: str) -> None:
    from diffmix.inspection import _clip

    assert _clip(text) == expected
