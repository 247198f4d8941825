"""CAReLUCallback next to Lightning's own features: weight averaging, fine-tuning, spawn strategies,
configure_model, cached optimizers, LR floors and timm schedulers, several callbacks, weights-only checkpoints,
frozen sub-networks, resuming with other settings. One test (or more) per row of issue 10."""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import (
    BaseFinetuning,
    Callback,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim import lr_scheduler as sched

from caer_lightning import CAReLU, CAReLUCallback, load_checkpoint
from helpers import NUM_CLASSES, SPAWN_TEARDOWN_RERUN, TinyNet, loader, trainer

# Resuming without the ModelCheckpoint that wrote the checkpoint: Lightning names it, and these tests need none.
NO_CHECKPOINT_CALLBACK = "ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"


def carelu_state(model: nn.Module) -> dict[str, tuple[float, float]]:
    return {n: (m.alpha.item(), m.beta.item()) for n, m in model.named_modules() if isinstance(m, CAReLU)}


class StepLRs(Callback):
    """The lr of every group of optimizer 0 as used by each optimizer step (keyed by group name or index)."""

    def __init__(self) -> None:
        self.lrs: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append({g.get("name", i): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)})


class EpochParameters(Callback):
    """Every CAReLU's (α, β) at each epoch end and after each batch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.batches: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(carelu_state(pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(carelu_state(pl_module))


# Rows 1 and 4: StochasticWeightAveraging, either side of the callback.
@pytest.mark.slow
@pytest.mark.parametrize("swa_first", [True, False], ids=["swa-first", "swa-last"])
def test_stochastic_weight_averaging(swa_first):
    seed_everything(0)
    model, lrs, record = TinyNet(), StepLRs(), EpochParameters()
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=1)
    callback = CAReLUCallback(lr_scale=0.5)
    callbacks = [swa, callback] if swa_first else [callback, swa]
    trainer(callbacks=[*callbacks, lrs, record], max_epochs=4).fit(model, loader())
    # The averaged copy has CAReLU at the same places and holds the average of α, β. Lightning 2.6's SWA
    # updates it at the start of epochs 1, 2, 3 (swa_epoch_start − 1 … max_epochs − 1) with the weights
    # the previous epoch ended with.
    assert list(carelu_state(model)) == list(carelu_state(swa._average_model)) == ["net.2", "net.5"]
    assert swa.n_averaged.item() == 3
    for name, (alpha, beta) in carelu_state(swa._average_model).items():
        assert alpha == pytest.approx(sum(record.epochs[e][name][0] for e in range(3)) / 3, abs=1e-7)
        assert beta == pytest.approx(sum(record.epochs[e][name][1] for e in range(3)) / 3, abs=1e-7)
    assert record.epochs[1] != record.epochs[2], "α, β must move during SWA, or the average proves nothing"
    # SWALR (from epoch 1) drives group 0 to swa_lrs; the carelu group follows at lr_scale × that
    assert lrs.lrs[0][0] == pytest.approx(0.1) and lrs.lrs[-1][0] == pytest.approx(0.02)
    assert [s["carelu"] / s[0] for s in lrs.lrs] == pytest.approx([0.5] * len(lrs.lrs))


# Row 2: EMA weight averaging listed first.
def test_ema_weight_averaging_listed_first():
    seed_everything(0)
    model, record = TinyNet(), EpochParameters()
    ema = EMAWeightAveraging(decay=0.5)
    trainer(callbacks=[ema, CAReLUCallback(lr_scale=1.0), record], max_epochs=2).fit(model, loader())
    expected = None
    for state in record.batches:  # AveragedModel: the first update copies, then avg = d·avg + (1 − d)·param
        values = {n: torch.tensor(v, dtype=torch.float64) for n, v in state.items()}
        expected = values if expected is None else {n: 0.5 * expected[n] + 0.5 * values[n] for n in values}
    assert list(carelu_state(ema._average_model.module)) == ["net.2", "net.5"]
    final = carelu_state(model)  # on_train_end copies the average into the model
    for name, value in expected.items():
        assert final[name] == pytest.approx(tuple(value.tolist()), abs=1e-6)
    assert record.batches[-1] != record.batches[-2]


# Row 3: BaseFinetuning listed first; the backbone's α, β stay frozen with it, unfreeze with it, and resume.
class BackboneNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = self.net[:6]
        self.head = self.net[6:]
        del self.net

    def forward(self, x):
        return self.head(self.backbone(x))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


class UnfreezeAtEpoch1(BaseFinetuning):
    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, epoch, optimizer):
        if epoch == 1:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=0.01)


@pytest.mark.filterwarnings(NO_CHECKPOINT_CALLBACK)
def test_fine_tuning_freezes_and_unfreezes_the_backbones_carelu(tmp_path):
    seed_everything(0)
    model, record = BackboneNet(), EpochParameters()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    run = trainer(callbacks=[UnfreezeAtEpoch1(), CAReLUCallback(lr_scale=1.0), record, checkpoints],
                  max_epochs=2, enable_checkpointing=True)
    # Lightning's unfreeze skips the parameters already in the optimizer, with a warning: α, β, which stay in the
    # carelu group (README says so)
    with pytest.warns(UserWarning, match="params to be frozen already exist within another group"):
        run.fit(model, loader())
    at_swap = (0.0, pytest.approx(math.atanh(0.5)))
    assert record.epochs[0] == {"backbone.2": at_swap, "backbone.5": at_swap}, "frozen: α, β must not train"
    assert all(alpha != 0.0 for alpha, _ in record.epochs[1].values()), "unfrozen: α, β train with the backbone"
    groups = run.optimizers[0].param_groups
    assert [g.get("name") for g in groups] == [None, "carelu", None]
    # resuming after the unfreeze restores the same three groups
    resumed = trainer(callbacks=[UnfreezeAtEpoch1(), CAReLUCallback(lr_scale=1.0)], max_epochs=3)
    resumed.fit(BackboneNet(), loader(), ckpt_path=tmp_path / "epoch=1-step=8.ckpt")
    assert [g.get("name") for g in resumed.optimizers[0].param_groups] == [None, "carelu", None]


# Row 5: spawn-based strategies end fit with the trained model in the main process.
class SaveRankZeroModel(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, self.path)


@pytest.mark.slow
@SPAWN_TEARDOWN_RERUN
@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawn_strategies_return_the_trained_model(strategy, tmp_path):
    model = TinyNet()
    callback = CAReLUCallback(lr_scale=10.0)
    run = trainer(devices=2, strategy=strategy, max_epochs=2,
                  callbacks=[callback, SaveRankZeroModel(str(tmp_path / "worker.pt"))])
    run.fit(model, loader())
    worker = torch.load(tmp_path / "worker.pt")
    assert [n for n, m in model.named_modules() if isinstance(m, CAReLU)] == ["net.2", "net.5"]
    assert callback.swapped == ["net.2", "net.5"]
    main = model.state_dict()
    assert sorted(main) == sorted(worker)
    for key, value in worker.items():
        assert torch.equal(main[key], value), key
    assert worker["net.2.alpha"].item() != 0.0, "α must have trained"


# Row 6: activations created in configure_model.
class BuiltInConfigureModel(TinyNet):
    def __init__(self, all_there: bool) -> None:
        super().__init__()
        self.all_there = all_there
        self.extra = None
        if all_there:
            del self.net

    def configure_model(self):
        if self.extra is not None:
            return
        self.extra = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
        if self.all_there:
            self.net = TinyNet().net

    def forward(self, x):
        return self.net(self.extra(x))


@pytest.mark.parametrize("all_there", [True, False], ids=["all-in-configure_model", "some-in-configure_model"])
def test_activations_created_in_configure_model_are_swapped(all_there):
    model, callback = BuiltInConfigureModel(all_there), CAReLUCallback(lr_scale=1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*called from several places")
        trainer(callbacks=[callback], max_steps=2).fit(model, loader())
    expected = ["extra.1", "net.2", "net.5"] if all_there else ["net.2", "net.5", "extra.1"]  # model order
    assert callback.swapped == expected
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model.extra[1].alpha.item() != 0.0, "the configure_model layer's α must train"


# Row 7: torch.compile applied to a submodule in configure_model.
class CompiledInConfigureModel(TinyNet):
    def configure_model(self):
        if not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net, backend="eager")


@pytest.mark.slow
def test_compile_in_configure_model_round_trips(tmp_path):
    model = CompiledInConfigureModel()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    run = trainer(callbacks=[CAReLUCallback(lr_scale=1.0), checkpoints], max_steps=3, enable_checkpointing=True)
    run.fit(model, loader())
    loaded = load_checkpoint(CompiledInConfigureModel, tmp_path / "last.ckpt")
    assert carelu_state(loaded) == carelu_state(model) and len(carelu_state(model)) == 2
    x = next(iter(loader()))[0]
    assert torch.equal(loaded.eval()(x), model.eval()(x))


# Row 8: a cached optimizer, fit twice.
class CachedOptimizer(TinyNet):
    def configure_optimizers(self):
        if not hasattr(self, "_optimizer"):
            self._optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return self._optimizer


def test_fit_twice_with_a_cached_optimizer():
    model, callback, lrs = CachedOptimizer(), CAReLUCallback(lr_scale=0.5), StepLRs()
    trainer(callbacks=[callback, lrs], max_steps=2).fit(model, loader())
    trainer(callbacks=[callback, lrs], max_steps=2).fit(model, loader())
    groups = model._optimizer.param_groups
    assert [g.get("name") for g in groups] == [None, "carelu"]
    assert len(groups[1]["params"]) == 4
    assert [s["carelu"] for s in lrs.lrs] == pytest.approx([0.05] * 4)


# Rows 9 and 10: LR floors and timm's schedulers keep the ratio.
FLOORS = {
    "CosineAnnealingLR(eta_min)": lambda o: sched.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
    "CosineAnnealingWarmRestarts(eta_min)": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3, eta_min=0.01),
    "SequentialLR(cosine eta_min)": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, start_factor=0.1, total_iters=2), sched.CosineAnnealingLR(o, T_max=6, eta_min=0.02)],
        milestones=[2],
    ),
    "ReduceLROnPlateau(min_lr)": lambda o: sched.ReduceLROnPlateau(o, patience=0, threshold=10.0, factor=0.1, min_lr=0.005),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FLOORS)
def test_lr_floors_keep_the_ratio(name):
    plateau = "Plateau" in name
    model = TinyNet(scheduler_factory=FLOORS[name], scheduler_interval="epoch" if plateau else "step")
    lrs = StepLRs()
    trainer(callbacks=[CAReLUCallback(lr_scale=0.5), lrs], max_steps=-1 if plateau else 12, max_epochs=5).fit(
        model, loader()
    )
    floor = 0.005 if plateau else 0.01
    assert min(s[0] for s in lrs.lrs) < 4 * floor, "the schedule must come near its floor"
    assert [s["carelu"] / s[0] for s in lrs.lrs] == pytest.approx([0.5] * len(lrs.lrs), rel=1e-6)


class TimmScheduled(TinyNet):
    def configure_optimizers(self):
        from timm.scheduler import CosineLRScheduler

        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = CosineLRScheduler(optimizer, t_initial=8, lr_min=1e-3, warmup_t=2, warmup_lr_init=1e-3,
                                      t_in_epochs=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step_update(num_updates=self.global_step)


def test_timm_scheduler_keeps_the_ratio():
    lrs = StepLRs()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*CAReLUCallback.*scheduler")
        trainer(callbacks=[CAReLUCallback(lr_scale=0.5), lrs], max_steps=10, max_epochs=5).fit(TimmScheduled(), loader())
    assert len({round(s[0], 8) for s in lrs.lrs}) >= 6, "timm's scheduler must move group 0"
    assert [s["carelu"] / s[0] for s in lrs.lrs] == pytest.approx([0.5] * len(lrs.lrs), rel=1e-6)


# Row 11: two callbacks on disjoint parts.
def test_two_callbacks_have_their_own_groups_and_dashboards(tmp_path):
    first, second = CAReLUCallback(include=r"net\.2", lr_scale=1.0), CAReLUCallback(include=r"net\.5", lr_scale=0.5)
    model, lrs = TinyNet(), StepLRs()
    logger = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(callbacks=[first, second, LearningRateMonitor(), lrs], max_steps=2, logger=[logger, CSVLogger(tmp_path)],
                  log_every_n_steps=1)
    run.fit(model, loader())
    assert (first.swapped, second.swapped) == (["net.2"], ["net.5"])
    names = [g.get("name") for g in run.optimizers[0].param_groups]
    assert names == [None, "carelu", "carelu_1"]
    groups = run.optimizers[0].param_groups
    assert [id(p) for p in groups[1]["params"]] == [id(model.net[2].alpha), id(model.net[2].beta)]
    assert [id(p) for p in groups[2]["params"]] == [id(model.net[5].alpha), id(model.net[5].beta)]
    assert lrs.lrs[0]["carelu"] == pytest.approx(0.1) and lrs.lrs[0]["carelu_1"] == pytest.approx(0.05)
    with open(f"{run.loggers[1].log_dir}/metrics.csv") as handle:
        header = handle.readline().strip().split(",")
    assert {"lr-SGD/pg1", "lr-SGD/carelu", "lr-SGD/carelu_1"} <= set(header)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import metadata
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0}).Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    sections = {c.title: [t for chart in c.chart for t in chart.multiline.tag] for c in layout.category}
    assert set(sections) == {"CAReLU", "CAReLU (carelu_1)"}
    assert sections["CAReLU"] and all("/net.2/" in tag for tag in sections["CAReLU"])
    assert sections["CAReLU (carelu_1)"] and all("/net.5/" in tag for tag in sections["CAReLU (carelu_1)"])


def test_a_named_callback_names_its_group():
    run = trainer(callbacks=[CAReLUCallback(name="acts")], max_steps=1)
    run.fit(TinyNet(), loader())
    assert [g.get("name") for g in run.optimizers[0].param_groups] == [None, "acts"]


@pytest.mark.parametrize("first,second", [(r"net\.2", r"nothing_here"), (None, r"net\.5")])
def test_a_second_callback_matching_nothing_of_its_own_fails(first, second):
    """Its include selects no activation, or only layers the first callback swapped already."""
    callbacks = [CAReLUCallback(include=first), CAReLUCallback(include=second)]
    with pytest.raises(MisconfigurationException, match=re.escape(f"include={second!r}") + ".*matched no module"):
        trainer(callbacks=callbacks, max_steps=1).fit(TinyNet(), loader())


# Row 12: weights-only checkpoints.
def test_weights_only_checkpoint_loads(tmp_path):
    model = TinyNet()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="weights", save_weights_only=True)
    trainer(callbacks=[CAReLUCallback(variant="l1", lr_scale=1.0), checkpoints], max_steps=3,
            enable_checkpointing=True).fit(model, loader())
    assert "callbacks" not in torch.load(tmp_path / "weights.ckpt", weights_only=False)
    loaded = load_checkpoint(TinyNet, tmp_path / "weights.ckpt")
    assert carelu_state(loaded) == carelu_state(model)
    assert loaded.net[2].variant == "l1"
    x = next(iter(loader()))[0]
    assert torch.equal(loaded.eval()(x), model.eval()(x))


# Row 13: a frozen sub-network held by no optimizer.
class WithPerceptualLoss(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.perceptual = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.perceptual.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + self.perceptual(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("included", [False, True], ids=["default", "included-explicitly"])
def test_frozen_unheld_subnetwork_stays_frozen(included, caplog):
    model = WithPerceptualLoss()
    callback = CAReLUCallback(lr_scale=1.0, include=r"perceptual" if included else None)
    with caplog.at_level("INFO"):
        run = trainer(callbacks=[callback], max_steps=2)
        run.fit(model, loader())
    held = {id(p) for g in run.optimizers[0].param_groups for p in g["params"]}
    perceptual = model.perceptual[1]
    if included:
        assert perceptual.alpha.requires_grad and id(perceptual.alpha) in held
        assert perceptual.alpha.item() != 0.0
    else:
        assert not perceptual.alpha.requires_grad and id(perceptual.alpha) not in held
        assert carelu_state(model.perceptual) == {"1": (0.0, pytest.approx(math.atanh(0.5)))}
        assert model.net[2].alpha.item() != 0.0 and id(model.net[2].alpha) in held
        assert "perceptual.1" in caplog.text and "frozen" in caplog.text


# Row 14: resuming with another lr_scale or weight_decay.
@pytest.mark.filterwarnings(NO_CHECKPOINT_CALLBACK)
def test_resume_with_other_settings_uses_them(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer(callbacks=[CAReLUCallback(lr_scale=0.5), checkpoints], max_epochs=1, enable_checkpointing=True).fit(
        TinyNet(), loader()
    )
    lrs = StepLRs()
    expected = r"lr_scale=0\.5, weight_decay=0\.0; this run uses lr=None, lr_scale=0\.25, weight_decay=0\.01"
    with pytest.warns(UserWarning, match=expected):
        run = trainer(callbacks=[CAReLUCallback(lr_scale=0.25, weight_decay=0.01), lrs], max_epochs=2)
        run.fit(TinyNet(), loader(), ckpt_path=tmp_path / "last.ckpt")
    group = run.optimizers[0].param_groups[1]
    assert group["name"] == "carelu" and group["weight_decay"] == 0.01
    assert [s["carelu"] for s in lrs.lrs] == pytest.approx([0.025] * 4)
