from caer_lightning.data.cifar import CIFAR100DataModule
from caer_lightning.data.digits import DigitsDataModule
from caer_lightning.data.image_folders import ImageFolderSRDataModule
from caer_lightning.data.lee_news import LeeNewsDataModule
from caer_lightning.data.mnist1d import MNIST1DDataModule
from caer_lightning.data.photos import EmbeddedPhotosDataModule
from caer_lightning.data.snli import SNLIDataModule

__all__ = ["CIFAR100DataModule", "DigitsDataModule", "EmbeddedPhotosDataModule", "ImageFolderSRDataModule",
           "LeeNewsDataModule", "MNIST1DDataModule", "SNLIDataModule"]
