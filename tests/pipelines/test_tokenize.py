"""Pre-tokenisation: exact target spans, char and byte-level BPE tokenizers, saved next to the data."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from diffmix.errors import DiffmixError
from diffmix.mixers.synthetic import parse_synthetic_uri, synthetic_documents
from diffmix.pipelines.tokenize import (
    EOS,
    build_tokenizer,
    char_tokenizer,
    encode_document,
    load_tokenizer,
    save_tokenizer,
    token_stats,
    tokenize_documents,
    train_bpe,
)
from diffmix.schemas.columns import TOKEN_FIELDS

CODE = [
    "def f(x):\n    return x + 1\n",
    "class A:\r\n    pass\r\n",
    "# ü 😀 tab\there\n",
    "text with <|endoftext|> inside\n",
    "import os\nimport sys\n\nprint(os.getcwd())\n",
] * 20


def _table(texts: list[str], starts: list[int]) -> pa.Table:
    return pa.table(
        {
            "text": pa.array(texts, pa.large_string()),
            "target_start": pa.array(starts, pa.int32()),
            "split": pa.array(["train"] * (len(texts) - 1) + ["test"]),
        }
    )


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CODE, vocab_size=300, min_frequency=2)


def test_char_tokenizer_vocabulary_and_round_trip() -> None:
    tok = char_tokenizer(["12+3=15\n", "$9$"])
    assert tok.get_vocab() == {
        EOS: 0, "<unk>": 1, "\n": 2, "$": 3, "+": 4, "1": 5, "2": 6, "3": 7, "5": 8, "9": 9, "=": 10,
    }  # fmt: skip
    assert tok.encode("12+3=15\n").ids == [5, 6, 4, 7, 10, 5, 8, 2]
    assert tok.decode(tok.encode("12+3=15\n").ids) == "12+3=15\n"
    assert tok.encode("7").ids == [1]  # unknown character


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prompt_and_target_are_encoded_apart(kind: str, bpe) -> None:
    tok = char_tokenizer(CODE) if kind == "char" else bpe
    texts = CODE[:5]
    starts = [len(t) // 2 for t in texts]
    out = tokenize_documents(_table(texts, starts), tok)
    assert [f.name for f in out.schema][-3:] == [f.name for f in TOKEN_FIELDS]
    assert out.schema.field("input_ids").type == TOKEN_FIELDS[0].type
    eos = tok.token_to_id(EOS)
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    tok.encode_special_tokens = True  # as tokenize_documents does: literal tags stay text
    try:
        _check_documents(tok, out, texts, starts, encode, eos)
    finally:
        tok.encode_special_tokens = False
    assert encode_document(tok, texts[1], starts[1]) == (
        out.column("input_ids")[1].as_py(),
        out.column("target_token_start")[1].as_py(),
    )


def _check_documents(tok, out: pa.Table, texts: list[str], starts: list[int], encode, eos: int) -> None:
    for i, (text, cut) in enumerate(zip(texts, starts)):
        ids = out.column("input_ids")[i].as_py()
        boundary = out.column("target_token_start")[i].as_py()
        prompt_ids, target_ids = encode(text[:cut]), encode(text[cut:])
        assert ids == prompt_ids + target_ids + [eos]
        assert boundary == len(prompt_ids)
        assert out.column("n_tokens")[i].as_py() == len(ids)
        assert tok.decode(ids[:boundary]) == text[:cut]
        assert tok.decode(ids[boundary:-1]) == text[cut:]


def test_literal_end_of_text_in_a_file_is_not_the_special_token(bpe) -> None:
    text = "text with <|endoftext|> inside\n"
    assert bpe.encode_special_tokens is False
    out = tokenize_documents(_table([text], [0]), bpe)
    ids = out.column("input_ids")[0].as_py()
    eos = bpe.token_to_id(EOS)
    assert ids.count(eos) == 1 and ids[-1] == eos
    assert bpe.decode(ids[:-1]) == text
    assert bpe.encode_special_tokens is False  # the setting is restored


def test_bpe_training_is_deterministic_and_byte_exact(bpe) -> None:
    again = train_bpe(CODE, vocab_size=300, min_frequency=2)
    assert again.to_str() == bpe.to_str()
    assert bpe.get_vocab_size() == 300
    for text in ["ünïcode 😀\r\n", "\x00\x01 bytes", "    deep indent\n"]:
        assert bpe.decode(bpe.encode(text).ids) == text


def test_without_eos_and_batching_give_the_same_ids(bpe) -> None:
    texts, starts = CODE[:7], [3] * 7
    one = tokenize_documents(_table(texts, starts), bpe, batch_size=2)
    many = tokenize_documents(_table(texts, starts), bpe, batch_size=100)
    assert one.column("input_ids").to_pylist() == many.column("input_ids").to_pylist()
    bare = tokenize_documents(_table(texts, starts), bpe, add_eos=False)
    assert [ids + [bpe.token_to_id(EOS)] for ids in bare.column("input_ids").to_pylist()] == one.column(
        "input_ids"
    ).to_pylist()


def test_token_stats() -> None:
    tok = char_tokenizer(["ab"])
    out = tokenize_documents(_table(["ab", "aab", "b"], [1, 2, 0]), tok)
    # n_tokens: 3, 4, 2 (each + EOS); prompt tokens 1, 2, 0
    assert token_stats(out) == {
        "documents": 3,
        "total": 9,
        "prompt": 3,
        "target": 6,
        "mean": 3.0,
        "max": 4,
        "by_split": {
            "test": {"documents": 1, "total": 2, "prompt": 0, "target": 2, "mean": 2.0, "max": 2},
            "train": {"documents": 2, "total": 7, "prompt": 3, "target": 4, "mean": 3.5, "max": 4},
        },
    }


def test_empty_table() -> None:
    empty = pa.table({"text": pa.array([], pa.large_string()), "target_start": pa.array([], pa.int32())})
    out = tokenize_documents(empty, char_tokenizer(["a"]))
    assert out.num_rows == 0 and out.column("input_ids").type == TOKEN_FIELDS[0].type


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_and_load(tmp_path, kind: str, bpe) -> None:
    tok = char_tokenizer(CODE) if kind == "char" else bpe
    info = save_tokenizer(tok, tmp_path)
    assert info["kind"] == kind and info["vocab_size"] == tok.get_vocab_size() and info["file"] == "tokenizer.json"
    assert save_tokenizer(tok, tmp_path)["sha256"] == info["sha256"]  # byte-stable
    json.loads((tmp_path / "tokenizer.json").read_text())
    loaded = load_tokenizer(tmp_path)
    table = _table(CODE[:5], [2] * 5)
    assert (
        tokenize_documents(table, loaded).column("input_ids").to_pylist()
        == tokenize_documents(table, tok).column("input_ids").to_pylist()
    )
    assert not list(tmp_path.glob(".*tmp*"))


def test_char_tokenizer_on_a_synthetic_source() -> None:
    docs = synthetic_documents(parse_synthetic_uri("synthetic:addition?n=200&test=20&format=simplified_scratchpad"))
    tok = build_tokenizer("char", docs.column("text").to_pylist())
    out = tokenize_documents(docs, tok)
    assert pa.compute.all(pa.compute.equal(out.column("n_tokens"), pa.compute.add(pa.compute.utf8_length(docs.column("text")), 1))).as_py()
    assert out.column("target_token_start").to_pylist() == docs.column("target_start").to_pylist()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_tokenizer("words", ["a"]), "unknown tokenizer kind"),
        (lambda: train_bpe(["a"], vocab_size=100), "at least 257"),
        (lambda: tokenize_documents(pa.table({"text": ["a"]}), char_tokenizer(["a"])), "'target_start'"),
    ],
)
def test_bad_input(call, message: str) -> None:
    with pytest.raises(DiffmixError, match=message):
        call()


def test_load_missing_or_broken(tmp_path) -> None:
    with pytest.raises(DiffmixError, match="no tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DiffmixError, match="not a tokenizers JSON"):
        load_tokenizer(tmp_path)


def test_a_second_source_encodes_with_the_first_ones_tokenizer_and_they_mix_by_tokens(tmp_path) -> None:
    """tokenize.file: two builds share one tokenizer, so a recipe can budget tokens over both."""
    import yaml

    from diffmix.mixers.mixture import build_mixture
    from diffmix.pipelines.build import build_synthetic, prepare_build
    from diffmix.pipelines.shards import read_manifest
    from diffmix.schemas.config import load_build_config

    first, second = tmp_path / "copy", tmp_path / "add"
    build_synthetic(prepare_build(["synthetic:copy?n=200&test=10"], first, load_build_config(None, tokenize={"kind": "bpe", "vocab_size": 300})))
    shared = {"file": str(first / "tokenizer.json")}
    build_synthetic(prepare_build(["synthetic:addition?n=200&test=10"], second, load_build_config(None, tokenize=shared)))
    assert read_manifest(second).tokenizer == read_manifest(first).tokenizer  # same file, same sha256
    recipe = {"name": "by-tokens", "seed": 0, "global_batch_size": 8, "budget": {"tokens": 3000},
              "sources": [{"name": "copy", "path": str(first), "max_repetition": 5}, {"name": "add", "path": str(second), "max_repetition": 5}],
              "schedule": {"type": "constant", "weights": "uniform"}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    manifest = build_mixture(tmp_path / "r.yaml", tmp_path / "mix")
    assert manifest.tokenizer == read_manifest(first).tokenizer and manifest.tokens["total"] >= 3000 * 0.8
    with pytest.raises(DiffmixError, match="no tokenizer file"):
        prepare_build(["synthetic:copy?n=5"], tmp_path / "x", load_build_config(None, tokenize={"file": str(tmp_path / "none.json")}))
