"""benchmarks/activation_memory.py: the saved bytes it reports for ResNet-18, against sizes worked out by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from caer_lightning import _compat

_SPEC = importlib.util.spec_from_file_location(
    "activation_memory", Path(__file__).parents[1] / "benchmarks" / "activation_memory.py")
activation_memory = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(activation_memory)

# ResNet-18 with the CIFAR stem on 32×32: the stem's activation and 4 per stage (2 blocks × 2), elements per
# sample: 64×32×32 (5 of them), 128×16×16, 256×8×8, 512×4×4 (4 each)
ACTIVATIONS = 17
INPUT_ELEMENTS = 5 * 64 * 32 * 32 + 4 * 128 * 16 * 16 + 4 * 256 * 8 * 8 + 4 * 512 * 4 * 4


@pytest.mark.slow
@pytest.mark.skipif(_compat.saved_tensor_hooks_active() is None, reason="before torch 2.8 CAReLU keeps its input")
def test_resnet18_saves_relus_bytes_plus_group_scalars(tmp_path, capsys, monkeypatch):
    batch = 2
    monkeypatch.setattr(sys, "argv", ["activation_memory.py", "--models", "resnet18", "--iters", "0",
                                      "--batch-size", str(batch), "--json", str(tmp_path / "memory.json")])
    activation_memory.main()
    rows = json.loads((tmp_path / "memory.json").read_text())["rows"]
    for dtype, itemsize in (("float32", 4), ("bfloat16", 2)):
        saved = {row["arm"].split(" (")[0].split(",")[0] + ("+z" if "kept" in row["arm"] else ""): row["saved_bytes"]
                 for row in rows if row["dtype"] == dtype}
        # per CAReLU: p, tanh, normaliser (float32, one per sample) and α, β (one float32 each)
        assert saved["CAReLU"] - saved["ReLU"] == ACTIVATIONS * (3 * batch * 4 + 2 * 4), dtype
        assert saved["CAReLU+z"] - saved["CAReLU"] == INPUT_ELEMENTS * batch * itemsize, dtype
    printed = capsys.readouterr().out
    assert "resnet18     float32   CAReLU                                " in printed and " 1.000 " in printed
