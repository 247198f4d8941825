"""Run by tests/test_fsdp.py as `python model_parallel_run.py OUT`: Lightning's ModelParallelStrategy on 2 CPU
processes (gloo), which Lightning starts by running this script again as rank 1. Each rank writes OUT/rank{r}.pt.

1. configure_model shards a model that still has ReLUs: CAReLUCallback must stop before training (the message).
2. configure_model swaps (as that message says) and then shards: train a few steps, save a distributed checkpoint.
3. A fresh model resumes from that checkpoint: α, β come back.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.distributed.fsdp import fully_shard

import caer_lightning
from caer_lightning import CAReLU, CAReLUCallback, _compat
from helpers import block_cnn, loader


class ShardedNet(pl.LightningModule):
    """Builds `block_cnn` in configure_model and shards it per block and at the root, swapping first if asked."""

    def __init__(self, swap_first: bool) -> None:
        super().__init__()
        self.swap_first = swap_first
        self.net: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.net = block_cnn()
        if self.swap_first:  # what the callback's message says to call
            caer_lightning.swap_activations(self.net, ["torch.nn.ReLU"], factory=lambda old: CAReLU(K=3.0))
        mesh = self.device_mesh["data_parallel"]
        for block in self.net:
            fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


def trainer(out: Path, **kwargs) -> pl.Trainer:
    # a collective that only one rank enters (a deadlock) fails after 2 minutes, not gloo's default 30
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(minutes=2))
    defaults = dict(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[CAReLUCallback(K=3.0, lr_scale=2.0, log_every_n_steps=1)])
    return pl.Trainer(**{**defaults, **kwargs})


def main(out: Path) -> None:
    torch.set_num_threads(1)
    result = {}
    run = trainer(out)
    try:
        run.fit(ShardedNet(swap_first=False), loader())
        result["error"] = ""
    except MisconfigurationException as error:
        result["error"] = str(error)

    model, callback = ShardedNet(swap_first=True), CAReLUCallback(K=3.0, lr_scale=2.0, log_every_n_steps=1)
    run = trainer(out, callbacks=[callback], logger=CSVLogger(out, name="csv"))
    run.fit(model, loader())
    run.save_checkpoint(out / "sharded.ckpt")  # a folder: each rank writes its shards
    layer = model.net[0][1]
    optimizer = run.optimizers[0]
    result.update(
        swapped=callback.swapped, dtensor=_compat.is_sharded(layer.alpha), K=layer.K,
        group_names=[g.get("name") for g in optimizer.param_groups], lrs=[g["lr"] for g in optimizer.param_groups],
        alpha=layer.alpha.full_tensor().detach(), beta=layer.beta.full_tensor().detach(),
    )

    resumed = ShardedNet(swap_first=True)
    trainer(out).fit(resumed, loader(), ckpt_path=out / "sharded.ckpt")  # at max_steps already: restores only
    layer = resumed.net[0][1]
    result.update(resumed_alpha=layer.alpha.full_tensor().detach(), resumed_beta=layer.beta.full_tensor().detach())
    torch.save(result, out / f"rank{run.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
