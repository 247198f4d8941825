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


@pytest.mark.slow
@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_triton_kernels_match_reference_under_interpreter():
    cases = Path(__file__).with_name("triton_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=cases.parent)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


@pytest.mark.skipif(not AVAILABLE, reason="triton is not installed")
def test_triton_on_cpu_without_the_interpreter_says_what_to_do():
    with pytest.raises(ValueError, match=r"impl='triton' cannot take this input: a CPU tensor runs Triton kernels "
                                         r"only under TRITON_INTERPRET=1.*use impl='auto' or impl='eager'"):
        carelu(torch.randn(2, 3, 4), torch.tensor(0.0), torch.tensor(0.5), impl="triton")


@pytest.mark.parametrize("dtype,capability,reason", [
    (torch.bfloat16, (7, 5), r"bfloat16 needs 8\.0"), (torch.float16, (6, 1), r"Triton needs 7\.0"),
])
def test_gpus_too_old_for_a_kernel_are_named(dtype, capability, reason):
    from caer_lightning.ops.triton import capability_reason

    assert capability_reason(dtype, capability) is not None
    assert __import__("re").search(reason, capability_reason(dtype, capability))
    assert capability_reason(dtype, (8, 0)) is None and capability_reason(torch.float32, (7, 0)) is None
