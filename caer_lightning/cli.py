"""The `caer` command: LightningCLI with fit/validate/test/predict, models and data chosen by class_path,
`caer ab` (caer_lightning/ab.py), a paired A/B test of ReLU against CAReLU, and `caer stability`
(caer_lightning/stability.py), a sweep over seeds that counts diverged runs."""

from __future__ import annotations

import sys
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


def build_cli(args: Any = None, run: bool = True) -> CAReLUCLI:
    """The `caer` LightningCLI; `args` replaces sys.argv (a list, or a dict/Namespace config)."""
    return CAReLUCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Entry point of the `caer` console script: `caer ab ...` runs an A/B test, `caer stability ...` a
    stability sweep, anything else LightningCLI."""
    if sys.argv[1:2] == ["ab"]:
        from caer_lightning import ab

        ab.main(sys.argv[2:])
    elif sys.argv[1:2] == ["stability"]:
        from caer_lightning import stability

        stability.main(sys.argv[2:])
    else:
        build_cli()


if __name__ == "__main__":
    main()
