from caer_lightning.models.timm_classifier import TimmClassifier

__all__ = ["TimmClassifier"]
