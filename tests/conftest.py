"""Shared test setup: every test reads sources and compiles rewrites afresh (nothing cached by an earlier test
can hide a fault in those steps), and sees a command line of its own (pytest's options are not the CLI's).
LightningCLI reads sys.argv when given no args and warns when given both."""

from __future__ import annotations

import sys

import pytest

from caer_lightning.callsites.rewrite import clear_caches


@pytest.fixture(autouse=True)
def fresh_call_site_caches():
    clear_caches()
    yield


@pytest.fixture(autouse=True)
def command_line_of_its_own(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
