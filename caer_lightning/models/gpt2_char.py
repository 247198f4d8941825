"""A Hugging Face GPT-2 over characters, built from a small `GPT2Config` (no weights downloaded): the same task and
logs as CharTransformerLM, with transformers' own blocks. Needs `transformers` (imported when the model is built)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from caer_lightning.models.char_lm import CharLanguageModel, check_positive


class GPT2CharLM(CharLanguageModel):
    """`transformers.GPT2LMHeadModel(GPT2Config(...))` as a character-level language model; logs `{stage}_loss` and
    `{stage}_bpc`. With `activation="gelu"` each block's MLP holds transformers' `GELUActivation` (a function
    attribute `F.gelu`), which CAReLUCallback swaps with `targets: [torch.nn.GELU]` (at
    `net.transformer.h.N.mlp.act.act`); GPT-2's own "gelu_new" is arithmetic: swap it with
    `targets: [transformers.activations.NewGELUActivation]`.

    Args:
        vocab_size: ids predicted; at least the data's `vocab_size`.
        context: GPT2Config's n_positions: the longest sequence.
        d_model, n_layers, n_heads: n_embd, n_layer, n_head (d_model divisible by n_heads).
        activation: GPT2Config's activation_function ("gelu", "gelu_new", "relu", ...).
        dropout: resid_pdrop, embd_pdrop and attn_pdrop.
        optimizer, scheduler, scheduler_interval: as `CharLanguageModel`.
    """

    def __init__(
        self,
        vocab_size: int = 82,
        context: int = 128,
        d_model: int = 96,
        n_layers: int = 3,
        n_heads: int = 4,
        activation: str = "gelu",
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__(vocab_size, optimizer, scheduler, scheduler_interval)
        check_positive(context=context, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; accepted values: n_heads "
                             "among the divisors of d_model")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is not supported; accepted values: 0 <= dropout < 1")
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
            from transformers.activations import ACT2FN
        except ImportError as error:
            message = "GPT2CharLM needs the `transformers` package: pip install transformers"
            raise ModuleNotFoundError(message) from error
        if activation not in ACT2FN:
            raise ValueError(f"activation={activation!r} is not supported; accepted values: transformers' "
                             f"activation names ({', '.join(sorted(ACT2FN))})")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        config = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=d_model, n_layer=n_layers,
                            n_head=n_heads, activation_function=activation, resid_pdrop=dropout, embd_pdrop=dropout,
                            attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)
        self.net = GPT2LMHeadModel(config)

    def forward(self, ids: Tensor) -> Tensor:
        length = ids.shape[1]
        if length > self.net.config.n_positions:
            raise ValueError(f"a sequence of {length} characters is longer than the model's context "
                             f"({self.net.config.n_positions}); give the data a seq_len <= context")
        return self.net(input_ids=ids).logits
