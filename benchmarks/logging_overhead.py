"""Step-time overhead of CAReLUCallback's dashboards: the same CAReLU run with statistics logged at the
default cadence (TensorBoard: scalars, histograms, heat maps) and with them off, in one process.

    python benchmarks/logging_overhead.py [--steps 150] [--repeats 2] [--json out.json]

Trains timm ResNet-18 (CIFAR stem) on the embedded digits; the arms alternate order to spread machine drift.
Prints the mean step time of each arm (all steps after warm-up, epoch ends included) and their ratio, and,
less sensitive to machine drift, the overhead attributed within each run: mean step over mean of the steps
with no logging step and no epoch end in them, for the logging arm relative to the same for the off arm.
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
    """Per-step wall time (batch end to batch end) after the warm-up, with each step's batch index."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.last, self.intervals, self.batch_indices = warmup, 0.0, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.intervals.append(now - self.last)
            self.batch_indices.append(batch_idx)
        self.last = now


LOG_EVERY = 50  # the Trainer's log_every_n_steps in both arms (the callback's default cadence)


def logging_steps(warmup: int, steps: int, every: int = LOG_EVERY) -> list[int]:
    """The logging steps (global steps, counted before the step) among the measured ones."""
    return [k for k in range(warmup, warmup + steps) if k % every == 0]


def run(log_every: int, args: argparse.Namespace, directory: str) -> dict[str, float]:
    """Mean step time, and the same over the steps with no logging and no epoch end in them: their ratio
    attributes the cost of logging within one run, free of run-to-run drift."""
    pl.seed_everything(0, verbose=False)
    clock = StepClock(args.warmup)
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, max_steps=args.warmup + args.steps, limit_val_batches=0,
        log_every_n_steps=LOG_EVERY, logger=TensorBoardLogger(directory, name=f"every{log_every}"),
        callbacks=[CAReLUCallback(log_every_n_steps=None if log_every else 0), clock],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    model = TimmClassifier("resnet18", num_classes=10, in_chans=1, cifar_stem=True)
    data = DigitsDataModule(batch_size=args.batch_size, image_size=args.image_size)
    trainer.fit(model, datamodule=data)
    steps = range(args.warmup + 1, args.warmup + 1 + len(clock.intervals))
    # An interval holds step k's work; logging happens on steps where (k - 1) % LOG_EVERY == 0 (global_step
    # before the step), epoch-end work lands in the interval of an epoch's first batch.
    clean = [t for t, k, b in zip(clock.intervals, steps, clock.batch_indices) if (k - 1) % LOG_EVERY and b]
    mean = statistics.fmean(clock.intervals)
    return {"mean": mean, "within_run_ratio": mean / statistics.fmean(clean)}


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
    if not logging_steps(args.warmup, args.steps):
        first = next(k for k in range(args.warmup, args.warmup + LOG_EVERY + 1) if k % LOG_EVERY == 0)
        parser.error(f"--steps={args.steps}: with --warmup={args.warmup} no logging step (every {LOG_EVERY}) would "
                     f"be measured, so there would be no overhead to report; accepted values: --steps > "
                     f"{first - args.warmup}")
    warnings.filterwarnings("ignore")

    runs: dict[str, list[dict[str, float]]] = {"off": [], "default cadence": []}
    with tempfile.TemporaryDirectory() as directory:
        for repeat in range(args.repeats):
            order = [("off", 0), ("default cadence", LOG_EVERY)]
            for arm, log_every in order if repeat % 2 == 0 else order[::-1]:  # alternate who goes first
                runs[arm].append(run(log_every, args, directory))
    mean = {arm: statistics.median(r["mean"] for r in runs[arm]) for arm in runs}
    within = {arm: statistics.median(r["within_run_ratio"] for r in runs[arm]) for arm in runs}
    ratio, attributed = mean["default cadence"] / mean["off"], within["default cadence"] / within["off"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {device}; ResNet-18 CIFAR stem, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.steps} steps x {args.repeats} repeats per arm")
    print(f"{'statistics logging':<20} {'mean step (ms)':>15} {'ratio':>7} {'all steps / steps without logging':>36}")
    print(f"{'off':<20} {mean['off'] * 1e3:>15.1f} {1.0:>7.3f} {within['off']:>36.4f}")
    print(f"{'default (every 50)':<20} {mean['default cadence'] * 1e3:>15.1f} {ratio:>7.3f} {within['default cadence']:>36.4f}")
    print(f"overhead attributed within runs (on / off of the last column): {attributed:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device, "args": vars(args), "runs": runs, "ratio": ratio,
                       "attributed_ratio": attributed}, handle, indent=2)


if __name__ == "__main__":
    main()
