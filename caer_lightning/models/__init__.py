from caer_lightning.models.char_transformer import CharTransformerLM
from caer_lightning.models.gpt2_char import GPT2CharLM
from caer_lightning.models.mnist1d import MNIST1DClassifier
from caer_lightning.models.snli import SNLIClassifier
from caer_lightning.models.super_resolution import SuperResolution
from caer_lightning.models.timm_classifier import TimmClassifier

__all__ = ["CharTransformerLM", "GPT2CharLM", "MNIST1DClassifier", "SNLIClassifier", "SuperResolution",
           "TimmClassifier"]
