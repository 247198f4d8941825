"""From per-layer CAReLU statistics to logged scalars, a TensorBoard layout, histograms, labelled heat maps
and a train-end summary table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from caer_lightning import _compat, statistics
from caer_lightning.activation import CAReLU
from caer_lightning.statistics import HISTOGRAM_BINS

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.figure import Figure

QUANTITIES = ("energy_ratio", "scale", "neg_win", "saturation", "alpha", "beta")
# Logged for layers with per-channel α, β (params="channel") only: their spread over the channels (the `alpha`
# and `beta` keys then hold their mean over the channels).
SPREAD_QUANTITIES = ("alpha_std", "beta_std")
# Each logged per-group mean and the statistics field it is the mean of.
MEANS = {"energy_ratio": "sum_p", "scale": "sum_s", "neg_win": "neg_win", "saturation": "sum_saturation"}
# The columns of `parameters`: α, β's mean and (population) standard deviation over their values (one value
# per layer, or one per channel), and 1.0 when every value of both is finite. NaN for α, β not created yet.
PARAMETER_COLUMNS = ("alpha", "beta", "alpha_std", "beta_std", "finite")
UNCREATED = "uncreated"  # the layout of a per-channel layer whose α, β are created at its first forward


def key(name: str, quantity: str) -> str:
    """The logged key of one quantity of one layer (docs/spec.md §4)."""
    return f"carelu/{name}/{quantity}"


def collect(modules: Sequence[CAReLU]) -> Tensor:
    """One (layers, statistics.WIDTH) device table of the modules' statistics (reset after)."""
    rows = []
    for module in modules:
        row = module.pop_statistics()
        rows.append(row if row is not None else statistics.empty_row(module.alpha.device))
    return torch.stack(rows)


def parameters(modules: Sequence[CAReLU]) -> Tensor:
    """One (layers, len(PARAMETER_COLUMNS)) float32 device tensor of the modules' α, β (see PARAMETER_COLUMNS),
    detached. FSDP2-sharded parameters are gathered first: a collective, so every rank must call this at the same
    point. Layers with one α, β pair are read together, as one stack (their spread is 0)."""
    if not modules:
        return torch.empty(0, len(PARAMETER_COLUMNS))
    values = [None if m.has_uninitialized_params() else
              tuple(_compat.full_value(p.detach()) for p in (m.alpha, m.beta)) for m in modules]
    single = [i for i, v in enumerate(values) if v is not None and v[0].numel() == 1]
    rows: list[Tensor | None] = [None] * len(modules)
    if single:
        pairs = torch.stack([p.reshape(()) for i in single for p in values[i]]).float().view(-1, 2)
        finite = torch.isfinite(pairs).all(1, keepdim=True).float()
        for i, row in zip(single, torch.cat((pairs, torch.zeros_like(pairs), finite), dim=1)):
            rows[i] = row
    for i, module in enumerate(modules):
        if rows[i] is not None:
            continue
        if values[i] is None:  # a lazy per-channel layer that has not run yet
            rows[i] = torch.tensor([math.nan] * 4 + [1.0], dtype=torch.float32, device=module.alpha.device)
        else:
            both = torch.stack(values[i]).float()
            finite = torch.isfinite(both).all().float().reshape(1)
            rows[i] = torch.cat((both.mean(1), both.std(1, correction=0), finite))
    return torch.stack(rows)


def layouts(modules: Sequence[CAReLU]) -> list[str]:
    """Each module's `params` ("layer" or "channel"), or UNCREATED for per-channel α, β not created yet."""
    return [UNCREATED if m.has_uninitialized_params() else m.params for m in modules]


