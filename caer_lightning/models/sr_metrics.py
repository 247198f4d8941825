"""How super-resolution is scored: PSNR and SSIM on the Y channel (ITU-R BT.601, as MATLAB's `rgb2ycbcr`) of
8-bit images, with `scale` pixels cropped from every border, one value per image (torchmetrics' functions)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from caer_lightning.data.sr_pairs import quantize

# Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1]
Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
Y_OFFSET = 16 / 255
SSIM_RADIUS = 5  # of the 11×11 Gaussian window (σ 1.5) that torchmetrics builds: int(3.5σ + 0.5)


def rgb_to_y(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) luma Y in [16/255, 235/255]; a 1-channel image is its own Y."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"images with {images.shape[1]} channels: accepted values: 1 (Y) or 3 (RGB)")
    weights = torch.tensor(Y_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True) + Y_OFFSET


def shave(images: Tensor, border: int) -> Tensor:
    """`images` without `border` pixels on each side."""
    return images[..., border:-border, border:-border] if border > 0 else images


def y_channel(images: Tensor, border: int) -> Tensor:
    """What is scored: the images quantized to 8 bits, their Y channel, `border` pixels cropped on each side."""
    return shave(rgb_to_y(quantize(images.float())), border)


def y_psnr(sr: Tensor, hr: Tensor, border: int) -> Tensor:
    """PSNR (dB) on Y of each image of a batch (N, C, H, W) in [0, 1]: shape (N,)."""
    return peak_signal_noise_ratio(y_channel(sr, border), y_channel(hr, border), data_range=1.0,
                                   reduction="none", dim=(1, 2, 3))


def y_ssim(sr: Tensor, hr: Tensor, border: int) -> Tensor:
    """SSIM on Y (Gaussian window 11, σ 1.5) of each image of a batch (N, C, H, W) in [0, 1]: shape (N,).

    The mean of the SSIM map over the positions where the window lies inside the image, as scikit-image and
    MATLAB's `ssim` compute it: recent torchmetrics (1.9) averages the map over a reflect-padded border too, older
    releases did not, so the map is taken from torchmetrics and cropped here, the same on every version."""
    _, full = structural_similarity_index_measure(y_channel(sr, border), y_channel(hr, border), data_range=1.0,
                                                  return_full_image=True)
    return shave(full, SSIM_RADIUS).mean(dim=(1, 2, 3))
