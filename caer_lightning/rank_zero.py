"""Warnings said once, by the first process of a distributed run only (torch alone, no Lightning)."""

from __future__ import annotations

import os
import warnings

import torch

# The environment variables launchers set to a process's global rank (torchrun, SLURM, LSF/jsrun).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank: torch.distributed's when it is initialized, else the launcher's environment, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    for variable in _RANK_VARIABLES:
        value = os.environ.get(variable)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
    """`warnings.warn(message)` on rank zero only."""
    if global_rank() == 0:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
