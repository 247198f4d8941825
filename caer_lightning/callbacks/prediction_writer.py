"""PredictionWriter: what `predict_step` returns, one CSV row per sample, written as each batch ends (a run that
stops half-way keeps the rows it made). `caer predict` adds one when the Trainer has no prediction writer."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Write predictions to a CSV file, one row per sample.

    A prediction of shape (N, C) (class scores, e.g. TimmClassifier's probabilities) gives the columns `index`,
    `prediction` (the arg-max class), `confidence` (its score), `label` (when the batch is `(inputs, labels)`)
    and `p0` ... `p{C-1}`; a prediction of shape (N,) gives `index`, `value` (and `label`). `index` is the
    sample's index in its dataset; with several predict dataloaders a `dataloader` column comes first. Other
    shapes are refused with a message: write your own `BasePredictionWriter` for them.

    Args:
        path: the CSV file. With several processes each writes its own, `name.rank{R}.csv`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.rows = 0
        self.labelled = 0
        self.correct = 0
        self._file: Any = None
        self._writer: Any = None
        self._header: list[str] | None = None

    @property
    def accuracy(self) -> float | None:
        """Share of labelled rows whose `prediction` is the label; None when no row had a label."""
        return self.correct / self.labelled if self.labelled else None

    def output_path(self, trainer: Trainer) -> Path:
        """`path`, or `path` with `.rank{R}` before its suffix when several processes predict."""
        if trainer.world_size == 1:
            return self.path
        return self.path.with_name(f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = self.labelled = self.correct = 0
        self._header = None
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        scores = _as_scores(prediction)
        count = scores.shape[0]
        indices = list(batch_indices) if batch_indices is not None else list(range(self.rows, self.rows + count))
        labels = _labels(batch, count)
        several = len(trainer.num_predict_batches) > 1
        header = (["dataloader"] if several else []) + ["index"]
        if scores.dim() == 2:
            confidence, predicted = scores.max(dim=1)
            header += ["prediction", "confidence"] + (["label"] if labels is not None else [])
            header += [f"p{k}" for k in range(scores.shape[1])]
        else:
            predicted = None
            header += ["value"] + (["label"] if labels is not None else [])
        if self._header is None:
            self._header = header
            self._writer.writerow(header)
        elif header != self._header:
            raise ValueError(
                f"PredictionWriter: batch {batch_idx} gives the columns {header}, the first batch gave "
                f"{self._header}; every batch must return predictions of the same shape and labels or none"
            )
        for row in range(count):
            cells: list[Any] = ([dataloader_idx] if several else []) + [indices[row]]
            if predicted is not None:
                cells += [int(predicted[row]), f"{float(confidence[row]):.6g}"]
            else:
                cells += [f"{float(scores[row]):.6g}"]
            if labels is not None:
                cells.append(int(labels[row]))
            if scores.dim() == 2:
                cells += [f"{float(value):.6g}" for value in scores[row]]
            self._writer.writerow(cells)
        self._file.flush()
        self.rows += count
        if labels is not None and predicted is not None:
            self.labelled += count
            self.correct += int((predicted == labels).sum())

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _as_scores(prediction: Any) -> Tensor:
    if not isinstance(prediction, Tensor) or prediction.dim() not in (1, 2):
        kind = f"a tensor of shape {tuple(prediction.shape)}" if isinstance(prediction, Tensor) else type(prediction)
        raise ValueError(
            f"PredictionWriter writes predictions of shape (N, C) or (N,); predict_step returned {kind}. "
            "Return one of those, or put your own lightning.pytorch.callbacks.BasePredictionWriter in "
            "trainer.callbacks (caer predict then adds none)."
        )
    return prediction.detach().float().cpu()


def _labels(batch: Any, count: int) -> Tensor | None:
    """The labels of an `(inputs, labels)` batch: a 1-D integer tensor of one label per sample, else None."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], Tensor):
        labels = batch[1]
        if labels.dim() == 1 and labels.shape[0] == count and not torch.is_floating_point(labels):
            return labels.detach().cpu()
    return None
