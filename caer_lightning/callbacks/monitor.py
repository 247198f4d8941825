"""The monitoring part of CAReLUCallback: every `every` training steps, each layer's statistics are measured on
the device, reduced over processes in one collective, checked by the guards (non-finite α, β: an error on every
rank; saturation: one warning), logged as scalars (the key names of docs/spec.md §4) and kept as a history for
the heat maps and the train-end summary."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from caer_lightning import dashboard, statistics
from caer_lightning.activation import CAReLU
from caer_lightning.guards import SATURATION_LIMIT, check_finite, saturated_layers, saturation_message

# The history keeps, per logged step and layer, these per-group means (by statistics field).
HISTORY = ("sum_p", "sum_s", "sum_saturation")


class Monitor:
    """Statistics of `layers` on every `every`-th training step (0: off). Drive it with `begin_step` before the
    step's forward and `end_step` after its optimizer step."""

    def __init__(self, log_histograms: bool = True) -> None:
        self.log_histograms = log_histograms
        self.names: list[str] = []
        self.modules: list[CAReLU] = []
        self.every = 0
        self.tracking_step: int | None = None  # the global step being measured
        self.history: list[Tensor] = []  # rank zero: per logged step, (layers, len(HISTORY)) means
        self.history_steps: list[int] = []
        self.final_metrics: dict[str, float] = {}  # rank zero: the last logged value of every key
        self.epoch_table: Tensor | None = None  # rank zero: summed statistics of the epoch's logged steps
        self.saturated: set[str] = set()  # layers already named in a saturation warning

    def start(self, layers: dict[str, CAReLU], every: int) -> None:
        """A new run: measure `layers` every `every` steps (0 or no layer: never)."""
        self.names, self.modules = list(layers), list(layers.values())
        self.every = every if self.modules else 0
        self.history, self.history_steps, self.final_metrics = [], [], {}
        self.epoch_table, self.tracking_step = None, None

    def begin_step(self, step: int) -> None:
        """Turn measuring on when `step` is a logging step."""
        if self.every and self.tracking_step is None and step % self.every == 0:
            self.tracking_step = step
            self._track(True)

    def end_step(
        self, step: int, reduce: Callable[[Tensor], Tensor], is_global_zero: bool, log: Callable[[dict, int], None]
    ) -> None:
        """After an optimizer step (`step` has moved on from the measured one): reduce the measured statistics over
        processes with `reduce` (a sum), check them on every rank, and on rank zero `log(metrics, step)` them.
        Under gradient accumulation the measuring goes on until the optimizer steps."""
        if self.tracking_step is None or step == self.tracking_step:
            return
        measured, self.tracking_step = self.tracking_step, None
        table = reduce(dashboard.collect(self.modules))
        self._track(False)
        parameters = dashboard.parameters(self.modules)
        both = torch.cat((table, parameters.to(table)), dim=1).cpu()  # one device-to-host copy
        width = len(dashboard.PARAMETER_COLUMNS)
        table, parameters = both[:, :-width], both[:, -width:]
        check_finite(self.names, parameters, measured, "found on a logged step")
        if not is_global_zero:
            return
        metrics = dashboard.scalars(self.names, table, parameters, dashboard.layouts(self.modules))
        self._warn_saturated(metrics, measured)
        log(metrics, measured)
        self.history.append(torch.stack([statistics.mean(table, field) for field in HISTORY], dim=1))
        self.history_steps.append(measured)
        self.final_metrics.update(metrics)
        self.epoch_table = table if self.epoch_table is None else self.epoch_table + table

    def stop(self) -> None:
        """The run ended: stop measuring."""
        self._track(False)
        self.tracking_step = None

    def write_histograms(self, writers: Sequence[Any], step: int) -> None:
        """The epoch's histograms of p, one per layer; then a new epoch."""
        if self.log_histograms and self.epoch_table is not None:
            for writer in writers:
                dashboard.write_histograms(writer, self.names, self.epoch_table, step)
        self.epoch_table = None

    def history_of(self, field: str) -> Tensor:
        """(logged steps, layers) means of `field` (one of HISTORY)."""
        return torch.stack(self.history)[..., HISTORY.index(field)]

    def summary(self, parameters: Tensor | None = None) -> str:
        """A Markdown table: each layer's final energy ratio, scale, neg-win share, α, β (their means over the
        channels for per-channel layers), and what happened.
        `parameters`: the layers' final (α, β) as `dashboard.parameters` gives them, read on every rank (sharded
        ones are gathered); read here when not given."""
        final = dict(self.final_metrics)
        if parameters is None:
            parameters = dashboard.parameters(self.modules)
        layouts = dashboard.layouts(self.modules)
        for name, layout, (alpha, beta, *_) in zip(self.names, layouts, parameters.tolist()):
            if layout != dashboard.UNCREATED:
                final[dashboard.key(name, "alpha")], final[dashboard.key(name, "beta")] = alpha, beta
        scale = self.history_of("sum_s").nan_to_num(0.0)
        saturation = self.history_of("sum_saturation").nan_to_num(0.0)
        flags = {}
        for index, name in enumerate(self.names):
            happened = (["flipped sign"] if bool((scale[:, index] < 0).any()) else []) + (
                ["saturated"] if bool((saturation[:, index] > SATURATION_LIMIT).any()) else []
            )
            flags[name] = ", ".join(happened)
        return dashboard.summary_table(self.names, final, flags)

    def _track(self, on: bool) -> None:
        for module in self.modules:
            module.track_statistics = on
            if not on:
                module.pop_statistics()  # drop anything a step that was not logged left behind

    def _warn_saturated(self, metrics: dict[str, float], step: int) -> None:
        """One warning for the layers that saturated since the last one (each layer is named once)."""
        saturation = [metrics.get(dashboard.key(n, "saturation"), 0.0) for n in self.names]
        new = {n: v for n, v in saturated_layers(self.names, saturation).items() if n not in self.saturated}
        if new:
            self.saturated.update(new)
            scales = {n: metrics[dashboard.key(n, "scale")] for n in new}
            rank_zero_warn(saturation_message(new, scales, step))
