"""How hard do α, β get pushed? Per CAReLU layer and per step, their gradient against the weights' and the
size of the step the optimizer takes, under SGD and AdamW, on the quickstart model (ResNet-18, CIFAR stem,
digits).

    python benchmarks/gradient_scale.py [--epochs 2] [--seed 0] [--lr-scale 1.0]

α and β are one pair per layer, so their gradient sums over every element of the layer's output: where
scaling that output changes the loss (it feeds a residual stream or the classifier), it is orders of
magnitude larger than a weight's; where a convolution and BatchNorm follow, BN undoes any common scale and
the gradient of β is close to 0. SGD steps in proportion to the gradient; Adam-like optimizers step by about
lr whatever it is. Prints one table per optimizer: medians over the steps.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import lightning.pytorch as pl
import torch

from caer_lightning import CAReLU, CAReLUCallback
from caer_lightning.data import DigitsDataModule
from caer_lightning.models import TimmClassifier

OPTIMIZERS = {
    "SGD (lr 0.05, momentum 0.9)": partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "AdamW (lr 1e-3)": partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
}


class StepProbe(pl.Callback):
    """Records, for every optimizer step, each CAReLU's |dL/dα|, |dL/dβ|, the step taken on β, and the RMS
    gradient and relative step of the weights (parameters with 2+ dims)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._before: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        weights = [p for p in pl_module.parameters() if p.grad is not None and p.dim() > 1]
        squares = sum(float(p.grad.square().sum()) for p in weights)
        self._weights = [(p, p.detach().clone()) for p in weights]
        self.rows.append({
            "weight_grad_rms": (squares / sum(p.numel() for p in weights)) ** 0.5,
            "layers": {n: [abs(m.alpha.grad.item()), abs(m.beta.grad.item()), m.beta.item()]
                       for n, m in pl_module.named_modules() if isinstance(m, CAReLU)},
        })

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = self.rows[-1]
        changes = [float((p.detach() - before).norm() / before.norm().clamp_min(1e-12)) for p, before in self._weights]
        row["weight_relative_step"] = statistics.median(changes)
        for name, module in pl_module.named_modules():
            if isinstance(module, CAReLU):
                row["layers"][name][2] = abs(module.beta.item() - row["layers"][name][2])


def measure(optimizer, seed: int, epochs: int, lr_scale: float | None) -> list[dict]:
    pl.seed_everything(seed, verbose=False)
    model = TimmClassifier("resnet18", 10, in_chans=1, cifar_stem=True, optimizer=optimizer)
    probe = StepProbe()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
                         callbacks=[CAReLUCallback(lr_scale=lr_scale, log_every_n_steps=0), probe])
    trainer.fit(model, DigitsDataModule())
    return probe.rows


def table(rows: list[dict]) -> str:
    median = statistics.median
    weight_rms = median(r["weight_grad_rms"] for r in rows)
    lines = [f"median over {len(rows)} steps; weights: RMS gradient {weight_rms:.2e}, relative step "
             f"{median(r['weight_relative_step'] for r in rows):.2e}", "",
             "| layer | \\|dL/dα\\| | \\|dL/dβ\\| | \\|dL/dβ\\| / weights' RMS gradient | \\|Δβ\\| per step |",
             "|---|---|---|---|---|"]
    for name in rows[0]["layers"]:
        alpha, beta, step = (median(r["layers"][name][i] for r in rows) for i in range(3))
        ratio = median(r["layers"][name][1] / r["weight_grad_rms"] for r in rows)
        lines.append(f"| {name} | {alpha:.1e} | {beta:.1e} | {ratio:.1e} | {step:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-scale", type=float, default=None,
                        help="CAReLUCallback's lr_scale (default: the callback's own default)")
    args = parser.parse_args()
    for label, optimizer in OPTIMIZERS.items():
        print(f"\n## {label}, lr_scale={args.lr_scale if args.lr_scale is not None else 'default'}\n")
        print(table(measure(optimizer, args.seed, args.epochs, args.lr_scale)))


if __name__ == "__main__":
    main()
