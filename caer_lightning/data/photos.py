"""The embedded super-resolution default: colour photographs that ship inside installed packages (scikit-image,
scikit-learn, matplotlib), split by whole photo into train, val and test. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from caer_lightning.data.sr_pairs import SRDataModule

PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (package, files inside it). A photo of several files (the two views of the motorcycle stereo pair, one
    # scene) goes whole to one split.
    "astronaut": ("skimage", ("data/astronaut.png",)),
    "chelsea": ("skimage", ("data/chelsea.png",)),
    "coffee": ("skimage", ("data/coffee.png",)),
    "rocket": ("skimage", ("data/rocket.jpg",)),
    "motorcycle": ("skimage", ("data/motorcycle_left.png", "data/motorcycle_right.png")),
    "china": ("sklearn", ("datasets/images/china.jpg",)),
    "flower": ("sklearn", ("datasets/images/flower.jpg",)),
    "grace_hopper": ("matplotlib", ("mpl-data/sample_data/grace_hopper.jpg",)),
}
DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}
VAL_PHOTOS = ("coffee",)
TEST_PHOTOS = ("astronaut", "chelsea", "china")


def photo_files(name: str) -> list[Path]:
    """The files of photo `name`, found inside its package (which is located, not imported)."""
    package, files = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"photo {name!r} ships with {DISTRIBUTIONS[package]}, which is not installed: "
                                f"pip install {DISTRIBUTIONS[package]}")
    root = Path(list(spec.submodule_search_locations)[0])
    paths = [root / file for file in files]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"photo {name!r}: {', '.join(missing)} is missing from the installed "
                                f"{DISTRIBUTIONS[package]}; reinstall it (caer_lightning reads its bundled files)")
    return paths


def load_photo(name: str) -> list[Tensor]:
    """The images of photo `name`: uint8 RGB tensors (3, H, W)."""
    images = []
    for path in photo_files(name):
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


def split_photos(val_photos: Sequence[str], test_photos: Sequence[str]) -> dict[str, list[str]]:
    """Photo names per split: val and test as given, train every other photo. Raises ValueError for an unknown
    name, a photo in both val and test, or no photo left to train on."""
    for argument, names in (("val_photos", val_photos), ("test_photos", test_photos)):
        unknown = [n for n in names if n not in PHOTOS]
        if unknown or not names:
            raise ValueError(f"{argument}={list(names)!r}: {'unknown ' + ', '.join(map(repr, unknown)) if unknown else 'empty'}; "
                             f"accepted values: one or more of {', '.join(PHOTOS)}")
    both = sorted(set(val_photos) & set(test_photos))
    if both:
        raise ValueError(f"val_photos and test_photos both hold {', '.join(both)}: a photo belongs to one split")
    train = [n for n in PHOTOS if n not in set(val_photos) | set(test_photos)]
    if not train:
        raise ValueError("val_photos and test_photos take every photo: none is left to train on")
    return {"train": train, "val": list(val_photos), "test": list(test_photos)}


class EmbeddedPhotosDataModule(SRDataModule):
    """Super-resolution on the colour photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket,
    the motorcycle stereo pair), scikit-learn (china, flower) and matplotlib (grace_hopper): no download.

    Split by whole photo: `val_photos` (default coffee) and `test_photos` (default astronaut, chelsea, china);
    every other photo trains (rocket, motorcycle's two views, flower, grace_hopper). Other arguments: see
    `SRDataModule` (scale, lr_patch_size, train_patches, batch_size, seed, num_workers).
    """

    def __init__(self, scale: int = 2, lr_patch_size: int = 32, train_patches: int = 1600, batch_size: int = 16,
                 val_photos: Sequence[str] = VAL_PHOTOS, test_photos: Sequence[str] = TEST_PHOTOS, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(scale, lr_patch_size, train_patches, batch_size, seed, num_workers)
        self.names = split_photos(list(val_photos), list(test_photos))

    def photos(self, split: str) -> list[Tensor]:
        return [image for name in self.names[split] for image in load_photo(name)]
