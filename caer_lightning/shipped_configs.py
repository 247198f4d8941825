"""`caer configs`: list the YAML configs that ship with caer_lightning, by name and path.

The repository's `configs/` folder is installed inside the package as `caer_lightning.configs`, so every
`--config` of `caer` also takes a shipped config's name (`--config quickstart`, `--config
cifar100/resnet18_carelu`), and `--config configs/quickstart.yaml` works outside a checkout too.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

PACKAGE = "caer_lightning.configs"
CHECKOUT = Path(__file__).resolve().parent.parent / "configs"  # running from a checkout that is not installed


def config_root() -> Path:
    """The folder holding the shipped configs: the installed `caer_lightning.configs`, else a checkout's `configs/`."""
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        package = None
    for entry in getattr(package, "__path__", []):
        if Path(entry, "quickstart.yaml").is_file():
            return Path(entry)
    if (CHECKOUT / "quickstart.yaml").is_file():
        return CHECKOUT
    raise FileNotFoundError(f"caer_lightning's configs are missing: neither {PACKAGE} nor {CHECKOUT} holds them; "
                            "reinstall caer-lightning")


def available() -> dict[str, Path]:
    """Every shipped config: its name (path under the configs folder, without `.yaml`) -> its file."""
    root = config_root()
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def resolve(config: str) -> str:
    """The file a `--config` value means: an existing file as it is; else the shipped config of that name
    (`quickstart`, `quickstart.yaml`, `configs/quickstart.yaml`); else the value unchanged (the parser then says
    it found no such file)."""
    if Path(config).is_file():
        return config
    name = config.removeprefix("./").removeprefix("configs/").removesuffix(".yaml")
    path = available().get(name)
    return str(path) if path is not None else config


def resolve_arguments(argv: list[str]) -> list[str]:
    """`argv` with the value of every `--config` resolved (`--config X` and `--config=X`)."""
    resolved = list(argv)
    for index, argument in enumerate(resolved):
        if argument == "--config" and index + 1 < len(resolved):
            resolved[index + 1] = resolve(resolved[index + 1])
        elif argument.startswith("--config="):
            resolved[index] = "--config=" + resolve(argument.partition("=")[2])
    return resolved


def listing() -> str:
    """What `caer configs` prints: one line per shipped config, its name and its file."""
    configs = available()
    width = max(map(len, configs)) + 2
    lines = [f"{name:<{width}}{path}" for name, path in configs.items()]
    return "\n".join([*lines, "", "Use a name or a path: caer fit --config quickstart"]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="caer configs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    print(listing(), end="")
