"""The `caer` command: LightningCLI's fit/validate/test/predict (caer_lightning/lightning_cli.py), models and data
chosen by class_path, `caer ab` (caer_lightning/ab.py), a paired A/B test of ReLU against CAReLU,
`caer stability` (caer_lightning/stability.py), a sweep over seeds that counts diverged runs, and `caer configs`
(caer_lightning/shipped_configs.py), the configs that ship with the package; `--config` takes their names.

`caer`, `caer -h` and `caer --help` list them all; `caer SUBCOMMAND --help` gives one's options."""

from __future__ import annotations

import inspect
import logging
import sys
import warnings

from lightning.pytorch import Trainer

from caer_lightning import ab, shipped_configs, stability
from caer_lightning.lightning_cli import CAReLUCLI, build_cli

__all__ = ["CAReLUCLI", "build_cli", "main"]  # CAReLUCLI, build_cli: from lightning_cli, importable here as before

# subcommands with their own argparse parser: module.main(argv)
SCRIPTS = {"ab": ab, "stability": stability, "configs": shipped_configs}

# What `caer` keeps off its users' screens, each matched narrowly: Lightning's advertisement for its cloud
# products (logged once per Trainer), and torch's deprecation of `LeafSpec`, which Lightning's own
# `utilities/_pytree.py` constructs on every loop (nothing a caer user can change). Anything else is shown.
LIGHTNING_TIP = "💡 Tip:"
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
)
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LIGHTNING_PYTREE = r"(lightning\.pytorch|pytorch_lightning)\.utilities\._pytree"


class _WithoutTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_lightning_notices() -> None:
    """Hide Lightning's "💡 Tip:" banners and the LeafSpec deprecation torch raises inside Lightning."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _WithoutTips) for f in logger.filters):
            logger.addFilter(_WithoutTips())
    warnings.filterwarnings("ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning, module=LIGHTNING_PYTREE)


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line ("`caer ab`: " and the like left off)."""
    paragraph = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    if paragraph.startswith("`caer "):
        paragraph = paragraph.partition(": ")[2]
    sentence = paragraph.split(". ")[0].rstrip(".")
    return sentence[:1].upper() + sentence[1:] + "." if sentence else ""


def subcommands() -> dict[str, str]:
    """Every subcommand of `caer` with a one-line description: LightningCLI's (from the Trainer method each runs),
    then ab and stability (from their module docstrings)."""
    lightning = {name: first_sentence(getattr(Trainer, name).__doc__) for name in CAReLUCLI.subcommands()}
    return {**lightning, **{name: first_sentence(module.__doc__) for name, module in SCRIPTS.items()}}


def help_text() -> str:
    """What `caer --help` prints: every subcommand with its one-line description, and how to get one's options."""
    names = subcommands()
    width = max(map(len, names)) + 2
    lightning = [name for name in names if name not in SCRIPTS]
    return "\n".join([
        "usage: caer SUBCOMMAND [options]",
        "",
        "CAReLU for PyTorch Lightning: train, evaluate and compare models from a YAML config.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{description}" for name, description in names.items()),
        "",
        f"{', '.join(lightning[:-1])} and {lightning[-1]} are LightningCLI's: model, data and callbacks chosen by",
        "class_path in a YAML config, e.g. `caer fit --config configs/quickstart.yaml`.",
        "Options of one subcommand: `caer SUBCOMMAND --help`, e.g. `caer fit --help`, `caer ab --help`.",
    ]) + "\n"


def main() -> None:
    """Entry point of the `caer` console script: `caer ab ...` runs an A/B test, `caer stability ...` a
    stability sweep, `caer`, `caer -h`, `caer --help` list the subcommands, anything else goes to LightningCLI."""
    argv = shipped_configs.resolve_arguments(sys.argv[1:])  # --config quickstart: the shipped config
    if not argv:
        sys.stderr.write(help_text() + "caer: error: a subcommand is required\n")
        sys.exit(2)
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(help_text())
        return
    if argv[0] in SCRIPTS:
        SCRIPTS[argv[0]].main(argv[1:])
    else:
        quiet_lightning_notices()
        sys.argv[1:] = argv  # LightningCLI reads sys.argv (given args too, it warns)
        build_cli()


if __name__ == "__main__":
    main()
