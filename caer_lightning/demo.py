"""Placeholder main job: a small CNN on scikit-learn's bundled 8×8 digits, trained with CAReLUCallback.

Run `python -m caer_lightning.demo`; no download is needed. (The LightningCLI app replaces it later.)
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from caer_lightning import CAReLU, CAReLUCallback


class DigitsNet(pl.LightningModule):
    """Conv-BN-ReLU ×2 and a linear head for 1×8×8 digits."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5)}


def digits_splits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The 1,797 bundled digits, scaled to [0, 1], split 80/20 with a fixed seed."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    dataset = TensorDataset(x, torch.tensor(digits.target))
    train, test = random_split(dataset, [0.8, 0.2], generator=torch.Generator().manual_seed(seed))
    return train, test


def main() -> None:
    pl.seed_everything(0)
    train, test = digits_splits()
    callback = CAReLUCallback()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=5, callbacks=[callback], enable_model_summary=False)
    model = DigitsNet()
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True))
    (result,) = trainer.test(model, DataLoader(test, batch_size=256))
    learned = {n: f"alpha={m.alpha.item():+.3f} beta={m.beta.item():+.3f}"
               for n, m in model.named_modules() if isinstance(m, CAReLU)}
    print(f"test accuracy {result['test_acc']:.4f}; CAReLU layers: {learned}")


if __name__ == "__main__":
    main()
