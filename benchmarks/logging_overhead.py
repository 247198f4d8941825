"""Step-time overhead of CAReLUCallback's dashboards: the same CAReLU run with statistics logged at the
default cadence (TensorBoard: scalars, histograms, heat maps) and with them off, in one process.

    python benchmarks/logging_overhead.py [--steps 150] [--repeats 2] [--json out.json]

Trains timm ResNet-18 (CIFAR stem) on the embedded digits; the arms alternate order to spread machine drift.
Prints the mean step time of each arm (all steps after warm-up, epoch ends included) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from caer_lightning import CAReLUCallback
from caer_lightning.data import DigitsDataModule
from caer_lightning.models import TimmClassifier


class StepClock(Callback):
    """Wall time from the end of the warm-up steps to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), trainer.global_step - self.warmup


def run(log_every: int, args: argparse.Namespace, directory: str) -> float:
    pl.seed_everything(0, verbose=False)
    clock = StepClock(args.warmup)
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, max_steps=args.warmup + args.steps, limit_val_batches=0,
        log_every_n_steps=50, logger=TensorBoardLogger(directory, name=f"every{log_every}"),
        callbacks=[CAReLUCallback(log_every_n_steps=None if log_every else 0), clock],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    model = TimmClassifier("resnet18", num_classes=10, in_chans=1, cifar_stem=True)
    data = DigitsDataModule(batch_size=args.batch_size, image_size=args.image_size)
    trainer.fit(model, datamodule=data)
    return (clock.end - clock.start) / clock.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    times: dict[str, list[float]] = {"off": [], "default cadence": []}
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeats):
            order = [("off", 0), ("default cadence", 50)]
            for arm, log_every in order if repeat % 2 == 0 else order[::-1]:  # alternate who goes first
                times[arm].append(run(log_every, args, directory))
    off, on = (statistics.median(times[k]) for k in ("off", "default cadence"))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {device}; ResNet-18 CIFAR stem, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.steps} steps x {args.repeats} repeats per arm")
    print(f"{'statistics logging':<20} {'mean step (ms)':>15} {'ratio':>7}")
    print(f"{'off':<20} {off * 1e3:>15.1f} {1.0:>7.3f}")
    print(f"{'default (every 50)':<20} {on * 1e3:>15.1f} {on / off:>7.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "args": vars(args), "step_seconds": times, "ratio": on / off}, handle, indent=2)


if __name__ == "__main__":
    main()
