from caer_lightning.callbacks.carelu import CAReLUCallback

__all__ = ["CAReLUCallback"]
