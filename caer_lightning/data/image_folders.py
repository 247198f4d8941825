"""Super-resolution on image folders you bring: BSD-300/BSDS500, DIV2K, Set5, Set14, Urban100, ... (HR images;
the LR images are made by bicubic downscaling, as those benchmarks define them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from caer_lightning.data.sr_pairs import SRDataModule

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_files(folder: str | Path, argument: str) -> list[Path]:
    """The image files directly in `folder`, sorted by name. Raises FileNotFoundError naming the folder, the
    argument that gave it and what it looked for when the folder is absent or holds no image."""
    path = Path(folder).expanduser()
    looked_for = f"files ending in {', '.join(EXTENSIONS)} (any case)"
    if not path.is_dir():
        raise FileNotFoundError(f"{argument}={str(folder)!r}: no such folder ({path.resolve()}); it should hold "
                                f"the HR images, {looked_for}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{argument}={str(folder)!r}: no image in {path.resolve()}: looked for {looked_for}, "
                                "directly in that folder (not in sub-folders)")
    return files


def load_image(path: Path) -> Tensor:
    """An image file as a uint8 RGB tensor (3, H, W) (grayscale images are repeated on the three channels)."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


class ImageFolderSRDataModule(SRDataModule):
    """Super-resolution on your HR image folders: random crops of the images in `train_dir` for training, whole
    images of `val_dir` and `test_dir` for validation and test (`val_dir` defaults to `test_dir`, e.g. DIV2K's
    800 training images with Set5 for validation and Set14 for test). The LR images are the 8-bit bicubic
    downscales of the HR images, made here. Other arguments: see `SRDataModule`.

    Example (YAML): ``data: {class_path: caer_lightning.data.ImageFolderSRDataModule, init_args: {train_dir:
    data/DIV2K_train_HR, val_dir: data/Set5, test_dir: data/Set14, scale: 2}}``
    """

    def __init__(self, train_dir: str, test_dir: str, val_dir: str | None = None, scale: int = 2,
                 lr_patch_size: int = 32, train_patches: int = 1600, batch_size: int = 16, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(scale, lr_patch_size, train_patches, batch_size, seed, num_workers)
        self.folders = {"train": ("train_dir", train_dir), "test": ("test_dir", test_dir),
                        "val": ("val_dir", val_dir) if val_dir else ("test_dir (val_dir is not set)", test_dir)}

    def photos(self, split: str) -> list[Tensor]:
        argument, folder = self.folders[split]
        return [load_image(path) for path in image_files(folder, argument)]
