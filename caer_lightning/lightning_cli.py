"""The LightningCLI behind `caer fit`, `caer validate`, `caer test` and `caer predict`: models and data chosen by
class_path, and `fit --test_after_fit`. It imports no other part of the `caer` command (cli.py, runner.py, ab.py,
stability.py import it)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class CAReLUCLI(LightningCLI):
    """LightningCLI whose `fit` can also test when it ends (`--test_after_fit true`): the best checkpoint if
    a ModelCheckpoint saved one, else the final weights."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit", type=bool, default=False,
            help="after fit, run the test loop on the best checkpoint (fit only)",
        )

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
