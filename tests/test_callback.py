"""CAReLUCallback: optimizer groups, every built-in LR scheduler, LightningCLI-built optimizers, warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim import lr_scheduler as sched

from caer_lightning import CAReLU, CAReLUCallback
from helpers import TinyNet, loader, trainer


class GroupRecorder(Callback):
    """Records, at every training batch, each param group's lr (by name or index) and its layout at start."""

    def __init__(self) -> None:
        self.lrs: list[dict] = []
        self.groups: list[dict] = []

    def on_train_start(self, trainer, pl_module):
        self.groups = [dict(g) for g in trainer.optimizers[0].param_groups]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.lrs.append({g.get("name", i): float(g["lr"]) for i, g in enumerate(groups)})


def carelu_params(model):
    return [p for m in model.modules() if isinstance(m, CAReLU) for p in (m.alpha, m.beta)]


def fit(model, callbacks, **kwargs):
    recorder = GroupRecorder()
    trainer(callbacks=[*callbacks, recorder], **{"max_steps": 2, **kwargs}).fit(model, loader())
    return recorder


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("lr,lr_scale,expected", [(None, 1.0, 0.01), (None, 3.0, 0.03), (0.5, 1.0, 0.5)])
def test_own_group_without_weight_decay(optimizer, lr, lr_scale, expected):
    factory = {
        "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4),
        "adamw": lambda params: torch.optim.AdamW(params, lr=0.01),  # default weight_decay 0.01
    }[optimizer]
    model = TinyNet(optimizer_factory=factory)
    recorder = fit(model, [CAReLUCallback(lr=lr, lr_scale=lr_scale)])
    params = carelu_params(model)
    assert len(params) == 4
    holders = [[g for g in recorder.groups if any(q is p for q in g["params"])] for p in params]
    assert all(len(h) == 1 and h[0].get("name") == "carelu" for h in holders), "each α, β in exactly one group"
    group = holders[0][0]
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 4
    assert group["lr"] == pytest.approx(expected)
    assert recorder.groups[0]["weight_decay"] > 0 and recorder.groups[0]["lr"] == pytest.approx(0.01)
    assert not any(q is p for p in params for q in recorder.groups[0]["params"])
    if optimizer == "adamw":
        assert group["betas"] == recorder.groups[0]["betas"]
    else:
        assert group["momentum"] == 0.9
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), "α, β must train"


SCHEDULERS = {
    "StepLR": lambda o: sched.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[2, 4], gamma=0.3),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=12),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda step: 1.0 / (1 + step)),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda step: 0.9),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=4),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=12, power=2.0),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=10),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=0, threshold=10.0, factor=0.5),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, start_factor=0.1, total_iters=3), sched.CosineAnnealingLR(o, T_max=12)], milestones=[3]
    ),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.ConstantLR(o, factor=0.5, total_iters=3), sched.ExponentialLR(o, gamma=0.8)]
    ),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_builtin_scheduler_keeps_the_group_in_step(name):
    epoch_based = name == "ReduceLROnPlateau"
    model = TinyNet(scheduler_factory=SCHEDULERS[name], scheduler_interval="epoch" if epoch_based else "step")
    recorder = fit(model, [CAReLUCallback(lr_scale=0.25)], max_steps=-1 if epoch_based else 9, max_epochs=4)
    group0 = [step[0] for step in recorder.lrs]
    ratios = [step["carelu"] / step[0] for step in recorder.lrs]
    assert len(set(group0)) > 1, f"{name} never changed group 0's lr: the test would prove nothing"
    assert ratios == pytest.approx([0.25] * len(ratios), rel=1e-6), f"{name}: ratios {ratios}"


class PolyWarmup(sched.LRScheduler):
    """A user-defined scheduler (not a built-in class)."""

    def get_lr(self):
        return [base * 0.5 ** self.last_epoch for base in self.base_lrs]


def test_user_defined_scheduler_keeps_the_ratio():
    model = TinyNet(scheduler_factory=PolyWarmup)
    recorder = fit(model, [CAReLUCallback(lr_scale=0.5)], max_steps=4)
    assert len({s[0] for s in recorder.lrs}) == 4
    assert [s["carelu"] / s[0] for s in recorder.lrs] == pytest.approx([0.5] * 4)


def test_optimizer_built_by_lightning_cli_before_the_swap(tmp_path):
    """LightningCLI instantiates --optimizer from model.parameters() before any hook: α, β are in no group."""
    callback = CAReLUCallback(lr_scale=2.0)
    recorder = GroupRecorder()
    with pytest.warns(UserWarning, match="TinyNet.configure_optimizers` will be overridden by `LightningCLI"), \
            warnings.catch_warnings():  # inside pytest.warns, pyproject's filter of Lightning's jsonargparse calls is lost
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
        cli = LightningCLI(
            TinyNet, run=False, save_config_callback=None,
            trainer_defaults=dict(callbacks=[callback, recorder], max_epochs=3, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, accelerator="cpu", default_root_dir=str(tmp_path)),
            args=["--optimizer=SGD", "--optimizer.lr=0.05", "--lr_scheduler=StepLR", "--lr_scheduler.step_size=1",
                  "--lr_scheduler.gamma=0.5", "--seed_everything=0"],
        )
    cli.trainer.fit(cli.model, loader())
    group = next(g for g in recorder.groups if g.get("name") == "carelu")
    assert {id(p) for p in group["params"]} == {id(p) for p in carelu_params(cli.model)}
    assert group["lr"] == pytest.approx(0.1) and group["weight_decay"] == 0.0
    assert [s["carelu"] / s[0] for s in recorder.lrs] == pytest.approx([2.0] * 12)
    assert len({s[0] for s in recorder.lrs}) >= 3  # LightningCLI steps its scheduler once per epoch


