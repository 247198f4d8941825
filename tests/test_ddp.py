"""DDP on CPU (gloo, 2 spawned processes): α, β train and stay identical on both ranks."""

from __future__ import annotations

import copy
import csv

import pytest

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from caer_lightning import CAReLU, CAReLUCallback
from caer_lightning.functional import competition
from helpers import SPAWN_TEARDOWN_RERUN, TinyNet, loader, trainer


class SaveRankState(Callback):
    """Each rank writes its own CAReLU parameters and first-step data to `directory/rank{r}.pt`."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.first_batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = batch[0].clone()

    def on_fit_end(self, trainer, pl_module):
        state = {n: torch.stack([m.alpha.detach(), m.beta.detach()]) for n, m in pl_module.named_modules()
                 if isinstance(m, CAReLU)}
        groups = [g.get("name") for g in trainer.optimizers[0].param_groups]
        torch.save({"carelu": state, "first_batch": self.first_batch, "groups": groups,
                    "world_size": trainer.world_size}, f"{self.directory}/rank{trainer.global_rank}.pt")


@pytest.mark.slow
@SPAWN_TEARDOWN_RERUN
def test_ddp_spawn_two_ranks_agree(tmp_path):
    model = TinyNet()
    initial = copy.deepcopy(model)
    logger = CSVLogger(tmp_path, name="csv")
    run = trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=logger,
        callbacks=[CAReLUCallback(lr_scale=10.0, log_every_n_steps=1), SaveRankState(str(tmp_path))],
    )
    run.fit(model, loader())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"]), "ranks must see different data"
    assert ranks[0]["groups"] == ranks[1]["groups"] == [None, "carelu"]
    assert list(ranks[0]["carelu"]) == ["net.2", "net.5"]
    for name, values in ranks[0]["carelu"].items():
        assert torch.equal(values, ranks[1]["carelu"][name]), f"{name} differs between ranks"
        assert values[0].item() != 0.0, f"{name}: alpha never trained"

    # The logged energy ratio of step 0 is the mean over the groups of both ranks' batches.
    inputs = []
    hook = initial.net[2].register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    initial.train()
    for rank in ranks:
        initial(rank["first_batch"])
    hook.remove()
    expected = torch.cat([competition(z) for z in inputs]).mean().item()
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as handle:
        first = next(r for r in csv.DictReader(handle) if r["carelu/net.2/energy_ratio"])
    assert int(first["step"]) == 0
    assert float(first["carelu/net.2/energy_ratio"]) == pytest.approx(expected, rel=1e-5)
    local = [competition(z).mean().item() for z in inputs]
    assert abs(local[0] - local[1]) > 1e-4, "the ranks' own means must differ, or the check proves nothing"
