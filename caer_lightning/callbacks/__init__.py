from caer_lightning.callbacks.carelu import CAReLUCallback
from caer_lightning.callbacks.prediction_writer import PredictionWriter

__all__ = ["CAReLUCallback", "PredictionWriter"]
