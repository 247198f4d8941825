from caer_lightning.data.cifar import CIFAR100DataModule
from caer_lightning.data.digits import DigitsDataModule

__all__ = ["CIFAR100DataModule", "DigitsDataModule"]
