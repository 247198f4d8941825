"""Warnings said by the first process only, read from torch.distributed or the launcher's environment."""

from __future__ import annotations

import inspect
import warnings

import pytest

from caer_lightning.rank_zero import global_rank, rank_zero_warn

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@pytest.fixture
def no_rank(monkeypatch):
    for variable in RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_rank_from_each_launcher_variable(no_rank, variable):
    assert global_rank() == 0
    no_rank.setenv(variable, "3")
    assert global_rank() == 3


def test_the_first_variable_wins_and_junk_is_skipped(no_rank):
    no_rank.setenv("LOCAL_RANK", "1")
    no_rank.setenv("RANK", "5")
    assert global_rank() == 5
    no_rank.setenv("RANK", "x")
    assert global_rank() == 1


def library_function() -> None:
    rank_zero_warn("said")


def test_only_rank_zero_warns(no_rank):
    with pytest.warns(UserWarning, match="^said$") as caught:
        line = inspect.currentframe().f_lineno + 1
        library_function()
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)  # like warnings.warn(stacklevel=2)
    with pytest.warns(DeprecationWarning, match="^old$"):
        rank_zero_warn("old", DeprecationWarning)
    no_rank.setenv("RANK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_warn("not said")
