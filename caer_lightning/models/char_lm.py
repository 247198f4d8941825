"""What every character-level language model here shares: the next-character loss, bits per character over
whole held-out texts, the optimizer from YAML. A subclass builds `self.net` (ids (N, T) -> logits (N, T, V))."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from caer_lightning.checkpoint import restore_swaps
from caer_lightning.models.timm_classifier import INTERVALS

IGNORED = -100  # targets of padding: not scored
LN2 = math.log(2.0)


def check_positive(**values: int) -> None:
    """Raise a ValueError naming the first argument that is not an int >= 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not supported; accepted values: an int >= 1")


def check_data_vocabulary(module: pl.LightningModule, vocab_size: int) -> None:
    """Raise a ValueError when the trainer's data module has a larger vocabulary (`vocab_size`) than the model."""
    try:
        data_vocab = getattr(module.trainer.datamodule, "vocab_size", None)
    except RuntimeError:  # no trainer attached, or a data module whose vocabulary is not built yet
        data_vocab = None
    if isinstance(data_vocab, int) and data_vocab > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the data's vocabulary ({data_vocab} ids, built "
                         f"from its training split); accepted values: vocab_size >= {data_vocab}")


class CharLanguageModel(pl.LightningModule):
    """Next-character prediction; logs `{stage}_loss` (cross-entropy, nats per character) and `{stage}_bpc` (bits
    per character: the loss / ln 2), for val and test averaged over every scored character of the epoch (padding,
    target -100, not scored).

    Args:
        vocab_size: ids the model predicts; at least the data's `vocab_size` (checked at setup).
        optimizer: a callable params -> optimizer (from YAML: ``class_path`` + ``init_args``).
        scheduler: a callable optimizer -> LR scheduler, or None.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
    """

    net: nn.Module

    def __init__(self, vocab_size: int, optimizer: OptimizerCallable = torch.optim.AdamW,
                 scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch") -> None:
        super().__init__()
        check_positive(vocab_size=vocab_size)
        if scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; accepted values: {', '.join(INTERVALS)}")
        self.optimizer, self.scheduler = optimizer, scheduler
        self.vocab_size, self.scheduler_interval = vocab_size, scheduler_interval
        self.scores = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in ("val", "test")
                                     for name in ("loss", "bpc")})

    def forward(self, ids: Tensor) -> Tensor:
        return self.net(ids)

    def setup(self, stage: str) -> None:
        check_data_vocabulary(self, self.vocab_size)

    def next_character_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy (nats) over the scored targets of a batch, and how many there are."""
        ids, targets = batch
        logits = self(ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORED)
        return loss, (targets != IGNORED).sum()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self.next_character_loss(batch)
        self.log("train_loss", loss)
        self.log("train_bpc", loss / LN2, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        loss, count = self.next_character_loss(batch)
        for name, value in (("loss", loss), ("bpc", loss / LN2)):
            score = self.scores[f"{stage}_{name}"]
            score.update(value, weight=count)
            self.log(f"{stage}_{name}", score, prog_bar=stage == "val" and name == "bpc")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the CAReLU layers a checkpoint trained with CAReLUCallback holds, before its weights load."""
        restore_swaps(self, checkpoint)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler(optimizer), "interval": self.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
