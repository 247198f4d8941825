"""Both Lightning packages: `lightning.pytorch` (of the `lightning` distribution) and the standalone
`pytorch_lightning`, which `lightning` installs with it and many users still import. A Trainer, a logger or a
callback may come from either; the callback is a Callback of both and checks against the classes of both."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from caer_lightning._compat import LIGHTNING_PACKAGES as PACKAGE_NAMES


def _importable(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


PACKAGES: tuple[ModuleType, ...] = tuple(p for p in map(_importable, PACKAGE_NAMES) if p is not None)


@functools.cache
def classes(dotted: str) -> tuple[type, ...]:
    """The class at `dotted` (e.g. "loggers.TensorBoardLogger") in each package that has it (looked up once)."""
    found = []
    for package in PACKAGES:
        target: Any = package
        for part in dotted.split("."):
            target = getattr(target, part, None)
        if isinstance(target, type):
            found.append(target)
    return tuple(found)


def is_overridden(method: str, pl_module: Any) -> bool:
    """Whether `pl_module`'s class (a LightningModule of either package) defines `method` itself rather than
    inheriting LightningModule's."""
    for base in classes("LightningModule"):
        if isinstance(pl_module, base):
            return getattr(type(pl_module), method, None) is not getattr(base, method, None)
    raise TypeError(f"{type(pl_module).__name__} is not a LightningModule of {' or '.join(PACKAGE_NAMES)}")
