"""A small causal (decoder-only) Transformer over characters: pre-LayerNorm blocks whose feed-forward holds its
activation as an `nn.GELU`/`nn.ReLU` module (`blocks.N.mlp.act`), so CAReLUCallback swaps it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from caer_lightning.models.char_lm import CharLanguageModel, check_positive

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class FeedForward(nn.Module):
    """Linear(d, ff) → activation module → Linear(ff, d) → dropout."""

    def __init__(self, d_model: int, ff_size: int, activation: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(d_model, ff_size), ACTIVATIONS[activation]()
        self.fc2, self.dropout = nn.Linear(ff_size, d_model), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """x + attention(LN(x)), then x + feed-forward(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_size: int, activation: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(d_model), CausalSelfAttention(d_model, n_heads, dropout)
        self.norm2, self.mlp = nn.LayerNorm(d_model), FeedForward(d_model, ff_size, activation, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, `n_layers` blocks, a final LayerNorm and a linear head to the vocabulary:
    ids (N, T) with T <= context -> logits (N, T, vocab_size)."""

    def __init__(self, vocab_size: int, context: int = 128, d_model: int = 96, n_layers: int = 3, n_heads: int = 4,
                 ff_size: int | None = None, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.context = context
        self.embedding, self.position = nn.Embedding(vocab_size, d_model), nn.Embedding(context, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, ff_size or 4 * d_model, activation, dropout)
                                    for _ in range(n_layers))
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.context:
            raise ValueError(f"a sequence of {length} characters is longer than the model's context ({self.context}); "
                             "give the data a seq_len <= context")
        x = self.dropout(self.embedding(ids) + self.position(torch.arange(length, device=ids.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class CharTransformerLM(CharLanguageModel):
    """A character-level causal Transformer language model; logs `{stage}_loss` and `{stage}_bpc`.

    Args:
        vocab_size: ids predicted; at least the data's `vocab_size` (Lee news, default split: 79).
        context: the longest sequence (learned positions); at least the data's `seq_len`.
        d_model, n_layers, n_heads: width, depth and attention heads (d_model divisible by n_heads).
        ff_size: hidden units of each feed-forward (None: 4 × d_model).
        activation: "gelu" or "relu", the feed-forward's activation module.
        dropout: on embeddings, attention weights and each residual branch.
        optimizer, scheduler, scheduler_interval: as `CharLanguageModel`.
    """

    def __init__(
        self,
        vocab_size: int = 79,
        context: int = 128,
        d_model: int = 96,
        n_layers: int = 3,
        n_heads: int = 4,
        ff_size: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__(vocab_size, optimizer, scheduler, scheduler_interval)
        check_positive(context=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        if ff_size is not None:
            check_positive(ff_size=ff_size)
        if d_model % n_heads:
            divisors = ", ".join(str(h) for h in range(1, d_model + 1) if not d_model % h)
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; accepted values: n_heads "
                             f"among the divisors of d_model ({divisors})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r} is not supported; accepted values: {', '.join(ACTIVATIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is not supported; accepted values: 0 <= dropout < 1")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = CharTransformer(vocab_size, context, d_model, n_layers, n_heads, ff_size, activation, dropout)
