"""Guards: a saturated layer gets one warning naming it; non-finite α or β stop the run, naming the layer and
the step, before a checkpoint that holds them is written. Also: the default lr_scale per optimizer family."""

from __future__ import annotations

import csv
import math
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from caer_lightning import CAReLU, CAReLUCallback
from caer_lightning.activation import STATISTICS
from caer_lightning.functional import competition
from caer_lightning.guards import (
    SATURATION_LIMIT, NonFiniteCAReLUError, check_finite, saturated_layers, saturation_message,
)
from caer_lightning.optim import ADAPTIVE_LR_SCALE, SGD_LR_SCALE, default_lr_scale
from helpers import TinyNet, loader, trainer


def saturation_warnings(records) -> list[str]:
    return [str(r.message) for r in records if "saturated" in str(r.message)]


def fit_recording_warnings(callback, **kwargs):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer(callbacks=[callback], **{"max_steps": 8, "max_epochs": 10, **kwargs}).fit(TinyNet(), loader())
    return saturation_warnings(records)


def test_saturated_layers_are_named_once():
    # |α·p + β| = 3.2 > 3 at every p: saturated from the first logged step on; logged at steps 0, 2, 4, 6.
    callback = CAReLUCallback(alpha_init=0.0, beta_init=SATURATION_LIMIT + 0.2, log_every_n_steps=2, lr=1e-6)
    (message,) = fit_recording_warnings(callback)  # no logger: the guards run all the same
    assert "2 layer(s) saturated by training step 0" in message
    assert "net.2 (mean |α·p+β| = 3.20, scale +1.99)" in message and "net.5" in message
    assert "lr_scale=" in message and "exclude=" in message


def test_unsaturated_layers_are_not_named():
    callback = CAReLUCallback(alpha_init=0.0, beta_init=SATURATION_LIMIT - 0.2, log_every_n_steps=2, lr=1e-6)
    assert fit_recording_warnings(callback) == []


def test_a_layer_that_saturates_during_the_run_is_named_at_the_next_logged_step_only():
    class Saturate(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:  # after the 3rd optimizer step; logged steps are 0, 2, 4, 6
                with torch.no_grad():
                    pl_module.get_submodule("net.5").beta.fill_(4.0)

    callback = CAReLUCallback(log_every_n_steps=2, lr=1e-6)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer(callbacks=[Saturate(), callback], max_steps=8, max_epochs=10).fit(TinyNet(), loader())
    (message,) = saturation_warnings(records)
    assert "1 layer(s) saturated by training step 4: net.5 (mean |α·p+β| = 4.00" in message
    assert "net.2" not in message


class FirstInputs(Callback):
    """Keeps the input each CAReLU saw in the first training step."""

    def __init__(self) -> None:
        self.inputs: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module):
        for name, module in pl_module.named_modules():
            if isinstance(module, CAReLU):
                module.register_forward_hook(
                    lambda mod, args, out, name=name: self.inputs.setdefault(name, args[0].detach().clone()))


def test_logged_saturation_is_the_mean_of_abs_alpha_p_plus_beta(tmp_path):
    """The value logged at step 0 against one recomputed from the inputs of that step and the initial α, β."""
    alpha, beta = -2.0, 0.4
    inputs = FirstInputs()
    logger = CSVLogger(tmp_path)
    callback = CAReLUCallback(alpha_init=alpha, beta_init=beta, log_every_n_steps=10)
    trainer(callbacks=[callback, inputs], logger=logger, max_steps=1, log_every_n_steps=1).fit(TinyNet(), loader())
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r.get("carelu/net.2/saturation")]
    for name in ("net.2", "net.5"):
        p = competition(inputs.inputs[name])
        expected = (alpha * p + beta).abs().mean().item()
        assert float(row[f"carelu/{name}/saturation"]) == pytest.approx(expected, rel=1e-5)
        assert float(row[f"carelu/{name}/energy_ratio"]) == pytest.approx(p.mean().item(), rel=1e-5)


