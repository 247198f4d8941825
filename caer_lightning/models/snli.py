"""A sentence-pair classifier for natural language inference (SNLI): a shared sentence encoder (BiLSTM with max
pooling, as InferSent, or the mean of the word embeddings), then an MLP with an `nn.ReLU` module over
[u, v, |u − v|, u * v], so CAReLUCallback swaps it."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchmetrics.classification import MulticlassAccuracy

from caer_lightning.checkpoint import restore_swaps
from caer_lightning.data.snli import LABELS, PAD
from caer_lightning.models.char_lm import check_data_vocabulary, check_positive
from caer_lightning.models.timm_classifier import INTERVALS

ENCODERS = ("bilstm", "mean")


class SentenceEncoder(nn.Module):
    """Word ids (N, L), PAD-padded -> one vector per sentence: the max over time of a BiLSTM's outputs
    (`bilstm`, size 2 × hidden_size) or the mean of the word embeddings (`mean`, size embedding_dim)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, encoder: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD)
        if encoder == "bilstm":
            self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
            self.size = 2 * hidden_size
        else:
            self.size = embedding_dim

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != PAD
        lengths = mask.sum(1).clamp(min=1)
        embedded = self.embedding(ids)
        if self.encoder == "mean":
            return (embedded * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=ids.shape[1])
        return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


class PairClassifier(nn.Module):
    """Encodes premise u and hypothesis v with one encoder; Linear(4·size, mlp) → ReLU → dropout → Linear(mlp, 3)
    over [u, v, |u − v|, u * v]."""

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_size: int = 128, encoder: str = "bilstm",
                 mlp_size: int = 256, dropout: float = 0.1, num_classes: int = len(LABELS)) -> None:
        super().__init__()
        self.encoder = SentenceEncoder(vocab_size, embedding_dim, hidden_size, encoder)
        self.fc1, self.act = nn.Linear(4 * self.encoder.size, mlp_size), nn.ReLU()
        self.dropout, self.fc2 = nn.Dropout(dropout), nn.Linear(mlp_size, num_classes)

    def forward(self, premise: Tensor, hypothesis: Tensor) -> Tensor:
        u, v = self.encoder(premise), self.encoder(hypothesis)
        features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        return self.fc2(self.dropout(self.act(self.fc1(features))))


class SNLIClassifier(pl.LightningModule):
    """Classifies (premise, hypothesis) pairs as entailment, neutral or contradiction; logs `{stage}_loss` and
    `{stage}_acc` (val on SNLI's dev file).

    Args:
        vocab_size: word ids; at least the data's vocabulary (checked at setup).
        embedding_dim, hidden_size: word vectors and the BiLSTM's units per direction.
        encoder: "bilstm" (max-pooled BiLSTM) or "mean" (mean of the word embeddings).
        mlp_size, dropout: the classifier's hidden units (ReLU) and dropout.
        optimizer, scheduler, scheduler_interval: as MNIST1DClassifier's.
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        encoder: str = "bilstm",
        mlp_size: int = 256,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        check_positive(vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_size=hidden_size,
                       mlp_size=mlp_size)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r} is not supported; accepted values: {', '.join(ENCODERS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is not supported; accepted values: 0 <= dropout < 1")
        if scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; accepted values: {', '.join(INTERVALS)}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model = PairClassifier(vocab_size, embedding_dim, hidden_size, encoder, mlp_size, dropout)
        self.criterion = nn.CrossEntropyLoss()
        self.accuracy = nn.ModuleDict({f"{stage}_acc": MulticlassAccuracy(len(LABELS), average="micro")
                                       for stage in ("train", "val", "test")})

    def forward(self, premise: Tensor, hypothesis: Tensor) -> Tensor:
        return self.model(premise, hypothesis)

    def setup(self, stage: str) -> None:
        check_data_vocabulary(self, self.hparams.vocab_size)

    def _shared_step(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> Tensor:
        premise, hypothesis, labels = batch
        logits = self(premise, hypothesis)
        loss = self.criterion(logits, labels)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy.update(logits, labels)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", sync_dist=stage != "train",
                 batch_size=len(labels))
        self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val", batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities (softmax) of (premise, hypothesis[, labels]) batches."""
        return self(batch[0], batch[1]).softmax(dim=-1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the CAReLU layers a checkpoint trained with CAReLUCallback holds, before its weights load."""
        restore_swaps(self, checkpoint)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler(optimizer), "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
