"""From per-layer CAReLU statistics to logged scalars, a TensorBoard layout, histograms and heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from caer_lightning.activation import HISTOGRAM_BINS, STATISTICS, CAReLU

QUANTITIES = ("energy_ratio", "scale", "neg_win", "saturation", "alpha", "beta")
_COLUMN = {name: i for i, name in enumerate(STATISTICS)}
# Colour anchors, low to high: a viridis-like ramp for p in [0, 1], blue-white-red for s in [-K, K].
SEQUENTIAL = ((0.27, 0.00, 0.33), (0.23, 0.32, 0.55), (0.13, 0.57, 0.55), (0.37, 0.79, 0.38), (0.99, 0.91, 0.14))
DIVERGING = ((0.02, 0.19, 0.38), (0.26, 0.58, 0.76), (0.97, 0.97, 0.97), (0.84, 0.38, 0.30), (0.40, 0.00, 0.12))


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


def colorize(values: Tensor, anchors: Sequence[tuple[float, float, float]]) -> Tensor:
    """Map values in [0, 1] (any shape) to RGB by linear interpolation between colour anchors: (3, *shape)."""
    palette = torch.tensor(anchors, dtype=torch.float32)
    position = values.float().clamp(0, 1).nan_to_num(0.0) * (len(anchors) - 1)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    weight = (position - low).unsqueeze(-1)
    rgb = palette[low] * (1 - weight) + palette[low + 1] * weight
    return rgb.movedim(-1, 0)


def heatmap(history: Tensor, low: float, high: float, anchors, row_pixels: int = 8, max_columns: int = 512) -> Tensor:
    """A (3, H, W) image of a (steps, layers) history: one band per layer (model order, top to bottom),
    time left to right, colour from `low` to `high`."""
    grid = history.T.float()  # layers × steps
    if grid.shape[1] > max_columns:
        grid = F.adaptive_avg_pool1d(grid.unsqueeze(0), max_columns).squeeze(0)
    width = max(1, -(-256 // grid.shape[1]))  # at least ~256 px wide
    grid = grid.repeat_interleave(row_pixels, 0).repeat_interleave(width, 1)
    return colorize((grid - low) / (high - low), anchors)
