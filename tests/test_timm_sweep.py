"""A fast subset of benchmarks/timm_sweep.py (the whole sweep, every timm family, is a script): models nobody
here wrote, whose forwards have optional arguments, early returns, branches, loops over lists and tuples."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("timm_sweep", Path(__file__).parents[1] / "benchmarks" / "timm_sweep.py")
timm_sweep = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(timm_sweep)


@pytest.mark.parametrize("name,relu_sites,sites", [
    ("dla46x_c", 45, 45),  # DlaBasic/DlaBottleneck.forward(x, shortcut=None, children=None)
    ("mobileone_s1", 43, 43),  # self.act behind an early return (re-parameterised path) and after it: one layer
    ("repvgg_a0", 22, 22),
    ("hrnet_w18_small", 69, 69),  # fuse layers: loops over branches, lists of tensors
    ("dpn48b", 52, 54),  # tuples through the blocks
    ("densenet121", 121, 121),
    ("mobilevitv2_050", 18, 43),  # F.relu in its attention's own methods, GELU/SiLU modules
    ("gmixer_12_224", 0, 24),  # GluMlp: self.act in both arms of `... if self.gate_last else ...`
])
@pytest.mark.slow
def test_timm_models_compute_exactly_what_they_did(name, relu_sites, sites):
    record = timm_sweep.check(name, image_size=None if name.endswith("224") else 64)
    assert record["outcome"] == ("equal" if relu_sites else "other"), record
    assert record["relu_sites"] == relu_sites and record["sites"] == sites
    assert record["bad_gradients"] == [] and not record.get("warnings")


def test_families_are_name_prefixes():
    assert [timm_sweep.family(n) for n in ("resnet18", "resnetv2_50", "vit_tiny_patch16_224", "dla34")] == [
        "resnet", "resnetv", "vit", "dla"]
