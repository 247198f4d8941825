"""From per-layer CAReLU statistics to logged scalars, a TensorBoard layout, histograms, labelled heat maps
and a train-end summary table."""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor

from caer_lightning.activation import HISTOGRAM_BINS, STATISTICS, CAReLU

QUANTITIES = ("energy_ratio", "scale", "neg_win", "saturation", "alpha", "beta")
_COLUMN = {name: i for i, name in enumerate(STATISTICS)}


def key(name: str, quantity: str) -> str:
    """The logged key of one quantity of one layer (SPEC §4)."""
    return f"carelu/{name}/{quantity}"


def collect(modules: Sequence[CAReLU]) -> Tensor:
    """One (layers, len(STATISTICS) + HISTOGRAM_BINS) device tensor of the modules' statistics (reset after)."""
    rows = []
    for module in modules:
        row = module.pop_statistics()
        rows.append(row if row is not None else module.alpha.new_zeros(len(STATISTICS) + HISTOGRAM_BINS).float())
    return torch.stack(rows)


def parameters(modules: Sequence[CAReLU]) -> Tensor:
    """One (layers, 2) device tensor of the modules' (α, β), detached."""
    return torch.stack([torch.stack((m.alpha, m.beta)) for m in modules]).detach()


def scalars(names: Sequence[str], statistics: Tensor, parameters: Tensor) -> dict[str, float]:
    """Per-layer means from summed statistics (CPU tensors); layers that did not run are left out."""
    metrics = {}
    for name, row, (alpha, beta) in zip(names, statistics.tolist(), parameters.tolist()):
        groups = row[_COLUMN["groups"]]
        if groups > 0:
            metrics[key(name, "energy_ratio")] = row[_COLUMN["sum_p"]] / groups
            metrics[key(name, "scale")] = row[_COLUMN["sum_s"]] / groups
            metrics[key(name, "neg_win")] = row[_COLUMN["neg_win"]] / groups
            metrics[key(name, "saturation")] = row[_COLUMN["sum_saturation"]] / groups
        metrics[key(name, "alpha")], metrics[key(name, "beta")] = alpha, beta
    return metrics


def custom_scalars_layout(names: Sequence[str], title: str = "CAReLU") -> dict:
    """TensorBoard custom-scalars layout: a section `title`, one chart per quantity, one line per layer."""
    return {title: {quantity: ["Multiline", [key(n, quantity) for n in names]] for quantity in QUANTITIES}}


def write_histograms(writer, names: Sequence[str], statistics: Tensor, step: int) -> None:
    """One histogram of p per layer, from binned counts (`SummaryWriter.add_histogram_raw`)."""
    limits = [(i + 1) / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS)]
    for name, row in zip(names, statistics.tolist()):
        counts = row[len(STATISTICS):]
        filled = [i for i, c in enumerate(counts) if c > 0]
        if not filled:
            continue
        writer.add_histogram_raw(
            f"carelu/{name}/p", min=filled[0] / HISTOGRAM_BINS, max=limits[filled[-1]],
            num=row[_COLUMN["groups"]], sum=row[_COLUMN["sum_p"]], sum_squares=row[_COLUMN["sum_p2"]],
            bucket_limits=limits, bucket_counts=counts, global_step=step,
        )


def heatmap_figure(
    values: Tensor, steps: Sequence[int], names: Sequence[str], *, title: str, label: str, low: float, high: float,
    diverging: bool = False,
) -> Figure:
    """A labelled layers × logged-steps heat map of a (steps, layers) history: one row per layer, named on the y
    axis (model order, input side on top), the logged step on the x axis, and a colour bar with values. A
    diverging map is centred on 0, so a layer whose value changes sign stands out."""
    rows = values.T.float().numpy()  # layers × steps
    layers = len(names)
    height = min(2.0 + 0.16 * layers, 30.0)
    figure = Figure(figsize=(8.0, height), dpi=100)
    axes = figure.add_subplot()
    cmap = "RdBu_r" if diverging else "viridis"
    norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high) if diverging else Normalize(vmin=low, vmax=high)
    image = axes.imshow(rows, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    # label every row while they fit (font ≥ 5 pt); beyond that every k-th row, so labels never overlap
    row_points = (height * 72 * 0.8) / max(layers, 1)
    fontsize = max(5.0, min(9.0, row_points * 0.8))
    every = max(1, math.ceil(fontsize / (row_points * 0.9)))
    ticks = list(range(0, layers, every))
    axes.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
    columns = list(range(len(steps)))
    shown = columns[:: max(1, math.ceil(len(columns) / 10))]
    axes.set_xticks(shown, [str(steps[i]) for i in shown], fontsize=8)
    axes.set_xlabel("training step")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label=label)
    figure.tight_layout()
    return figure


SUMMARY_COLUMNS = ("energy_ratio", "scale", "neg_win", "alpha", "beta")


def summary_table(names: Sequence[str], final: dict[str, float], flags: dict[str, str]) -> str:
    """A Markdown table, one row per layer: the final logged energy ratio, scale, neg-win share, α, β, and what
    happened during the run (flipped sign, saturated)."""
    lines = ["| layer | energy ratio | scale | neg-win | α | β | flags |", "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = [final.get(key(name, q)) for q in SUMMARY_COLUMNS]
        shown = ["–" if v is None else f"{v:.4g}" for v in cells]
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {flags.get(name, '')} |")
    return "\n".join(lines)
