"""`carelu_param_groups`: the callback's optimizer policy in `configure_optimizers`, under Lightning Fabric and in a
plain PyTorch loop; and `impl` on CAReLU, the callback and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn

from caer_lightning import CAReLU, CAReLUCallback, carelu_param_groups, swap_activations
from caer_lightning.lr_policy import ADAPTIVE_LR_SCALE, SGD_LR_SCALE
from helpers import TinyNet, loader, synthetic_dataset, trainer


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    swap_activations(model)
    return model


def carelu_ids(model: nn.Module) -> list[int]:
    return [id(p) for m in model.modules() if isinstance(m, CAReLU) for p in (m.alpha, m.beta)]


@pytest.mark.parametrize("optimizer,scale", [(torch.optim.SGD, SGD_LR_SCALE), (torch.optim.AdamW, ADAPTIVE_LR_SCALE),
                                             (torch.optim.RMSprop, ADAPTIVE_LR_SCALE)])
def test_groups_follow_the_policy_by_optimizer_family(optimizer, scale):
    model = small_model()
    groups = carelu_param_groups(model, optimizer, lr=0.2)
    assert len(groups) == 2 and "lr" not in groups[0] and "weight_decay" not in groups[0]  # the optimizer's own
    assert groups[1]["name"] == "carelu" and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] == pytest.approx(scale * 0.2)
    assert [id(p) for p in groups[1]["params"]] == carelu_ids(model)
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters()) and len(set(every)) == len(every)
    built = optimizer(groups, lr=0.2, weight_decay=0.01)
    assert built.param_groups[0]["weight_decay"] == 0.01 and built.param_groups[1]["weight_decay"] == 0.0


def test_the_lr_rule_in_words():
    from caer_lightning.lr_policy import lr_rule

    assert lr_rule(torch.optim.SGD, 0.01, None) == "lr=0.01"
    assert lr_rule(torch.optim.SGD, None, 0.5) == "lr_scale=0.5"
    assert lr_rule(torch.optim.SGD, None, None) == f"lr_scale={SGD_LR_SCALE:g}, the default for SGD"
    adam = torch.optim.Adam([nn.Parameter(torch.ones(1))])
    assert lr_rule(adam, None, None) == f"lr_scale={ADAPTIVE_LR_SCALE:g}, the default for Adam"


def test_an_optimizer_that_takes_betas_counts_as_adaptive():
    class Lion(torch.optim.Optimizer):  # timm's Lion, AdaBelief, Lamb: Adam's betas, no torch.optim base class
        def __init__(self, params, lr=1e-4, betas=(0.9, 0.99)):
            super().__init__(params, dict(lr=lr, betas=betas))

    assert carelu_param_groups(small_model(), Lion, lr=1e-3)[1]["lr"] == pytest.approx(ADAPTIVE_LR_SCALE * 1e-3)


def test_explicit_lr_scale_lr_and_weight_decay_win():
    model = small_model()
    assert carelu_param_groups(model, torch.optim.SGD, 0.1, lr_scale=0.5)[1]["lr"] == pytest.approx(0.05)
    group = carelu_param_groups(model, torch.optim.SGD, 0.1, lr_scale=0.5, carelu_lr=0.003, weight_decay=1e-4,
                                name="act")[1]
    assert (group["lr"], group["weight_decay"], group["name"]) == (0.003, 1e-4, "act")


@pytest.mark.parametrize("kwargs,argument", [
    (dict(optimizer=torch.optim.SGD, lr=0.0), "lr=0.0"),
    (dict(optimizer=torch.optim.SGD, lr=float("nan")), "lr=nan"),
    (dict(optimizer=torch.optim.SGD, lr=0.1, lr_scale=-1), "lr_scale=-1"),
    (dict(optimizer=torch.optim.SGD, lr=0.1, carelu_lr=True), "carelu_lr=True"),
    (dict(optimizer=torch.optim.SGD, lr=0.1, weight_decay=-0.1), "weight_decay=-0.1"),
    (dict(optimizer="SGD", lr=0.1), "optimizer='SGD'"),
])
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument.replace('(', '.').replace(')', '.')} is not supported"):
        carelu_param_groups(small_model(), **kwargs)


def test_a_model_without_carelu_is_refused():
    with pytest.raises(ValueError, match=r"^model \(Sequential\) has no CAReLU layer: swap its activations first"):
        carelu_param_groups(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.optim.SGD, lr=0.1)


class GroupsInConfigureOptimizers(TinyNet):
    def configure_optimizers(self):
        return torch.optim.SGD(carelu_param_groups(self, torch.optim.SGD, lr=0.1), lr=0.1, momentum=0.9,
                               weight_decay=1e-3)


def test_in_configure_optimizers_with_the_callback():
    """The callback swaps at setup, so configure_optimizers sees CAReLU layers; the callback then finds the group
    the helper made and keeps it (one carelu group, the same lr)."""
    torch.manual_seed(0)
    model = GroupsInConfigureOptimizers()
    fit = trainer(callbacks=[CAReLUCallback()], max_steps=3)
    fit.fit(model, loader())
    groups = fit.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "carelu"]
    assert groups[1]["lr"] == pytest.approx(SGD_LR_SCALE * 0.1) and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 1e-3
    assert [id(p) for p in groups[1]["params"]] == carelu_ids(model)
    assert any(m.alpha.item() != 0.0 for m in model.modules() if isinstance(m, CAReLU))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, step) -> None:
    data = synthetic_dataset(32)
    for start in range(0, 32, 8):
        x, y = data.tensors[0][start:start + 8], data.tensors[1][start:start + 8]
        optimizer.zero_grad()
        step(F.cross_entropy(model(x), y))
        optimizer.step()


def test_plain_pytorch_loop():
    model = small_model()
    before = [(m.alpha.item(), m.beta.item()) for m in model.modules() if isinstance(m, CAReLU)]
    optimizer = torch.optim.SGD(carelu_param_groups(model, torch.optim.SGD, lr=0.1), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    _train(model, optimizer, lambda loss: loss.backward())
    scheduler.step()
    after = [(m.alpha.item(), m.beta.item()) for m in model.modules() if isinstance(m, CAReLU)]
    assert all(a != b for a, b in zip(before, after)), "every α, β must have trained"
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, SGD_LR_SCALE * 0.05])  # same ratio


def test_lightning_fabric_on_cpu():
    fabric = Fabric(accelerator="cpu", devices=1)
    model = small_model()
    optimizer = torch.optim.AdamW(carelu_param_groups(model, torch.optim.AdamW, lr=1e-3), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    before = [(m.alpha.item(), m.beta.item()) for m in model.modules() if isinstance(m, CAReLU)]
    _train(model, optimizer, fabric.backward)
    after = [(m.alpha.item(), m.beta.item()) for m in model.modules() if isinstance(m, CAReLU)]
    assert all(a != b for a, b in zip(before, after))
    group = optimizer.param_groups[1]
    assert group["name"] == "carelu" and group["lr"] == pytest.approx(ADAPTIVE_LR_SCALE * 1e-3)
    assert group["weight_decay"] == 0.0 and optimizer.param_groups[0]["weight_decay"] == 0.01  # AdamW's default


def test_impl_on_the_module_and_the_callback():
    assert CAReLU(impl="eager").impl == "eager"
    with pytest.raises(ValueError, match="^impl='fast' is not supported; accepted values: auto, eager, triton"):
        CAReLU(impl="fast")
    with pytest.raises(ValueError, match="^impl='fast' is not supported"):
        CAReLUCallback(impl="fast")
    model = TinyNet()
    trainer(callbacks=[CAReLUCallback(impl="reference")], max_steps=1).fit(model, loader())
    assert {m.impl for m in model.modules() if isinstance(m, CAReLU)} == {"reference"}
    reference, eager = CAReLU(impl="reference"), CAReLU(impl="eager")
    z = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(reference(z), eager(z))  # speed, not results


def test_impl_from_the_cli(tmp_path):
    from caer_lightning.cli import build_cli

    config = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    (tmp_path / "impl.yaml").write_text(
        "trainer:\n  logger: false\n  callbacks:\n    - class_path: caer_lightning.CAReLUCallback\n"
        "      init_args:\n        impl: eager\n"
    )
    cli = build_cli(["--config", str(config), "--config", str(tmp_path / "impl.yaml")], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, CAReLUCallback)]
    assert callback.layer_swap.impl == "eager"
