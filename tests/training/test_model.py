"""The decoder: size of the default model, tied embeddings, and KV-cache batched decoding against plain greedy."""

from __future__ import annotations

import pytest
import torch

from diffmix.training.config import ModelConfig
from diffmix.training.model import GPT

EOS = 0


def _naive_greedy(model: GPT, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding the slow way: the whole sequence through the model for every token, no cache, no padding."""
    seq, out = list(prompt), []
    for _ in range(max_new):
        token = int(model(torch.tensor([seq]))[0, -1].argmax())
        if token == EOS:
            break
        out.append(token)
        seq.append(token)
    return out


def test_default_model_is_about_0_4m_parameters_with_tied_embeddings() -> None:
    model = GPT(ModelConfig(), vocab_size=20)
    assert 380_000 <= model.num_params() <= 420_000  # 2 layers, d=128 (Kaplan's non-embedding N)
    assert model.lm_head.weight is model.wte.weight
    assert model.flops_per_token(64) > 6 * model.num_params()


@pytest.mark.parametrize("prompts", [[[3, 4, 5, 6, 7, 8], [9, 2], [4, 4, 4]], [[5]], [[1, 2, 3], [1, 2, 3]]])
def test_batched_kv_cache_decoding_equals_plain_greedy(prompts: list[list[int]]) -> None:
    torch.manual_seed(0)
    # a large init makes a random model's greedy choices vary from token to token
    model = GPT(ModelConfig(n_layer=2, d_model=32, n_head=4, block_size=32, init_std=0.5), vocab_size=12).eval()
    batched = model.generate(prompts, max_new_tokens=12, eos_id=EOS)
    assert batched == [_naive_greedy(model, p, 12) for p in prompts]
    assert any(len(set(row)) > 1 for row in batched)  # the check is not vacuous


def test_stop_callback_ends_rows_early() -> None:
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, block_size=64, init_std=0.5), vocab_size=12).eval()
    full = model.generate([[3, 4], [5]], max_new_tokens=40, eos_id=EOS)
    asked: list[int] = []

    def stopped(rows: list[list[int]]) -> list[bool]:
        asked.append(len(rows[0]))
        return [True] * len(rows)

    cut = model.generate([[3, 4], [5]], max_new_tokens=40, eos_id=EOS, stopped=stopped, check_every=4)
    assert asked == [4] or max(len(r) for r in full) < 4
    assert all(c == f[: len(c)] for c, f in zip(cut, full))


def test_prompt_longer_than_the_context_is_refused() -> None:
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2, block_size=8), vocab_size=12)
    with pytest.raises(ValueError, match="exceed the context"):
        model.generate([[1] * 6], max_new_tokens=4, eos_id=EOS)
