"""Data modules: the embedded digits split, and CIFAR-100's error when its files are missing."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from PIL import Image

from caer_lightning.data import CIFAR100DataModule, DigitsDataModule
from caer_lightning.data import cifar


def test_digits_split_is_fixed_and_disjoint():
    first, second = DigitsDataModule(image_size=16), DigitsDataModule(image_size=16)
    first.setup("fit"), second.setup("fit")
    sizes = {k: len(v) for k, v in first.splits.items()}
    assert sizes == {"train": 1297, "val": 250, "test": 250}
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split].tensors[0], second.splits[split].tensors[0])
    images = [first.splits[s].tensors[0].flatten(1) for s in ("train", "val", "test")]
    all_images = torch.cat(images)
    assert torch.unique(all_images, dim=0).shape[0] >= 1790, "splits must not share images (1,797 digits, few repeats)"
    x, y = next(iter(first.train_dataloader()))
    assert x.shape == (64, 1, 16, 16) and y.max() < 10
    assert abs(first.splits["train"].tensors[0].mean().item()) < 1e-4


def test_digits_rgb_and_other_seed():
    dm = DigitsDataModule(image_size=32, channels=3, seed=1)
    dm.setup("fit")
    x = dm.splits["test"].tensors[0]
    assert x.shape[1:] == (3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    default = DigitsDataModule(image_size=32, channels=3)
    default.setup("fit")
    assert not torch.equal(default.splits["test"].tensors[1], dm.splits["test"].tensors[1])


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match=r"image_size=4 is not supported; accepted values: an int >= 8"):
        DigitsDataModule(image_size=4)


def test_cifar_missing_files_without_download(tmp_path):
    dm = CIFAR100DataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "cifar-100-python") in message and "download is false" in message
    assert "cifar-100-python.tar.gz" in message and "data.data_dir" in message
    with pytest.raises(FileNotFoundError, match="CIFAR-100 not found"):
        dm.setup("fit")


def test_cifar_failed_download_is_reported(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(cifar, "CIFAR100", offline)
    with pytest.raises(FileNotFoundError, match=r"the download failed \(URLError: .*network unreachable"):
        CIFAR100DataModule(data_dir=str(tmp_path), download=True).prepare_data()


def test_cifar_standard_augmentation():
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    x = cifar.train_transform()(image)
    assert x.shape == (3, 32, 32)
    steps = [type(t).__name__ for t in cifar.train_transform().transforms]
    assert steps == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert cifar.train_transform().transforms[0].padding == 4


def test_a_failed_download_leaves_no_folder_it_created(tmp_path, monkeypatch):
    def half_written(root, *args, **kwargs):  # torchvision makes the folder, then the network fails
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-100-python.tar.gz").write_bytes(b"partial")
        raise URLError("network unreachable")

    monkeypatch.setattr(cifar, "CIFAR100", half_written)
    with pytest.raises(FileNotFoundError, match=r"the download failed \(URLError: .*network unreachable"):
        CIFAR100DataModule(data_dir=str(tmp_path / "data"), download=True).prepare_data()
    assert not (tmp_path / "data").exists()
    kept = tmp_path / "mine"
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("the user's")
    with pytest.raises(FileNotFoundError):
        CIFAR100DataModule(data_dir=str(kept), download=True).prepare_data()
    assert (kept / "notes.txt").read_text() == "the user's"  # a folder that was there is left as it was
