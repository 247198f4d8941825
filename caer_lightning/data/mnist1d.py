"""MNIST-1D (Greydanus, 2020): 5,000 one-dimensional signals of 40 samples, 10 classes, built offline by the
`mnist1d` package from its canonical arguments (the same arrays as the published mnist1d_data.pkl)."""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

TRAIN_SIZE, TEST_SIZE, LENGTH = 4000, 1000, 40


def canonical_mnist1d() -> dict[str, np.ndarray]:
    """The canonical MNIST-1D arrays (x, y: 4,000 training signals; x_test, y_test: 1,000 test signals), built by
    `mnist1d.data.make_dataset(get_dataset_args())`: no download (`get_dataset` would try one first). Python's and
    NumPy's global random states, which `make_dataset` seeds, are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class MNIST1DDataModule(pl.LightningDataModule):
    """MNIST-1D: batches of (signals (N, 40) float32, labels (N,)). The canonical 4,000/1,000 train/test split;
    `val_size` of the 4,000 training signals (drawn by `seed`) are held out for validation.

    Args:
        batch_size: per-step batch size (the paper's: 100).
        val_size: training signals held out for validation (0 < val_size < 4000).
        seed: seed of the validation split.
        num_workers: DataLoader workers.
    """

    num_classes = 10

    def __init__(self, batch_size: int = 100, val_size: int = 500, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        for name, value, low, high in (("batch_size", batch_size, 1, None), ("val_size", val_size, 1, TRAIN_SIZE - 1),
                                       ("num_workers", num_workers, 0, None)):
            if not isinstance(value, int) or value < low or (high is not None and value > high):
                bound = f"{low} <= {name} <= {high}" if high is not None else f"an int >= {low}"
                raise ValueError(f"{name}={value!r} is not supported; accepted values: {bound}")
        self.save_hyperparameters()
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        data = canonical_mnist1d()
        x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.hparams.seed))
        val, train = order[: self.hparams.val_size], order[self.hparams.val_size :]
        self.splits = {
            "train": TensorDataset(x[train], y[train]),
            "val": TensorDataset(x[val], y[val]),
            "test": TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32),
                                  torch.tensor(data["y_test"], dtype=torch.long)),
        }

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
