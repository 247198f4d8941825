"""The LightningCLI behind `caer fit`, `caer validate`, `caer test` and `caer predict`: models and data chosen by
class_path, `fit --test_after_fit`, evaluation logged into the run that wrote the checkpoint, and `predict`
writing its predictions to a CSV file. It imports no other part of the `caer` command (cli.py, runner.py, ab.py,
stability.py import it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from caer_lightning.callbacks.prediction_writer import PredictionWriter

EVALUATIONS = ("validate", "test", "predict")
PREDICTIONS_FILE = "predictions.csv"
SHOWN_ROWS = 5


class CAReLUCLI(LightningCLI):
    """LightningCLI whose `fit` can also test when it ends (`--test_after_fit true`): the best checkpoint if
    a ModelCheckpoint saved one, else the final weights."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="after fit, run the test loop on the best checkpoint (fit only)",
        )

    def before_instantiate_classes(self) -> None:
        if self.subcommand in EVALUATIONS:
            log_into_checkpoint_run(self.config[self.subcommand], self.subcommand)

    def before_predict(self) -> None:
        """Without a prediction writer of the user's, write predictions to `<log_dir>/predictions.csv`."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            folder = self.trainer.log_dir or self.trainer.default_root_dir
            self.trainer.callbacks.append(PredictionWriter(Path(folder) / PREDICTIONS_FILE))

    def after_predict(self) -> None:
        for writer in self.trainer.callbacks:
            if isinstance(writer, PredictionWriter):
                rank_zero_info(prediction_summary(writer.output_path(self.trainer), writer.rows, writer.accuracy))

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def build_cli(args: Any = None, run: bool = True, cli_class: type[CAReLUCLI] = CAReLUCLI) -> CAReLUCLI:
    """The `caer` LightningCLI; `args` replaces sys.argv (a list, or a dict/Namespace config). `cli_class` is
    CAReLUCLI or a subclass of it (runner.resolved_config uses one that stops once the arguments are parsed)."""
    return cli_class(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def checkpoint_run(ckpt_path: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """`(root, version)` when `ckpt_path` is `<root>/<version>/checkpoints/<file>`, the layout ModelCheckpoint
    uses under a logger (`lightning_logs/quickstart/version_0/checkpoints/last.ckpt`), else None."""
    if not ckpt_path:  # "best", "last" and the like have no checkpoints/ folder either
        return None
    path = Path(ckpt_path)
    if path.parent.name != "checkpoints" or not path.parent.parent.name:
        return None
    return path.parent.parent.parent, path.parent.parent.name


def log_into_checkpoint_run(config: Any, subcommand: str) -> bool:
    """Point a TensorBoardLogger (the first logger, with no version set) at the run that wrote `ckpt_path`, in a
    sub-folder named after the subcommand: `caer test --ckpt_path <run>/checkpoints/last.ckpt` logs to
    `<run>/test` (next to the training curves, leaving the run's config.yaml and hparams.yaml as they are)
    instead of opening a new version, and ModelCheckpoint restores its state without "The dirpath has changed".
    Returns whether it did."""
    run = checkpoint_run(config.get("ckpt_path"))
    logger = config.get("trainer", {}).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if run is None or not str(getattr(logger, "class_path", "")).endswith(".TensorBoardLogger"):
        return False
    init_args = logger.init_args
    if init_args.get("version") is not None or init_args.get("save_dir") is None:
        return False
    root, version = run
    logger_root = Path(init_args.save_dir) / (init_args.get("name") or "")
    if os.path.realpath(logger_root) != os.path.realpath(root):
        return False
    init_args.version = version
    if init_args.get("sub_dir") is None:
        init_args.sub_dir = subcommand
    return True


def prediction_summary(path: Path, rows: int, accuracy: float | None) -> str:
    """What `caer predict` prints when it is done: where the predictions are, their first rows, and the
    accuracy against the labels when the batches had some."""
    lines = [f"caer predict: {rows} predictions written to {path}"]
    if accuracy is not None:
        lines[0] += f" (accuracy against the batches' labels: {accuracy:.4f})"
    if path.is_file():
        with path.open() as file:
            head = [next(file, "").rstrip("\n") for _ in range(SHOWN_ROWS + 1)]
        shown = [",".join(line.split(",")[:5]) + (",..." if line.count(",") > 4 else "") for line in head if line]
        lines += ["first rows:"] + [f"  {line}" for line in shown]
    return "\n".join(lines)
