"""Every Triton kernel compiled ahead of time for real GPUs (sm_80, sm_90) on this CPU machine, with the
argument specializations Triton's JIT derives at launch, and the PTX checked for vectorised memory access.

The launches are the dispatcher's own: `triton_kernels.forward`/`backward` run with their kernels replaced by
recorders, so every (kernel, signature, constexprs, attributes) the dispatcher can produce for a case is
compiled exactly as `JITFunction.run` would compile it on a GPU.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles real kernels: not under the interpreter", allow_module_level=True)

from caer_lightning import _compat  # noqa: E402
from caer_lightning.ops import triton_kernels  # noqa: E402

KERNELS = ("_reduce_forward", "_apply_forward", "_reduce_backward", "_apply_backward")
# (input shape, memory format, first reduced dim): B = 1 dense groups, and channels_last per channel (B = C)
LAYOUTS = {
    "contiguous": ((8, 64, 16, 16), torch.contiguous_format, 1),
    "channels_last": ((8, 64, 16, 16), torch.channels_last, 2),
}
CAPABILITIES = (80, 90)


class _Recorder:
    def __init__(self, kernel, launches: list) -> None:
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def _launches(variant: str, dtype: torch.dtype, layout: str) -> list:
    """The kernel launches of one forward and one backward, recorded instead of run."""
    shape, memory_format, first_dim = LAYOUTS[layout]
    launches: list = []
    original = {name: getattr(triton_kernels, name) for name in KERNELS}
    try:
        for name in KERNELS:
            setattr(triton_kernels, name, _Recorder(original[name], launches))
        z = torch.randn(shape).to(dtype).contiguous(memory_format=memory_format)
        group = triton_kernels.group_layout(z, first_dim)
        alpha, beta = torch.tensor(0.1), torch.tensor(0.5)
        _, p, tanh, normaliser = triton_kernels.forward(z, alpha, beta, 2.0, variant, 1e-6, group)
        triton_kernels.backward(torch.empty_like(z), z, p, tanh, normaliser, alpha, 2.0, variant, group)
    finally:
        for name, kernel in original.items():
            setattr(triton_kernels, name, kernel)
    return launches


def _compile(kernel, args, kwargs, capability: int):
    """Compile one launch as the JIT would (Triton's JIT internals, reached through `_compat`); a Triton
    without them skips the test, naming what is missing."""
    try:
        return _compat.compile_launch_for_gpu(kernel, args, kwargs, capability)
    except _compat.MissingPrivateAPI as error:
        pytest.skip(str(error))


CASES = list(itertools.product(("energy", "l1", "count"), ("float32", "float16", "bfloat16"), LAYOUTS))


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("variant,dtype,layout", CASES)
def test_every_kernel_compiles_for_the_gpu(variant, dtype, layout, capability):
    launches = _launches(variant, getattr(torch, dtype), layout)
    assert [k.__name__ for k, _, _ in launches] == list(KERNELS)
    for kernel, args, kwargs in launches:
        compiled = _compile(kernel, args, kwargs, capability)
        assert f".target sm_{capability}" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_elementwise_kernels_load_and_store_vectors(layout, dtype):
    """16-byte accesses (`.v4.b32`, or `.v2.b32` for 4 half elements per thread) in both apply kernels:
    a change that de-vectorises them (e.g. a stride the JIT can no longer prove is 1) fails here."""
    for kernel, args, kwargs in _launches("energy", getattr(torch, dtype), layout):
        if kernel.__name__ not in ("_apply_forward", "_apply_backward"):
            continue
        ptx = _compile(kernel, args, kwargs, 90).asm["ptx"]
        loads = set(re.findall(r"ld\.global(?:\.[a-z]+)*\.(v[24])\.b32", ptx))
        stores = set(re.findall(r"st\.global(?:\.[a-z]+)*\.(v[24])\.b32", ptx))
        assert loads and stores, f"{kernel.__name__} ({layout}, {dtype}): scalar global loads/stores only"