def test_non_finite_parameters_stop_before_the_checkpoint_is_written(tmp_path):
    class Poison(Callback):
        """Makes one layer's α NaN at the end of step index 2 (after 3 optimizer steps)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.get_submodule("net.5").alpha.fill_(math.nan)

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    run = trainer(callbacks=[Poison(), CAReLUCallback(log_every_n_steps=50), checkpoints], max_steps=8,
                  max_epochs=10, enable_checkpointing=True)
    with pytest.raises(NonFiniteCAReLUError, match=r"by training step 3 \(found when saving a checkpoint\) in "
                                                   r"net\.5 \(alpha=nan, beta=0\.5\d+\)"):
        run.fit(TinyNet(), loader())
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"], "the step-3 checkpoint must not be written"
    for path in tmp_path.glob("*.ckpt"):
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for k, v in state.items() if k.endswith(("alpha", "beta")))


def test_non_finite_parameters_are_caught_on_a_logged_step_without_checkpoints():
    class Poison(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 1:
                pl_module.get_submodule("net.2").beta.grad.fill_(math.inf)

    steps = []

    class Count(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            steps.append(trainer.global_step)

    run = trainer(callbacks=[Poison(), CAReLUCallback(log_every_n_steps=2), Count()], max_steps=8, max_epochs=10)
    with pytest.raises(NonFiniteCAReLUError, match=r"by training step 2 \(found on a logged step\) in net\.2 "
                                                   r"\(alpha=[-0-9.e]+, beta=-?inf\)"):
        run.fit(TinyNet(), loader())
    assert steps == [0, 1, 2], "the run stops at the first logged step after the parameters broke"


@pytest.mark.parametrize("factory,expected", [
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), SGD_LR_SCALE),
    (lambda p: torch.optim.SGD(p, lr=0.1), SGD_LR_SCALE),
    (lambda p: torch.optim.ASGD(p, lr=0.1), SGD_LR_SCALE),
    (lambda p: torch.optim.Adam(p, lr=1e-3), ADAPTIVE_LR_SCALE),
    (lambda p: torch.optim.AdamW(p, lr=1e-3), ADAPTIVE_LR_SCALE),
    (lambda p: torch.optim.RMSprop(p, lr=1e-3), ADAPTIVE_LR_SCALE),
    (lambda p: torch.optim.Adagrad(p, lr=1e-2), ADAPTIVE_LR_SCALE),
])
def test_default_lr_scale_by_optimizer_family(factory, expected):
    optimizer = factory(TinyNet().parameters())
    assert default_lr_scale(optimizer) == expected


def test_timm_adam_like_optimizer_counts_as_adaptive():
    from timm.optim import Lamb

    assert default_lr_scale(Lamb(TinyNet().parameters(), lr=1e-3)) == ADAPTIVE_LR_SCALE


@pytest.mark.parametrize("factory,base,scale", [
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 0.05, SGD_LR_SCALE),
    (lambda p: torch.optim.AdamW(p, lr=2e-3), 2e-3, ADAPTIVE_LR_SCALE),
])
def test_callback_default_lr_follows_the_optimizer(factory, base, scale):
    model = TinyNet(optimizer_factory=factory)
    groups = []

    class Groups(Callback):
        def on_train_start(self, trainer, pl_module):
            groups.extend(dict(g) for g in trainer.optimizers[0].param_groups)

    trainer(callbacks=[CAReLUCallback(), Groups()], max_steps=1).fit(model, loader())
    carelu = next(g for g in groups if g.get("name") == "carelu")
    assert carelu["lr"] == pytest.approx(base * scale) and groups[0]["lr"] == pytest.approx(base)


def test_carelu_module_saturation_statistic_matches_recomputation():
    act = CAReLU(alpha_init=-2.5, beta_init=0.7)
    act.track_statistics = True
    z = torch.randn(6, 4, 5, 5) + torch.linspace(-1, 1, 6).view(6, 1, 1, 1)
    act(z)
    row = dict(zip(STATISTICS, act.pop_statistics().tolist()))
    p = z.clamp_min(0).square().sum((1, 2, 3)) / (z.square().sum((1, 2, 3)) + 1e-6)
    assert row["sum_saturation"] == pytest.approx((-2.5 * p + 0.7).abs().sum().item(), rel=1e-5)


def test_saturation_starts_above_the_limit_not_at_it():
    names = ("below", "at", "above")
    found = saturated_layers(names, (SATURATION_LIMIT - 1e-3, SATURATION_LIMIT, SATURATION_LIMIT + 1e-3))
    assert found == {"above": SATURATION_LIMIT + 1e-3}


def test_messages_list_several_layers_separated_by_commas():
    message = saturation_message({"a": 3.25, "b": 4.0}, {"a": 1.99, "b": -1.5}, step=7)
    assert "by training step 7: a (mean |α·p+β| = 3.25, scale +1.99), b (mean |α·p+β| = 4.00, scale -1.50). " in message
    with pytest.raises(NonFiniteCAReLUError) as raised:
        # dashboard.parameters' columns: alpha, beta (means), alpha_std, beta_std, finite (every channel)
        table = torch.tensor([[math.nan, 0.5, math.nan, 0.0, 0.0], [0.1, 0.2, 0.0, 0.0, 1.0],
                              [1.0, math.inf, 0.0, math.nan, 0.0], [0.3, 0.4, 0.1, 0.1, 0.0]])
        check_finite(["a", "b", "c", "d"], table, 3, "after backward")
    assert ("by training step 3 (after backward) in a (alpha=nan, beta=0.5), c (alpha=1, beta=inf), d (alpha=0.3, "
            "beta=0.4). ") in str(raised.value)
