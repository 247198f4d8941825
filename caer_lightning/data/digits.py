"""The embedded default dataset: scikit-learn's 1,797 bundled 8×8 handwritten digits, no download."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(pl.LightningDataModule):
    """Handwritten digits (10 classes) resized to `image_size`, with a fixed train/val/test split.

    Args:
        batch_size: per-step batch size.
        image_size: side of the square images the 8×8 digits are resized to (bilinear).
        channels: 1 (grayscale) or more (the gray image repeated, for RGB backbones).
        val_size, test_size: number of images held out; the rest (1,797 in all) trains.
        seed: seed of the split (the same seed gives the same split on every machine).
        num_workers: DataLoader workers.
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 16,
        channels: int = 1,
        val_size: int = 250,
        test_size: int = 250,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (("batch_size", batch_size, 1), ("image_size", image_size, 8),
                                 ("channels", channels, 1), ("val_size", val_size, 1), ("test_size", test_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not supported; accepted values: an int >= {low}")
        if val_size + test_size >= 1797:
            raise ValueError(f"val_size + test_size = {val_size + test_size} leaves no training images (of 1,797)")
        self.save_hyperparameters()
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=self.hparams.image_size, mode="bilinear", align_corners=False)
        images = images.expand(-1, self.hparams.channels, -1, -1).contiguous()
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.seed))
        n_val, n_test = self.hparams.val_size, self.hparams.test_size
        index = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        train = images[index["train"]]
        mean, std = train.mean(), train.std()  # normalise with training statistics only
        self.splits = {name: TensorDataset((images[i] - mean) / std, labels[i]) for name, i in index.items()}

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
