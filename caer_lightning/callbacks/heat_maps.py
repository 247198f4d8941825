"""Labelled layers × steps heat maps of the energy ratio, the scale and the saturation, drawn on a budget: at an
epoch end (never on a training step) when the training time since the last drawing is long enough to keep the
drawing under FIGURE_BUDGET of it, and at the end of training."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from caer_lightning import dashboard
from caer_lightning.callbacks.monitor import Monitor
from caer_lightning.guards import SATURATION_LIMIT

# The heat maps take a fraction of a second to draw; they are drawn at most as often as keeps them under this
# share of the training time (and always at the end of training).
FIGURE_BUDGET = 0.01
# Before the first drawing its cost is estimated: about 0.2 s a map for 17 layers on a 2-core CPU.
ESTIMATED_SECONDS_PER_LAYER = 0.035


class HeatMaps:
    """The heat maps of one monitor's history, under the tag prefix `tag` (the optimizer group's name)."""

    def __init__(self, tag: str = "carelu") -> None:
        self.tag = tag
        self.drawn_at, self.seconds, self.step = 0.0, 0.0, None  # when, how long, at which step

    def start(self, layers: int) -> None:
        """A new run: the first drawing is due once the estimated cost fits the budget."""
        self.drawn_at, self.seconds, self.step = time.perf_counter(), ESTIMATED_SECONDS_PER_LAYER * layers, None

    def due(self) -> bool:
        return time.perf_counter() - self.drawn_at >= self.seconds / FIGURE_BUDGET

    def draw(self, writers: Sequence[Any], monitor: Monitor, step: int) -> None:
        """Draw the three maps of `monitor`'s history into every writer (once per step)."""
        if not writers or not monitor.history or step == self.step:
            return
        started = time.perf_counter()
        # Colour ranges: the energy ratio over its whole range (0.5 is balance), the scale and the saturation over
        # the values the layers took, so that layers with different values look different.
        scale_low, scale_high = dashboard.value_range(monitor.history_of("sum_s"))
        flipped = scale_low < 0
        scale_title = "scale s = K·tanh(α·p + β); " + ("blue: negatives won" if flipped else "no layer's negatives won")
        maps = (
            ("energy_ratio_map", "energy ratio p (share of the energy carried by positives)", "p", "sum_p", 0.0, 1.0,
             False),
            ("scale_map", scale_title, "s", "sum_s", scale_low, scale_high, flipped),
            ("saturation_map", f"saturation |α·p + β| (above {SATURATION_LIMIT:g}: stuck)", "|α·p + β|",
             "sum_saturation", *dashboard.value_range(monitor.history_of("sum_saturation")), False),
        )
        for name, title, label, field, low, high, diverging in maps:
            figure = dashboard.heatmap_figure(
                monitor.history_of(field), monitor.history_steps, monitor.names, title=title, label=label, low=low,
                high=high, diverging=diverging,
            )
            for writer in writers:
                writer.add_figure(f"{self.tag}/{name}", figure, step, close=False)
        self.step = step
        self.drawn_at = time.perf_counter()
        self.seconds = self.drawn_at - started
