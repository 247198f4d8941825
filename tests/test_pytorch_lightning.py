"""The standalone `pytorch_lightning` package (`import pytorch_lightning as pl`): its Trainer and LightningModule
work with CAReLUCallback as `lightning.pytorch`'s do — the swap, the optimizer group, the dashboards, checkpoints
and load_checkpoint, weight averaging and spawned workers."""

from __future__ import annotations

import lightning.pytorch
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint, StochasticWeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from caer_lightning import CAReLU, CAReLUCallback, load_checkpoint
from caer_lightning.callbacks import packages
from caer_lightning.lr_policy import SGD_LR_SCALE
from helpers import NUM_CLASSES, SPAWN_TEARDOWN_RERUN, loader

LAYERS = ["net.2", "net.5"]


class PlNet(pl.LightningModule):
    """helpers.TinyNet, written against pytorch_lightning."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def pl_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, max_epochs=1)
    return pl.Trainer(**{**defaults, **kwargs})


def carelu_values(model: nn.Module) -> dict[str, tuple[float, float]]:
    return {n: (m.alpha.item(), m.beta.item()) for n, m in model.named_modules() if isinstance(m, CAReLU)}


def test_the_callback_is_a_callback_of_both_packages():
    callback = CAReLUCallback()
    assert isinstance(callback, pl.Callback) and isinstance(callback, lightning.pytorch.Callback)


@pytest.mark.slow
def test_overridden_hooks_are_found_in_modules_of_either_package():
    class Built(PlNet):
        def configure_model(self):
            pass

    assert packages.is_overridden("configure_model", Built()) and not packages.is_overridden("configure_model", PlNet())
    with pytest.raises(TypeError, match="is not a LightningModule of lightning.pytorch or pytorch_lightning"):
        packages.is_overridden("configure_model", nn.Linear(2, 2))


def test_fit_checkpoint_and_load_with_pytorch_lightning(tmp_path):
    model = PlNet()
    logger = TensorBoardLogger(tmp_path, name="pl")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    run = pl_trainer(callbacks=[CAReLUCallback(log_every_n_steps=2), checkpoints], logger=logger,
                     enable_checkpointing=True, max_epochs=2, log_every_n_steps=2)
    run.fit(model, loader())
    assert list(carelu_values(model)) == LAYERS and all(alpha != 0.0 for alpha, _ in carelu_values(model).values())
    (group,) = [g for g in run.optimizers[0].param_groups if g.get("name") == "carelu"]
    assert group["lr"] == pytest.approx(SGD_LR_SCALE * 0.05) and group["weight_decay"] == 0.0
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert {f"carelu/{name}/energy_ratio" for name in LAYERS} <= set(events.Tags()["scalars"])  # pl's logger too
    assert {f"carelu/{name}/p" for name in LAYERS} <= set(events.Tags()["histograms"])  # written to its writer
    loaded = load_checkpoint(PlNet, tmp_path / "ckpt" / "last.ckpt")
    assert carelu_values(loaded) == carelu_values(model)
    x = loader(seed=5).dataset.tensors[0]
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_the_averaged_copy_of_pytorch_lightnings_swa_is_swapped_too():
    model = PlNet()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    pl_trainer(callbacks=[swa, CAReLUCallback()], max_epochs=2).fit(model, loader())
    assert list(carelu_values(model)) == LAYERS
    assert [n for n, m in swa._average_model.named_modules() if isinstance(m, CAReLU)] == LAYERS


class SaveRankZeroModel(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, self.path)


@pytest.mark.slow
@SPAWN_TEARDOWN_RERUN
def test_spawned_workers_return_the_trained_model(tmp_path):
    model = PlNet()
    run = pl_trainer(devices=2, strategy="ddp_spawn", max_epochs=2,
                     callbacks=[CAReLUCallback(lr_scale=10.0), SaveRankZeroModel(str(tmp_path / "worker.pt"))])
    run.fit(model, loader())
    worker = torch.load(tmp_path / "worker.pt")
    main = model.state_dict()
    assert sorted(main) == sorted(worker) and {f"{n}.alpha" for n in LAYERS} <= set(main)
    for key, value in worker.items():
        assert torch.equal(main[key], value), key
    assert worker["net.2.alpha"].item() != 0.0, "α must have trained"
