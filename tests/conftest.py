"""Shared test setup: every test reads sources and compiles rewrites afresh (nothing cached by an earlier test
can hide a fault in those steps)."""

from __future__ import annotations

import pytest

from caer_lightning.callsites.rewrite import clear_caches


@pytest.fixture(autouse=True)
def fresh_call_site_caches():
    clear_caches()
    yield
