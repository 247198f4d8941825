"""README as a newcomer reads it: its examples run as written with the shipped model, its links point at files
of the repository, and the benchmark it quotes refuses settings that would measure nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from caer_lightning import CAReLU, swap_activations
from caer_lightning.models import TimmClassifier

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_include_example_selects_layers_3_and_4_of_the_shipped_classifier():
    pattern = re.search(r'`include=r"([^"]+)"`', README).group(1)
    model = TimmClassifier("resnet18", num_classes=10, in_chans=1, cifar_stem=True)
    swapped = swap_activations(model, include=pattern)
    assert swapped and all(re.match(r"model\.layer[34]\.", name) for name in swapped)
    assert len(swapped) == 8  # two BasicBlocks per stage, two ReLUs per block
    assert sum(isinstance(m, CAReLU) for m in model.modules()) == 8


def test_relative_links_point_at_files_of_the_repository():
    links = re.findall(r"\]\((?!https?://|#)([^)]+)\)", README)
    assert "docs/spec.md" in links
    assert [link for link in links if not (ROOT / link).exists()] == []
    assert "../shared" not in README  # nothing outside a clone


@pytest.mark.slow
def test_logging_overhead_refuses_to_measure_nothing():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logging_overhead.py"), "--steps", "30"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--steps=30: with --warmup=5 no logging step (every 50) would be measured" in done.stderr
    assert "accepted values: --steps > 45" in done.stderr
