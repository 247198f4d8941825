"""torch.compile(fullgraph=True) traces a CNN with CAReLU (the registered custom op) without graph breaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from caer_lightning import CAReLU
from caer_lightning.activation import STATISTICS


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), CAReLU(alpha_init=0.5),
        nn.Conv2d(8, 8, 3, padding=1), CAReLU(variant="l1", reduction="channel", alpha_init=-1.0),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


@pytest.mark.slow
def test_compiled_model_matches_eager_in_outputs_and_gradients():
    eager, compiled = small_cnn(), small_cnn()
    run = torch.compile(compiled, fullgraph=True)  # fullgraph: any graph break is an error
    x = torch.randn(4, 3, 8, 8)
    for model, fn in ((eager, eager), (compiled, run)):
        fn(x).square().sum().backward()
    torch.testing.assert_close(run(x), eager(x))
    for (name, expected), (_, got) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(got.grad, expected.grad, msg=name)
    assert compiled[2].alpha.grad.abs() > 0 and compiled[4].beta.grad.abs() > 0

    for module in compiled.modules():  # the dashboards' statistics also trace in one graph
        if isinstance(module, CAReLU):
            module.track_statistics = True
    run(x)
    assert compiled[2].pop_statistics()[STATISTICS.index("groups")].item() == 4  # one group per sample


@pytest.mark.slow
def test_layers_compiled_one_after_another_with_other_K_and_eps_trace_in_one_graph():
    """Dynamo passes a number that changed between compiles of the same code (K, eps) as a symbolic float: the
    argument checks must read it without a graph break (math.isfinite could not), and the values must be used."""
    x = torch.randn(4, 3, 5, 5)
    for K, eps in ((2.0, 1e-6), (3.0, 1e-3), (4.0, 1e-2), (1.5, 0.5)):
        layer = CAReLU(K=K, eps=eps, alpha_init=0.7, beta_init=-0.2)
        torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x), msg=f"K={K}, eps={eps}")
