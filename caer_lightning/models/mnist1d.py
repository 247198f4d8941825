"""The MNIST-1D paper's small classifiers (Greydanus, 2020; its repository's notebooks/models.py), with nn.ReLU
modules, as a LightningModule logging loss and accuracy like TimmClassifier (`val_acc`, `test_acc`, ...)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from caer_lightning.checkpoint import restore_swaps
from caer_lightning.models.timm_classifier import INTERVALS

NETS = ("mlp", "cnn")


class MLP(nn.Module):
    """Linear(40, h) → ReLU → h + ReLU(Linear(h, h)) → Linear(h, classes): the paper's MLP (h = 100)."""

    def __init__(self, length: int = 40, num_classes: int = 10, hidden_size: int = 100) -> None:
        super().__init__()
        self.linear1, self.act1 = nn.Linear(length, hidden_size), nn.ReLU()
        self.linear2, self.act2 = nn.Linear(hidden_size, hidden_size), nn.ReLU()
        self.linear3 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.linear1(x))
        h = h + self.act2(self.linear2(h))
        return self.linear3(h)


class CNN(nn.Module):
    """Three Conv1d (c channels; kernels 5, 3, 3; stride 2), each followed by ReLU, then Linear to the classes:
    the paper's CNN (c = 25)."""

    def __init__(self, length: int = 40, num_classes: int = 10, channels: int = 25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        for kernel in (5, 3, 3):  # the length after each conv (padding 1, stride 2)
            length = (length + 2 - kernel) // 2 + 1
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x.unsqueeze(1)).flatten(1))


class MNIST1DClassifier(pl.LightningModule):
    """Classifies (N, 40) MNIST-1D signals with the paper's MLP or CNN; logs `{stage}_loss` and `{stage}_acc`.

    Args:
        net: "mlp" or "cnn".
        width: hidden units of the MLP (paper: 100) or channels of the CNN (paper: 25); None for the paper's.
        num_classes, length: classes and signal length (MNIST-1D: 10, 40).
        optimizer: a callable params -> optimizer (from YAML: ``class_path`` + ``init_args``).
        scheduler: a callable optimizer -> LR scheduler, or None.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
    """

    def __init__(
        self,
        net: str = "cnn",
        width: int | None = None,
        num_classes: int = 10,
        length: int = 40,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"net={net!r} is not supported; accepted values: {', '.join(NETS)}")
        if scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; accepted values: {', '.join(INTERVALS)}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        if net == "mlp":
            self.model: nn.Module = MLP(length, num_classes, width or 100)
        else:
            self.model = CNN(length, num_classes, width or 25)
        self.criterion = nn.CrossEntropyLoss()
        self.accuracy = nn.ModuleDict({f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                                       for stage in ("train", "val", "test")})

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy.update(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", sync_dist=stage != "train")
        self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities (softmax) for a batch of signals, or of (signals, labels)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

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
