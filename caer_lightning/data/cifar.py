"""CIFAR-100 (torchvision) with the standard augmentation; one clear error when the files are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, random_split
from torchvision import transforms
from torchvision.datasets import CIFAR100

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FILES = ("train", "test", "meta")


def train_transform() -> transforms.Compose:
    """4-pixel padded random 32×32 crop, horizontal flip, normalisation."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def eval_transform() -> transforms.Compose:
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


class CIFAR100DataModule(pl.LightningDataModule):
    """CIFAR-100: 50,000 training and 10,000 test images of 32×32, 100 classes.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-100-python/``.
        download: fetch the archive when the files are absent.
        batch_size, num_workers: DataLoader settings.
        val_size: images held out of the training set for validation; 0 (the usual CIFAR recipe)
            validates on the test set.
        seed: seed of the validation split.
    """

    num_classes = 100

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: int = 128,
        num_workers: int = 4,
        val_size: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= val_size < 50_000:
            raise ValueError(f"val_size={val_size!r} is not supported; accepted values: 0 <= val_size < 50000")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    @property
    def folder(self) -> Path:
        return Path(self.hparams.data_dir).expanduser().resolve() / "cifar-100-python"

    def files_present(self) -> bool:
        return all((self.folder / name).is_file() for name in FILES)

    def prepare_data(self) -> None:
        """Download once (on one process per node) when allowed and needed; else fail with a clear message."""
        if self.files_present():
            return
        reason = "download is false"
        if self.hparams.download:
            root = Path(self.hparams.data_dir).expanduser()
            created = not root.exists()
            try:
                CIFAR100(self.hparams.data_dir, train=True, download=True)
                CIFAR100(self.hparams.data_dir, train=False, download=True)
                return
            except Exception as error:  # no network, proxy, disk full, bad archive...
                reason = f"the download failed ({type(error).__name__}: {error})"
                if created:  # leave no empty or half-written folder behind
                    shutil.rmtree(root, ignore_errors=True)
        raise FileNotFoundError(
            f"CIFAR-100 not found: looked for {', '.join(FILES)} in {self.folder} and {reason}. To provide the "
            f"files, download {ARCHIVE_URL} on a machine with internet access and extract it into "
            f"{self.folder.parent} (so that {self.folder / 'train'} exists), or point data.data_dir at a folder "
            "that holds cifar-100-python/, or set data.download=true where the download can succeed."
        )

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if not self.files_present():
            self.prepare_data()  # raises the same clear error on every process
        root = self.hparams.data_dir
        train = CIFAR100(root, train=True, transform=train_transform())
        test = CIFAR100(root, train=False, transform=eval_transform())
        self.datasets = {"train": train, "val": test, "test": test}
        if self.hparams.val_size:
            generator = torch.Generator().manual_seed(self.hparams.seed)
            sizes = [50_000 - self.hparams.val_size, self.hparams.val_size]
            train_part, _ = random_split(train, sizes, generator=generator)
            held_out = CIFAR100(root, train=True, transform=eval_transform())  # no augmentation for validation
            _, val_part = random_split(held_out, sizes, generator=torch.Generator().manual_seed(self.hparams.seed))
            self.datasets.update(train=train_part, val=val_part)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle, drop_last=shuffle,
            num_workers=self.hparams.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
