"""A nanoGPT-style decoder-only transformer, with KV-cache greedy decoding.

Pre-LayerNorm blocks (causal self-attention through PyTorch's fused
`scaled_dot_product_attention`, then a 4x GELU MLP), learned positions, tied
input/output embeddings and GPT-2's small init (std 0.02, residual projections
scaled by 1/sqrt(2 * n_layer)). No biases in linear layers or LayerNorms.

`generate` decodes a batch of prompts of different lengths at once: prompts are
left-padded, every row gets its own positions, padded keys are masked out, and
a preallocated KV cache makes each new token cost one query per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffmix.training.config import ModelConfig


class KVCache:
    """Keys and values of every layer for `max_len` positions, filled left to right."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, like: torch.Tensor) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.length = 0  # positions filled (advanced by GPT.forward after all layers)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is None:  # training: plain causal attention, the fused fast path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections: GPT-2's scaled init
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, without the position table when `non_embedding` (Kaplan's N)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * layers * seq_len * d (PaLM appendix B)."""
        return 6 * self.num_params(non_embedding=False) + 12 * self.cfg.n_layer * seq_len * self.cfg.d_model

    def forward(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab). `pos`/`cache`/`mask` are for decoding."""
        if pos is None:
            pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, cache, mask)
        if cache is not None:
            cache.length += idx.shape[1]
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        eos_id: int,
        pad_id: int = 0,
        stopped: Callable[[list[list[int]]], list[bool]] | None = None,
        check_every: int = 8,
    ) -> list[list[int]]:
        """Greedy continuations of `prompts` (without the prompt), cut at EOS.

        `stopped(generated)` may end rows early (e.g. on a format's stop
        sequence); it is asked every `check_every` tokens. Rows stop on EOS at once.
        """
        B = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])
        P = int(lengths.max())
        if P + max_new_tokens > self.cfg.block_size:
            raise ValueError(f"prompt {P} + {max_new_tokens} new tokens exceed the context {self.cfg.block_size}")
        device = self.wte.weight.device
        pad = P - lengths  # left padding per row
        idx = torch.full((B, P), pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            idx[row, pad[row] :] = torch.as_tensor(prompt, dtype=torch.long)
        total = P + max_new_tokens
        # Keys a row may attend to: everything but its left padding.
        valid = (torch.arange(total)[None, :] >= pad[:, None]).to(device)
        pos = (torch.arange(P)[None, :] - pad[:, None]).clamp(min=0).to(device)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        # Padded queries attend to themselves only, so no softmax row is empty.
        mask = (causal[None] & valid[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)[None]
        head_dim = self.cfg.d_model // self.cfg.n_head
        cache = KVCache(self.cfg.n_layer, B, self.cfg.n_head, total, head_dim, self.wte.weight)
        logits = self(idx.to(device), pos, cache, mask[:, None])
        out = torch.empty((B, max_new_tokens), dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        next_pos = lengths.to(device)
        n = 0
        while n < max_new_tokens:
            token = logits[:, -1].argmax(dim=-1)
            out[:, n] = token
            n += 1
            done |= token == eos_id
            if stopped is not None and n % check_every == 0 and not bool(done.all()):
                flags = stopped(self._cut(out[:, :n], eos_id))
                done |= torch.tensor(flags, dtype=torch.bool, device=device)
            if bool(done.all()) or n == max_new_tokens:
                break
            step_mask = valid[:, None, None, : cache.length + 1]
            logits = self(token[:, None], next_pos[:, None], cache, step_mask)
            next_pos = next_pos + 1
        return self._cut(out[:, :n], eos_id)

    @staticmethod
    def _cut(tokens: torch.Tensor, eos_id: int) -> list[list[int]]:
        rows = tokens.tolist()
        return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
