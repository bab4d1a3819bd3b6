"""`diffmix inspect`: a corpus, a mixture and a training run, each in a terminal page."""

from __future__ import annotations

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


def test_inspect_run(built: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(built["run"])]) == 0
    out = capsys.readouterr().out
    assert "skill speed to tau = 0.9" in out and "copy/exact_match" in out and "addition/exact_match" in out


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