class ReusedReLU(TinyNet):
    """Calls one ReLU module at two places, as torchvision's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        del self.net
        self.conv1, self.conv2, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.stem_act, self.head = nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(self.stem_act(x)))))
        return self.head(x.mean((2, 3)))


def test_module_called_at_two_sites_gets_a_module_per_site():
    model, callback = ReusedReLU(), CAReLUCallback()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called from several places")
        fit(model, [callback])
    assert callback.swapped == ["relu", "stem_act", "relu_1"]


class SuperReusedReLU(ReusedReLU):
    """The same, reached through super(): the base's own code runs, so its two calls cannot be split."""

    def forward(self, x):
        if x.sum() > 1e9:
            return self.head(x.mean((2, 3)))
        return super().forward(x)


def test_module_called_at_two_sites_is_reported_when_it_cannot_be_split():
    with pytest.warns(UserWarning) as caught:
        fit(SuperReusedReLU(), [CAReLUCallback()])
    messages = [str(w.message) for w in caught]
    assert any("ReusedReLU.forward: it is reached through super()" in m for m in messages), messages
    line = ReusedReLU.forward.__code__.co_firstlineno + 1
    probe = [m for m in messages if "called from several places" in m]
    assert len(probe) == 1 and f"relu from test_callback.py:{line} in ReusedReLU.forward" in probe[0]
    assert "stem_act" not in probe[0], "a module called from one place is not reported"


class TwoViews(TinyNet):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + F.cross_entropy(self(x.flip(-1)), y)


class RareBranch(TinyNet):
    """A CAReLU in a branch the first step never runs, and one called in a loop: neither is shared."""

    def __init__(self) -> None:
        super().__init__()
        self.rare = nn.ReLU()
        self.rare_steps = False

    def forward(self, x):
        for _ in range(3):
            x = F.relu(x - 0.1)
        if self.rare_steps:
            x = self.rare(x)
        return self.net(x)


def test_a_branch_not_run_and_a_loop_are_not_reported():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called from several places")
        callback = CAReLUCallback()
        fit(RareBranch(), [callback])
    assert callback.swapped == ["net.2", "net.5", "rare", "relu"]


def test_two_forwards_per_step_are_not_reported():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called from several places")
        fit(TwoViews(), [CAReLUCallback()])


@pytest.mark.parametrize("kwargs,argument", [
    (dict(variant="softmax"), "variant"), (dict(reduction="batch"), "reduction"), (dict(K=0), "K"),
    (dict(K=-2.0), "K"), (dict(eps=-1.0), "eps"), (dict(targets=("torch.nn.Relu",)), "targets"),
    (dict(targets=("nosuchpackage.Act",)), "targets"), (dict(lr=0.0), "lr"), (dict(lr_scale=-1.0), "lr_scale"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(log_every_n_steps=-1), "log_every_n_steps"), (dict(log_every_n_steps=2.5), "log_every_n_steps"),
    (dict(include="(unclosed"), "include"), (dict(K=0.5), "K"),
    (dict(lr=float("inf")), "lr"), (dict(lr_scale=float("inf")), "lr_scale"), (dict(lr=float("nan")), "lr"),
    (dict(weight_decay=float("nan")), "weight_decay"), (dict(weight_decay=float("inf")), "weight_decay"),
    (dict(alpha_init=float("nan")), "alpha_init"), (dict(beta_init=float("inf")), "beta_init"),
    (dict(K=float("inf")), "K"),
])
def test_invalid_arguments_raise_at_construction(kwargs, argument):
    with pytest.raises(ValueError, match=rf"{argument}.*(accepted values|beta_init)"):
        CAReLUCallback(**kwargs)


class CountingNet(TinyNet):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingNet.steps += 1
        return super().training_step(batch, batch_idx)


def test_swap_that_matches_nothing_fails_before_training():
    with pytest.raises(MisconfigurationException, match=r"matched no module: targets=.*GELU.*ReLU \(e\.g\. 'net\.2'\)"):
        fit(CountingNet(), [CAReLUCallback(targets=("torch.nn.GELU",))])
    assert CountingNet.steps == 0


def test_swapped_names_and_state_dict():
    model = TinyNet()
    callback = CAReLUCallback(variant="l1", include=r"net\.5")
    fit(model, [callback])
    assert callback.swapped == ["net.5"]
    state = callback.state_dict()
    assert state["swapped"] == ["net.5"] and state["config"]["variant"] == "l1"
    assert state["config"]["targets"] == ["torch.nn.modules.activation.ReLU"]
