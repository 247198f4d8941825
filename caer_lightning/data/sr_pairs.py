"""Super-resolution pairs: bicubic resizing, random HR crops with their bicubic downscales for training, whole
photos for evaluation, and the data module that serves them from any list of photos per split."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

SCALES = (2, 3, 4)


def check_scale(scale: int) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not supported; accepted values: {', '.join(map(str, SCALES))}")


def quantize(images: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image, as saved photos are."""
    return images.clamp(0, 1).mul(255).round().div(255)


def bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of (N, C, H, W) images in [0, 1] to `size` (height, width), with the antialiasing kernel
    (a = -0.5, widened when downscaling): PIL's and MATLAB's `imresize`, what SR benchmarks use. Not quantized."""
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def crop_to_scale(image: Tensor, scale: int) -> Tensor:
    """The image's top-left part whose height and width are multiples of `scale`."""
    height, width = image.shape[-2] // scale * scale, image.shape[-1] // scale * scale
    return image[..., :height, :width]


def downscale(hr: Tensor, scale: int) -> Tensor:
    """The LR image of an HR image (N, C, H, W) in [0, 1] whose sides are multiples of `scale`: its bicubic
    downscale, quantized to 8 bits."""
    return quantize(bicubic(hr, (hr.shape[-2] // scale, hr.shape[-1] // scale)))


def to_float(image: Tensor) -> Tensor:
    """(C, H, W) uint8 -> float32 in [0, 1]."""
    return image.float().div(255)


def random_crops(photos: list[Tensor], count: int, size: int, generator: torch.Generator) -> Tensor:
    """`count` crops of `size`×`size` pixels (uint8, (count, C, size, size)) from `photos` ((C, H, W) uint8 each,
    each photo drawn in proportion to its area), each flipped and rotated by a random one of the square's 8
    symmetries."""
    small = [tuple(p.shape[-2:]) for p in photos if min(p.shape[-2:]) < size]
    if small:
        raise ValueError(f"patch side {size} is larger than photos of size {small}; use a smaller lr_patch_size")
    areas = torch.tensor([p.shape[-2] * p.shape[-1] for p in photos], dtype=torch.float64)
    which = torch.multinomial(areas, count, replacement=True, generator=generator)
    crops = []
    for index in which.tolist():
        photo = photos[index]
        top = int(torch.randint(photo.shape[-2] - size + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[-1] - size + 1, (1,), generator=generator))
        crop = photo[:, top : top + size, left : left + size]
        turns, flip = (int(v) for v in torch.randint(4, (2,), generator=generator))
        crop = torch.rot90(crop, turns, dims=(-2, -1))
        crops.append(crop.flip(-1) if flip % 2 else crop)
    return torch.stack(crops)


class PhotoPairs(Dataset):
    """Whole photos as (LR, HR) pairs: each photo cropped to a multiple of the scale (HR) and its bicubic downscale
    (LR), float in [0, 1]. Photos differ in size: batch them one at a time."""

    def __init__(self, photos: list[Tensor], scale: int) -> None:
        self.pairs = []
        for photo in photos:
            hr = crop_to_scale(to_float(photo), scale).unsqueeze(0)
            self.pairs.append((downscale(hr, scale)[0], hr[0]))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pairs[index]


def patch_pairs(photos: list[Tensor], scale: int, count: int, lr_patch_size: int, seed: int) -> TensorDataset:
    """`count` training pairs: random HR crops of (lr_patch_size · scale)² pixels from `photos` and their bicubic
    downscales (LR), drawn once from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    hr = to_float(random_crops(photos, count, lr_patch_size * scale, generator))
    lr = torch.cat([downscale(chunk, scale) for chunk in hr.split(256)])
    return TensorDataset(lr, hr)


class SRDataModule(pl.LightningDataModule):
    """Base of the super-resolution data modules: batches of (LR, HR) images in [0, 1], LR the 8-bit bicubic
    downscale of HR by `scale`. Training: `train_patches` random HR crops of the training photos (drawn once from
    `seed`, flipped and rotated); validation and test: whole photos, one per batch. A subclass says which photos
    (uint8 (C, H, W) tensors) each split holds by overriding `photos(split)`.

    Args:
        scale: 2, 3 or 4 (the model's `scale` must match).
        lr_patch_size: side of the training LR patches (HR patches are `lr_patch_size · scale`).
        train_patches: number of training pairs (one epoch).
        batch_size: training batch size.
        seed: seed of the crops.
        num_workers: DataLoader workers.
    """

    splits = ("train", "val", "test")

    def __init__(self, scale: int = 2, lr_patch_size: int = 32, train_patches: int = 1600, batch_size: int = 16,
                 seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        check_scale(scale)
        for name, value, low in (("lr_patch_size", lr_patch_size, 4), ("train_patches", train_patches, 1),
                                 ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not supported; accepted values: an int >= {low}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    @property
    def scale(self) -> int:
        return self.hparams.scale

    def photos(self, split: str) -> list[Tensor]:
        """The photos of `split` ("train", "val" or "test"), uint8 (C, H, W) tensors."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        hp = self.hparams
        self.datasets = {
            "train": patch_pairs(self.photos("train"), hp.scale, hp.train_patches, hp.lr_patch_size, hp.seed),
            "val": PhotoPairs(self.photos("val"), hp.scale),
            "test": PhotoPairs(self.photos("test"), hp.scale),
        }

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        batch_size = self.hparams.batch_size if split == "train" else 1
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
