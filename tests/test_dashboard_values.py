"""Dashboards, value by value and without a Trainer: the statistics table, the scalars and histograms recomputed
from the inputs with `competition`, the monitor's epoch histograms, summary and guards, the heat maps' exact
texts, colour maps and sizes, and their drawing budget on a fake clock."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib
import pytest
import torch

from caer_lightning import CAReLU, dashboard, statistics
from caer_lightning.callbacks import heat_maps as heat_maps_module
from caer_lightning.callbacks.heat_maps import HeatMaps
from caer_lightning.callbacks.monitor import Monitor
from caer_lightning.functional import competition
from caer_lightning.guards import NonFiniteCAReLUError

BINS = statistics.HISTOGRAM_BINS


class Recorder:
    """A TensorBoard writer that keeps what it is given."""

    def __init__(self, clock: list[float] | None = None, seconds_per_figure: float = 0.0) -> None:
        self.histograms: list[tuple[str, dict]] = []
        self.figures: list[tuple[str, object, int]] = []
        self.clock, self.seconds_per_figure = clock, seconds_per_figure

    def add_histogram_raw(self, tag, **kwargs):
        self.histograms.append((tag, kwargs))

    def add_figure(self, tag, figure, step, close):
        self.figures.append((tag, figure, step))
        if self.clock is not None:  # writing a figure takes this long on the fake clock
            self.clock[0] += self.seconds_per_figure


def no_log(metrics, at):
    pass


def same(table):
    return table


def bin_counts(p: torch.Tensor) -> list[float]:
    """How many values of p fall in each of the equal-width bins of [0, 1] (1 itself in the last one)."""
    counts = [0.0] * BINS
    for value in p.tolist():
        counts[min(int(value * BINS), BINS - 1)] += 1.0
    return counts


def table_of(rows: list[dict]) -> torch.Tensor:
    """A statistics table from per-layer field values and histogram counts."""
    table = torch.zeros(len(rows), statistics.WIDTH)
    for row, values in zip(table, rows):
        for field, value in values.items():
            if field == "histogram":
                statistics.histogram(row)[:] = torch.tensor(value, dtype=torch.float32)
            else:
                statistics.column(row, field).fill_(value)
    return table


def monitor_of_betas(*betas: float) -> Monitor:
    """A monitor that logged step 0 of one CAReLU per beta (alpha 0: s = 2·tanh(beta), saturation |beta|)."""
    layers = {f"act{i}": CAReLU(beta_init=beta) for i, beta in enumerate(betas)}
    monitor = Monitor()
    monitor.start(layers, every=1)
    monitor.begin_step(0)
    for layer in layers.values():
        layer(torch.randn(2, 3))
    monitor.end_step(1, same, True, no_log)
    return monitor


# --- dashboard: the table, scalars and histograms ---------------------------------------------------------------


def test_collect_gives_a_zero_row_on_the_layers_device_for_a_layer_that_did_not_run():
    ran, idle = CAReLU(), CAReLU()
    ran.track_statistics = True
    x = torch.randn(5, 7)
    ran(x)
    table = dashboard.collect([ran, idle])
    p = competition(x)
    assert statistics.column(table, "groups").tolist() == [5.0, 0.0]
    assert statistics.column(table, "sum_p")[0].item() == pytest.approx(p.sum().item(), rel=1e-6)
    assert statistics.histogram(table)[0].tolist() == bin_counts(p)
    assert torch.equal(table[1], torch.zeros(statistics.WIDTH))
    assert ran.pop_statistics() is None  # collected: reset
    on_meta = dashboard.collect([CAReLU().to("meta")])  # no host copy: the row is made where the layer lives
    assert on_meta.device.type == "meta" and on_meta.shape == (1, statistics.WIDTH)


def test_scalars_of_a_layer_that_saw_a_single_group():
    table = table_of([dict(sum_p=0.25, sum_s=-0.5, neg_win=1.0, sum_saturation=3.5, groups=1.0)])
    metrics = dashboard.scalars(["one"], table, torch.tensor([[0.5, -1.0]]))
    assert metrics == {"carelu/one/energy_ratio": 0.25, "carelu/one/scale": -0.5, "carelu/one/neg_win": 1.0,
                       "carelu/one/saturation": 3.5, "carelu/one/alpha": 0.5, "carelu/one/beta": -1.0}


def test_histogram_range_spans_the_first_to_the_last_filled_bin_after_an_empty_layer():
    counts = [0.0] * BINS
    counts[2], counts[5], counts[11] = 1.0, 4.0, 2.0  # p in [0.10, 0.15), [0.25, 0.30), [0.55, 0.60)
    table = table_of([dict(groups=0.0), dict(groups=7.0, sum_p=2.5, sum_p2=1.0, histogram=counts)])
    writer = Recorder()
    dashboard.write_histograms(writer, ["idle", "act"], table, step=3)
    (tag, kwargs), = writer.histograms  # the empty layer is skipped, the next one still written
    assert tag == "carelu/act/p"
    assert kwargs["min"] == pytest.approx(0.10) and kwargs["max"] == pytest.approx(0.60)
    assert kwargs["bucket_counts"] == counts and kwargs["num"] == 7.0


# --- the monitor ------------------------------------------------------------------------------------------------


def test_monitor_histograms_hold_every_logged_step_of_the_epoch():
    layers = {"idle": CAReLU(), "act": CAReLU()}
    monitor = Monitor()  # histograms on by default
    monitor.start(layers, every=1)
    torch.manual_seed(0)
    batches = [torch.randn(6, 10), torch.randn(5, 10) + 0.5]
    for step, batch in enumerate(batches):
        monitor.begin_step(step)
        layers["act"](batch)
        monitor.end_step(step + 1, same, True, no_log)
    writer = Recorder()
    monitor.write_histograms([writer], step=7)
    p = torch.cat([competition(batch) for batch in batches])
    (tag, kwargs), = writer.histograms  # nothing for the layer that never ran
    assert tag == "carelu/act/p" and kwargs["global_step"] == 7
    assert kwargs["num"] == 11.0  # both logged steps: 6 + 5 samples
    assert kwargs["sum"] == pytest.approx(p.sum().item(), rel=1e-5)
    assert kwargs["sum_squares"] == pytest.approx(p.square().sum().item(), rel=1e-5)
    assert kwargs["bucket_counts"] == bin_counts(p)
    assert kwargs["min"] == pytest.approx(math.floor(p.min().item() * BINS) / BINS)
    assert kwargs["max"] == pytest.approx((math.floor(p.max().item() * BINS) + 1) / BINS)
    monitor.write_histograms([writer], step=8)  # a new epoch with no logged step yet: nothing
    assert len(writer.histograms) == 1


def test_monitor_measures_only_the_forwards_of_the_logged_step():
    layer, monitor, logged = CAReLU(), Monitor(), []
    monitor.start({"act": layer}, every=2)
    torch.manual_seed(1)
    batches = [torch.randn(4, 6) + shift for shift in (0.0, -2.0, 1.0)]
    for step, batch in enumerate(batches):  # step 1 is not logged: its strongly negative batch is not measured
        monitor.begin_step(step)
        layer(batch)
        monitor.end_step(step + 1, same, True, lambda metrics, at: logged.append((at, metrics)))
    assert [at for at, _ in logged] == [0, 2]
    for (at, metrics), batch in zip(logged, (batches[0], batches[2])):
        p = competition(batch)
        assert metrics["carelu/act/energy_ratio"] == pytest.approx(p.mean().item(), rel=1e-5), at


def test_monitor_stop_drops_a_measurement_in_progress():
    layer, monitor, logged = CAReLU(), Monitor(), []
    monitor.start({"act": layer}, every=1)
    monitor.begin_step(0)
    layer(torch.randn(3, 4))
    monitor.stop()  # training ended during the logged step
    assert layer.pop_statistics() is None and not layer.track_statistics
    layer(torch.randn(3, 4))
    assert layer.pop_statistics() is None
    monitor.end_step(1, same, True, lambda metrics, at: logged.append(at))
    assert logged == [] and monitor.history == []


def test_a_monitor_not_started_or_without_layers_measures_nothing():
    monitor, logged, writer = Monitor(), [], Recorder()
    monitor.begin_step(0)
    monitor.end_step(1, same, True, lambda metrics, at: logged.append(at))
    monitor.write_histograms([writer], 1)
    monitor.stop()
    assert logged == [] and writer.histograms == []
    assert (monitor.history, monitor.history_steps, monitor.final_metrics) == ([], [], {})
    monitor.start({}, every=5)
    assert monitor.every == 0
    monitor.begin_step(0)
    monitor.end_step(1, same, True, lambda metrics, at: logged.append(at))
    assert logged == []


def test_monitor_summary_shows_the_final_parameters_not_the_last_logged_ones():
    layer = CAReLU(alpha_init=0.5, beta_init=0.25)
    monitor = Monitor()
    monitor.start({"act": layer}, every=1)
    x = torch.randn(6, 5)
    monitor.begin_step(0)
    layer(x)
    monitor.end_step(1, same, True, no_log)
    with torch.no_grad():  # trained on after the last logged step
        layer.alpha.fill_(-0.75)
        layer.beta.fill_(1.5)
    p = competition(x)
    s = 2.0 * torch.tanh(0.5 * p + 0.25)

    def cells(table: str) -> list[str]:
        return [cell.strip() for cell in table.splitlines()[2].split("|")[1:-1]]

    read = cells(monitor.summary())  # read from the layer
    assert read[0] == "act" and [float(c) for c in read[1:4]] == pytest.approx(
        [p.mean().item(), s.mean().item(), 0.0], rel=1e-3)
    assert read[4:] == ["-0.75", "1.5", ""]
    assert cells(monitor.summary(torch.tensor([[0.125, -2.0]])))[4:6] == ["0.125", "-2"]  # as given


def test_monitor_summary_flags_only_negative_scales_and_saturation_above_the_limit():
    layers = {
        "idle": CAReLU(),  # never runs: no value, no flag
        "damped": CAReLU(beta_init=0.2),  # s = 2·tanh(0.2) = 0.39: damped, not flipped
        "at_limit": CAReLU(beta_init=3.0),  # |α·p + β| = 3 exactly: at the limit, not above it
        "stuck": CAReLU(beta_init=-3.5),
    }
    monitor = Monitor()
    monitor.start(layers, every=1)
    monitor.begin_step(0)
    for name, layer in layers.items():
        if name != "idle":
            layer(torch.randn(3, 5))
    with pytest.warns(UserWarning, match=r"1 layer\(s\) saturated by training step 0: stuck \(mean"):
        monitor.end_step(1, same, True, no_log)
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in monitor.summary().splitlines()[2:]}
    assert rows == {"idle": "", "damped": "", "at_limit": "", "stuck": "flipped sign, saturated"}


def test_non_finite_parameters_on_a_logged_step_name_the_step_and_when():
    layer, monitor = CAReLU(), Monitor()
    monitor.start({"act": layer}, every=3)
    monitor.begin_step(3)
    layer(torch.randn(2, 3))
    with torch.no_grad():
        layer.alpha.fill_(float("inf"))
    with pytest.raises(NonFiniteCAReLUError, match=r"by training step 3 \(found on a logged step\) in act \("):
        monitor.end_step(4, same, True, no_log)


# --- heat maps: texts, colour maps, sizes ---------------------------------------------------------------------


SCALE_TITLE = "scale s = K·tanh(α·p + β); "


def test_heat_maps_tags_titles_and_colour_bar_labels_exactly():
    writer = Recorder()
    HeatMaps().draw([writer], monitor_of_betas(0.5, -0.3), step=4)
    assert [(tag, step) for tag, _, step in writer.figures] == [
        ("carelu/energy_ratio_map", 4), ("carelu/scale_map", 4), ("carelu/saturation_map", 4)]
    figures = [figure for _, figure, _ in writer.figures]
    assert [figure.axes[0].get_title() for figure in figures] == [
        "energy ratio p (share of the energy carried by positives)",
        SCALE_TITLE + "blue: negatives won",
        "saturation |α·p + β| (above 3: stuck)",
    ]
    assert [figure.axes[1].get_ylabel() for figure in figures] == ["p", "s", "|α·p + β|"]
    assert [figure.axes[0].get_images()[0].get_cmap().name for figure in figures] == ["viridis", "RdBu_r", "viridis"]


def test_a_scale_of_exactly_zero_is_not_a_win_of_the_negatives():
    writer = Recorder()
    HeatMaps().draw([writer], monitor_of_betas(0.0, 0.9), step=1)  # s = 0 and s = 2·tanh(0.9)
    _, scale, _ = writer.figures[1]
    assert scale.axes[0].get_title() == SCALE_TITLE + "no layer's negatives won"
    image = scale.axes[0].get_images()[0]
    assert image.get_cmap().name == "viridis" and image.norm(0.0) == pytest.approx(0.0)  # 0: the lowest colour
    assert scale.axes[1].get_ylim() == pytest.approx((0.0, 2.0 * math.tanh(0.9)))


def test_heatmap_figure_ignores_matplotlib_defaults():
    names = ["stem.act", "block1.act", "block2.act"]
    steps = list(range(0, 120, 10))  # 12 logged steps
    history = torch.rand(len(steps), len(names))
    defaults = {"figure.dpi": 72, "image.cmap": "gray", "image.aspect": "equal", "image.interpolation": "bilinear",
                "ytick.labelsize": 12}
    with matplotlib.rc_context(defaults):
        sequential = dashboard.heatmap_figure(history, steps, names, title="p", label="energy", low=0.0, high=1.0)
        diverging = dashboard.heatmap_figure(history - 0.5, steps, names, title="s", label="slope", low=-0.5,
                                             high=0.5, diverging=True)
    for figure, cmap, label in ((sequential, "viridis", "energy"), (diverging, "RdBu_r", "slope")):
        axes, colour_bar = figure.axes
        image = axes.get_images()[0]
        # 800 px wide, 2 in plus 0.16 in a layer high, at 100 dpi whatever the user's settings
        assert figure.dpi == 100 and tuple(figure.get_size_inches()) == pytest.approx((8.0, 2.0 + 0.16 * 3))
        assert image.get_cmap().name == cmap and image.get_interpolation() == "nearest"  # one cell a value
        assert axes.get_aspect() == "auto"  # the map fills the axes, however many steps and layers
        assert axes.get_xlabel() == "training step" and colour_bar.get_ylabel() == label
        assert [t.get_fontsize() for t in axes.get_yticklabels()] == [9.0] * 3  # few layers: the largest labels
        shown = [int(t.get_text()) for t in axes.get_xticklabels()]
        gaps = {b - a for a, b in zip(shown, shown[1:])}
        assert shown[0] == 0 and len(shown) <= 11 and len(gaps) == 1 and set(shown) <= set(steps)


@pytest.mark.slow
def test_with_hundreds_of_layers_labels_shrink_to_5_points_then_every_kth_layer_is_named():
    names = [f"layer{i}.act" for i in range(400)]
    figure = dashboard.heatmap_figure(torch.rand(3, 400), [0, 1, 2], names, title="p", label="p", low=0.0, high=1.0)
    assert tuple(figure.get_size_inches()) == pytest.approx((8.0, 30.0))  # the height stops growing at 30 in
    axes = figure.axes[0]
    figure.canvas.draw()
    labels = [t for t in axes.get_yticklabels() if t.get_text()]
    assert {t.get_fontsize() for t in labels} == {5.0}  # the smallest readable size
    named = [names.index(t.get_text()) for t in labels]
    (every,) = {b - a for a, b in zip(named, named[1:])}
    assert named[0] == 0 and 1 < every <= 3 and 400 - named[-1] <= every  # evenly thinned, as many as fit
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.y1 <= b.y0 + 0.5 or b.y1 <= a.y0 + 0.5 for a, b in zip(boxes, boxes[1:]))


# --- heat maps: the drawing budget, on a fake clock -------------------------------------------------------------


def test_heat_maps_are_due_once_a_hundred_times_their_cost_has_passed(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(heat_maps_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    maps = HeatMaps()
    maps.start(layers=2)  # estimated 2 × 0.035 s: due after 100 × 0.07 s = 7 s
    estimate = 2 * heat_maps_module.ESTIMATED_SECONDS_PER_LAYER / heat_maps_module.FIGURE_BUDGET
    assert estimate == pytest.approx(7.0)
    now[0] = 6.9
    assert not maps.due()
    now[0] = estimate
    assert maps.due()
    now[0] = 100.0
    writer = Recorder(clock=now, seconds_per_figure=0.25)  # the three maps take 0.75 s
    maps.draw([writer], monitor_of_betas(0.5, 0.7), step=3)
    assert now[0] == pytest.approx(100.75)
    now[0] = 100.75 + 74.9
    assert not maps.due()  # 0.75 s drawing: not before 75 s more training
    now[0] = 100.75 + 75.1
    assert maps.due()
