"""TimmClassifier: any timm backbone as a LightningModule, optimizer and scheduler configurable from YAML."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import timm
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from timm.models.resnet import ResNet
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from caer_lightning.checkpoint import restore_swaps

INTERVALS = ("epoch", "step")


def create_backbone(
    backbone: str, num_classes: int, pretrained: bool, in_chans: int, drop_rate: float, **kwargs: Any
) -> nn.Module:
    """`timm.create_model`, with clear errors for an unknown name or pretrained weights that can't be fetched."""
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:8]
        raise ValueError(f"backbone={backbone!r} is not a timm model; similar names: {close or 'none'}")
    try:
        return timm.create_model(
            backbone, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kwargs
        )
    except Exception as error:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for backbone={backbone!r} ({type(error).__name__}: {error}). "
            "Without network access, put the weights in the Hugging Face cache first or set pretrained: false."
        ) from error


def apply_cifar_stem(model: nn.Module, backbone: str) -> None:
    """Replace a ResNet's 7×7 stride-2 stem conv and max-pool by a 3×3 stride-1 conv (for 32×32 inputs)."""
    if not isinstance(model, ResNet) or not isinstance(model.conv1, nn.Conv2d):
        raise ValueError(
            f"cifar_stem=True applies to ResNet-family backbones with a single stem conv (timm's ResNet: resnet18, "
            f"resnet50, resnext50_32x4d, seresnet50, ...); backbone={backbone!r} builds a {type(model).__name__}"
            ". Set cifar_stem: false for it."
        )
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


class TimmClassifier(pl.LightningModule):
    """Image classification with a timm backbone; logs loss and top-1/top-5 accuracy for train/val/test.

    Args:
        backbone: any timm model name (``timm.list_models()``).
        num_classes, in_chans, drop_rate, pretrained: passed to ``timm.create_model``.
        label_smoothing: of the cross-entropy loss.
        cifar_stem: for ResNet-family backbones, a 3×3 stride-1 first conv and no max-pool (32×32 inputs).
        model_kwargs: further keyword arguments for ``timm.create_model`` (e.g. ``img_size`` for a ViT).
        optimizer: a callable params -> optimizer (from YAML: ``class_path`` + ``init_args``).
        scheduler: a callable optimizer -> LR scheduler, or None.
        scheduler_interval: "epoch" or "step": when the scheduler steps.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        pretrained: bool = False,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        label_smoothing: float = 0.0,
        cifar_stem: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; accepted values: {', '.join(INTERVALS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}; accepted values: an int >= 2")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model = create_backbone(backbone, num_classes, pretrained, in_chans, drop_rate, **(model_kwargs or {}))
        if cifar_stem:
            apply_cifar_stem(self.model, backbone)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        })
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", sync_dist=stage != "train")
        self.log_dict(metrics, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities (softmax) for a batch of images, or of (images, labels)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint trained with CAReLUCallback: rebuild its CAReLU layers first, so that
        `TimmClassifier.load_from_checkpoint(path)` loads their alpha, beta too."""
        restore_swaps(self, checkpoint)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler(optimizer), "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = "val_loss"
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
