"""SuperResolution: single-image super-resolution as a LightningModule, scored against its bicubic floor."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from caer_lightning.checkpoint import restore_swaps
from caer_lightning.data.sr_pairs import bicubic, check_scale
from caer_lightning.models.sr_nets import build_net
from caer_lightning.models.timm_classifier import INTERVALS


class SuperResolution(pl.LightningModule):
    """Upscales (N, C, h, w) images in [0, 1] by `scale`; trained with the L1 loss on (LR, HR) batches.

    Validation and test log, per image and averaged: `{stage}_psnr` and `{stage}_ssim` on the Y channel of the
    8-bit output with `scale` border pixels cropped (see `sr_metrics`), `{stage}_loss` (L1), and the same scores of
    the bicubic upscale of the LR input, `{stage}_psnr_bicubic` and `{stage}_ssim_bicubic`: the floor a network
    has to beat.

    Args:
        net: "espcn" or "fsrcnn" (see `sr_nets`; nn.ReLU activations).
        scale: 2, 3 or 4; the data's must match.
        channels: image channels (3: RGB).
        net_kwargs: widths of the net (ESPCN: features, mid; FSRCNN: d, s, m).
        residual: add the bicubic upscale of the input to the net's output, so the net learns the residual over
            it (a global skip, as VDSR's): it starts at the bicubic floor and trains much faster; false: the net
            as published.
        optimizer: a callable params -> optimizer (from YAML: ``class_path`` + ``init_args``).
        scheduler: a callable optimizer -> LR scheduler, or None.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
    """

    def __init__(
        self,
        net: str = "espcn",
        scale: int = 2,
        channels: int = 3,
        net_kwargs: dict[str, int] | None = None,
        residual: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        check_scale(scale)
        if scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; accepted values: {', '.join(INTERVALS)}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = build_net(net, scale, channels, **(net_kwargs or {}))
        self.criterion = nn.L1Loss()

    def forward(self, lr: Tensor) -> Tensor:
        sr = self.net(lr)
        if self.hparams.residual:
            sr = sr + bicubic(lr, tuple(sr.shape[-2:]))
        return sr

    def _check_pair(self, lr: Tensor, hr: Tensor) -> None:
        scale = self.hparams.scale
        if hr.shape[-2:] != (lr.shape[-2] * scale, lr.shape[-1] * scale):
            raise ValueError(
                f"the model's scale={scale} does not fit the batch: LR {tuple(lr.shape[-2:])}, HR "
                f"{tuple(hr.shape[-2:])}; set the model's and the data's scale alike "
                "(model.init_args.scale, data.init_args.scale)")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        lr, hr = batch
        self._check_pair(lr, hr)
        loss = self.criterion(self(lr), hr)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        from caer_lightning.models.sr_metrics import y_psnr, y_ssim

        lr, hr = batch
        self._check_pair(lr, hr)
        sr = self(lr)
        upscaled = bicubic(lr, tuple(hr.shape[-2:]))
        border, n = self.hparams.scale, lr.shape[0]
        self.log(f"{stage}_loss", self.criterion(sr, hr), batch_size=n, sync_dist=True)
        for name, images in (("", sr), ("_bicubic", upscaled)):
            self.log(f"{stage}_psnr{name}", y_psnr(images, hr, border).mean(), batch_size=n, sync_dist=True,
                     prog_bar=stage == "val" and not name)
            self.log(f"{stage}_ssim{name}", y_ssim(images, hr, border).mean(), batch_size=n, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The upscaled images, clamped to [0, 1], of a batch of LR images or of (LR, HR) pairs."""
        lr = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(lr).clamp(0, 1)

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
