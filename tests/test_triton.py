"""Runs the Triton kernel cases (tests/triton_cases.py) on CPU under TRITON_INTERPRET=1, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from caer_lightning.functional import carelu
from caer_lightning.ops.triton import AVAILABLE


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_triton_kernels_match_reference_under_interpreter():
    cases = Path(__file__).with_name("triton_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=cases.parent)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_triton_refuses_what_it_cannot_take_without_a_copy():
    z = torch.randn(4, 6, 5, 5).transpose(2, 3)  # neither contiguous nor channels_last
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: (layout|triton)"):
        carelu(z, torch.tensor(0.0), torch.tensor(0.5), reduction="channel", impl="triton")
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: .*float64"):
        carelu(torch.randn(2, 3, 4, dtype=torch.float64), torch.tensor(0.0), torch.tensor(0.5), impl="triton")
