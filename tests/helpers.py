"""Small real components shared by the tests: a tiny CNN LightningModule and a learnable synthetic task."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 4


def synthetic_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    """3×8×8 images whose class is which quadrant is brightest: learnable by a tiny CNN."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    for i, label in enumerate(y.tolist()):
        row, col = divmod(label, 2)
        x[i, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 1.5
    return TensorDataset(x, y)


def loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    return DataLoader(synthetic_dataset(n, seed), batch_size=batch_size, shuffle=False)


class TinyNet(pl.LightningModule):
    """Conv-BN-ReLU ×2, pooled linear head; optimizer and scheduler from factories (SGD by default)."""

    def __init__(
        self,
        lr: float = 0.1,
        optimizer_factory: Callable | None = None,
        scheduler_factory: Callable | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer_factory", "scheduler_factory"])
        self.optimizer_factory, self.scheduler_factory = optimizer_factory, scheduler_factory
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.SGD(params, lr=self.hparams.lr, momentum=0.9))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = "train_loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def block_cnn(seed: int = 0) -> nn.Sequential:
    """Conv-ReLU ×2 and a pooled linear head, one block each (what fully_shard shards one by one); no BatchNorm,
    whose batch statistics would differ between one process and ranks that see half the batch each."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)),
    )


class ValidatedTinyNet(TinyNet):
    """TinyNet with a validation step (logs val_loss), for the tests that validate."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


# Tests that train in two spawned/forked gloo workers: a worker can abort at process exit, in torch's distributed
# teardown after training and every check of ours has finished ("terminate called without an active
# exception", SIGABRT; seen in about 1 of 10 suite runs). Only that crash is retried, at most twice; a failed
# assertion or any other error still fails the test at once.
SPAWN_TEARDOWN_RERUN = pytest.mark.flaky(
    reruns=2, only_rerun=[r"ProcessExitedException: process \d+ terminated with signal SIGABRT"]
)


def trainer(**kwargs) -> pl.Trainer:
    """A quiet CPU Trainer for tests."""
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1,
    )
    return pl.Trainer(**{**defaults, **kwargs})


SNLI_SAMPLE = [  # (sentence1, sentence2, gold_label): SNLI-like pairs; "-" marks a pair without consensus
    ("A man is playing a guitar on stage.", "A man is performing music.", "entailment"),
    ("A man is playing a guitar on stage.", "The man is asleep in bed.", "contradiction"),
    ("A man is playing a guitar on stage.", "The man is a famous singer.", "neutral"),
    ("Two dogs run across a snowy field.", "Animals are outside.", "entailment"),
    ("Two dogs run across a snowy field.", "Two cats sleep on a sofa.", "contradiction"),
    ("Two dogs run across a snowy field.", "The dogs are chasing a ball.", "neutral"),
    ("A woman reads a book in the park.", "Someone is reading.", "entailment"),
    ("A woman reads a book in the park.", "A woman is swimming.", "-"),
]


def write_snli_sample(folder, copies: int = 1):
    """Write snli_1.0_{train,dev,test}.jsonl in the official release's format (the fields the data module reads, and
    some it does not) from SNLI_SAMPLE repeated `copies` times; returns the folder."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev", "test"):
        with open(folder / f"snli_1.0_{name}.jsonl", "w", encoding="utf-8") as out:
            for index, (premise, hypothesis, label) in enumerate(SNLI_SAMPLE * copies):
                out.write(json.dumps({"annotator_labels": [label], "captionID": f"{index}.jpg#0", "gold_label": label,
                                      "pairID": f"{index}.jpg#0r1", "sentence1": premise,
                                      "sentence1_binary_parse": "( ... )", "sentence2": hypothesis}) + "\n")
    return folder