def scalars(
    names: Sequence[str], table: Tensor, parameters: Tensor, layouts: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-layer means from summed statistics (CPU tensors); layers that did not run are left out, and so are
    the α, β of per-channel layers not created yet. `layouts` (see `layouts`) defaults to "layer" for all;
    per-channel layers also get the spread of α, β (SPREAD_QUANTITIES)."""
    metrics = {}
    groups = statistics.column(table, "groups").tolist()
    means = {quantity: statistics.mean(table, field).tolist() for quantity, field in MEANS.items()}
    for index, (name, row) in enumerate(zip(names, parameters.tolist())):
        if groups[index] > 0:
            for quantity in MEANS:
                metrics[key(name, quantity)] = means[quantity][index]
        layout = layouts[index] if layouts is not None else "layer"
        if layout == UNCREATED:
            continue
        values = dict(zip(PARAMETER_COLUMNS, row))
        quantities = ("alpha", "beta", *SPREAD_QUANTITIES) if layout == "channel" else ("alpha", "beta")
        for quantity in quantities:
            metrics[key(name, quantity)] = values[quantity]
    return metrics


def custom_scalars_layout(names: Sequence[str], title: str = "CAReLU", per_channel: Sequence[str] = ()) -> dict:
    """TensorBoard custom-scalars layout: a section `title`, one chart per quantity, one line per layer; and,
    when some layers (`per_channel`) have per-channel α, β, one chart per SPREAD_QUANTITIES for them."""
    charts = {quantity: ["Multiline", [key(n, quantity) for n in names]] for quantity in QUANTITIES}
    if per_channel:
        charts.update({quantity: ["Multiline", [key(n, quantity) for n in per_channel]]
                       for quantity in SPREAD_QUANTITIES})
    return {title: charts}


def write_histograms(writer, names: Sequence[str], table: Tensor, step: int) -> None:
    """One histogram of p per layer, from binned counts (`SummaryWriter.add_histogram_raw`)."""
    limits = [(i + 1) / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS)]
    sums = {field: statistics.column(table, field).tolist() for field in ("groups", "sum_p", "sum_p2")}
    for index, (name, counts) in enumerate(zip(names, statistics.histogram(table).tolist())):
        filled = [i for i, c in enumerate(counts) if c > 0]
        if not filled:
            continue
        writer.add_histogram_raw(
            f"carelu/{name}/p", min=filled[0] / HISTOGRAM_BINS, max=limits[filled[-1]],
            num=sums["groups"][index], sum=sums["sum_p"][index], sum_squares=sums["sum_p2"][index],
            bucket_limits=limits, bucket_counts=counts, global_step=step,
        )


MIN_COLOUR_SPAN = 1e-3  # a map whose values all (nearly) agree still gets a colour bar this wide


def value_range(values: Tensor) -> tuple[float, float]:
    """The smallest and largest finite value of a history (0, 1 when it has none), widened to
    MIN_COLOUR_SPAN around their middle when they (nearly) agree: a colour range that spends its colours on
    values some layer takes."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high - low < MIN_COLOUR_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_COLOUR_SPAN / 2, middle + MIN_COLOUR_SPAN / 2
    return low, high


def heatmap_figure(
    values: Tensor, steps: Sequence[int], names: Sequence[str], *, title: str, label: str, low: float, high: float,
    diverging: bool = False,
) -> Figure:
    """A labelled layers × logged-steps heat map of a (steps, layers) history: one row per layer, named on the y
    axis (model order, input side on top), the logged step on the x axis, and a colour bar with values. A
    diverging map is centred on 0 (blue below, red above; its range is widened to reach 0 when all values have
    one sign), so a layer whose value changes sign stands out."""
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = values.T.float().numpy()  # layers × steps
    layers = len(names)
    height = min(2.0 + 0.16 * layers, 30.0)
    figure = Figure(figsize=(8.0, height), dpi=100)
    axes = figure.add_subplot()
    cmap = "RdBu_r" if diverging else "viridis"
    if diverging:
        low, high = min(low, -MIN_COLOUR_SPAN), max(high, MIN_COLOUR_SPAN)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high)
    else:
        norm = Normalize(vmin=low, vmax=high)
    image = axes.imshow(rows, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    # label every row while they fit (font ≥ 5 pt); beyond that as many as fit, so labels never overlap
    row_points = (height * 72 * 0.8) / max(layers, 1)
    fontsize = max(5.0, min(9.0, row_points * 0.8))
    fitting = max(1, int(height * 72 * 0.8 / (fontsize / 0.9)))
    rows_shown = _thinned(MaxNLocator(nbins=fitting, integer=True, min_n_ticks=1), layers)
    axes.set_yticks(rows_shown, [names[i] for i in rows_shown], fontsize=fontsize)
    columns_shown = _thinned(MaxNLocator(nbins=10, integer=True, min_n_ticks=1), len(steps))
    axes.set_xticks(columns_shown, [str(steps[i]) for i in columns_shown], fontsize=8)
    axes.set_xlabel("training step")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label=label)
    figure.tight_layout()
    return figure


def _thinned(locator, count: int) -> list[int]:
    """The indices 0 .. count-1 a matplotlib locator picks as ticks (evenly spaced, as many as it allows)."""
    return [int(t) for t in locator.tick_values(0, max(count - 1, 0)) if 0 <= t < count and t == int(t)]


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
