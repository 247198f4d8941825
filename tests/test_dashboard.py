"""Dashboards: the docs/spec.md §4 scalars, custom-scalars layout, histograms and heat maps, read back from disk."""

from __future__ import annotations

import copy
import csv
import functools
import io

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from caer_lightning import CAReLU, CAReLUCallback, swap_activations
from caer_lightning import dashboard
from caer_lightning.dashboard import QUANTITIES
from caer_lightning.functional import competition
from helpers import TinyNet, loader, trainer

LAYERS = ["net.2", "net.5"]
EVERY, STEPS = 2, 9  # logged steps 0, 2, 4, 6, 8: the last step is logged, so its α, β are the final ones


def fit_with(logger, **callback_kwargs):
    model = TinyNet()
    callback = CAReLUCallback(alpha_init=-2.0, beta_init=0.3, log_every_n_steps=EVERY, **callback_kwargs)
    trainer(logger=logger, callbacks=[callback], max_steps=STEPS, max_epochs=10, log_every_n_steps=EVERY).fit(
        model, loader())
    return model


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    logger = TensorBoardLogger(tmp_path_factory.mktemp("tb"), name="run")
    model = fit_with(logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    events.Reload()
    return model, events


def test_scalars_for_every_layer_within_bounds(tensorboard_run):
    model, events = tensorboard_run
    tags = set(events.Tags()["scalars"])
    for layer in LAYERS:
        for quantity in QUANTITIES:
            series = events.Scalars(f"carelu/{layer}/{quantity}")
            assert [e.step for e in series] == [0, 2, 4, 6, 8]
        values = {q: [e.value for e in events.Scalars(f"carelu/{layer}/{q}")] for q in QUANTITIES}
        assert all(0 <= v <= 1 for v in values["energy_ratio"] + values["neg_win"])
        assert all(abs(v) < 2.0 for v in values["scale"])
        module = model.get_submodule(layer)
        assert values["alpha"][-1] == pytest.approx(module.alpha.item(), abs=1e-7)
        assert values["beta"][-1] == pytest.approx(module.beta.item(), abs=1e-7)
        assert len(set(values["alpha"])) > 1, "alpha must train"
    assert {f"carelu/{layer}/{q}" for layer in LAYERS for q in QUANTITIES} <= tags
    # α = -2, β = 0.3: groups with p > ~0.15 get s < 0, so the negatives win in some groups
    assert any(e.value > 0 for layer in LAYERS for e in events.Scalars(f"carelu/{layer}/neg_win"))


def test_custom_scalars_layout_one_chart_per_quantity(tensorboard_run):
    _, events = tensorboard_run
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    (category,) = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert charts == {q: [f"carelu/{layer}/{q}" for layer in LAYERS] for q in QUANTITIES}


def test_histograms_of_p_per_layer(tensorboard_run):
    _, events = tensorboard_run
    for layer in LAYERS:
        histograms = events.Histograms(f"carelu/{layer}/p")
        assert [h.step for h in histograms] == [4, 8, 9]  # at each epoch end (4 batches an epoch; max_steps 9)
        value = histograms[0].histogram_value
        assert sum(value.bucket) == value.num == 2 * 16  # steps 0 and 2 of epoch 0, 16 samples each
        assert 0 <= value.min <= value.sum / value.num <= value.max <= 1


def test_heat_maps_are_figures_logged_at_epoch_ends(tensorboard_run):
    """Drawn at the end of training, and at an epoch end only when that keeps them under 1% of the training
    time (these epochs take milliseconds: never)."""
    _, events = tensorboard_run
    for tag in ("carelu/energy_ratio_map", "carelu/scale_map", "carelu/saturation_map"):
        images = events.Images(tag)
        assert [i.step for i in images] == [9]
        last = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert last.size[0] >= 600 and len(set(last.convert("RGB").tobytes())) > 10, f"{tag} is not a drawn figure"


def test_train_end_summary_has_one_row_per_layer(tensorboard_run):
    model, events = tensorboard_run
    (text,) = events.Tensors("carelu/summary/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    rows = [line for line in table.splitlines() if line.startswith("| net.")]
    assert [row.split("|")[1].strip() for row in rows] == LAYERS
    for row, layer in zip(rows, LAYERS):
        cells = [c.strip() for c in row.split("|")[2:-1]]
        module = model.get_submodule(layer)
        assert float(cells[3]) == pytest.approx(module.alpha.item(), rel=1e-3)  # α, β at the end of training
        assert float(cells[4]) == pytest.approx(module.beta.item(), rel=1e-3)
        assert cells[5] == "flipped sign"  # α = −2, β = 0.3: negatives win in some groups, nothing saturates
    final_scale = events.Scalars("carelu/net.2/scale")[-1].value
    assert float(rows[0].split("|")[3]) == pytest.approx(final_scale, rel=1e-3)


def test_logged_scale_and_energy_ratio_equal_values_recomputed_from_the_batch(tmp_path):
    """Step 0: the logged means are recomputed from the first batch's inputs to each layer and α, β at init."""
    model = TinyNet()
    initial = copy.deepcopy(model)
    logger = CSVLogger(tmp_path, name="run")
    callback = CAReLUCallback(alpha_init=-2.0, beta_init=0.3, log_every_n_steps=EVERY)
    trainer(logger=logger, callbacks=[callback], max_steps=1, log_every_n_steps=1).fit(model, loader())
    swap_activations(initial, factory=lambda old: CAReLU(alpha_init=-2.0, beta_init=0.3))  # net.5 sees net.2's CAReLU
    inputs = {}
    def keep_input(module, args, output, index):
        inputs.setdefault(index, args[0])  # returns None: the output is left alone

    hooks = [initial.net[i].register_forward_hook(functools.partial(keep_input, index=i)) for i in (2, 5)]
    initial.train()
    with torch.no_grad():
        initial(next(iter(loader()))[0])
    for hook in hooks:
        hook.remove()
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["carelu/net.2/scale"])
    for index, layer in zip((2, 5), LAYERS):
        p = competition(inputs[index])
        scale = 2.0 * torch.tanh(-2.0 * p + 0.3)
        assert float(row[f"carelu/{layer}/energy_ratio"]) == pytest.approx(p.mean().item(), rel=1e-5), layer
        assert float(row[f"carelu/{layer}/scale"]) == pytest.approx(scale.mean().item(), rel=1e-5)
        assert float(row[f"carelu/{layer}/neg_win"]) == pytest.approx((scale < 0).float().mean().item())
        assert float(row[f"carelu/{layer}/saturation"]) == pytest.approx((-2.0 * p + 0.3).abs().mean().item(), rel=1e-5)


@pytest.mark.slow
def test_heat_maps_are_drawn_when_the_budget_allows(tmp_path, monkeypatch):
    from caer_lightning.callbacks import heat_maps

    monkeypatch.setattr(heat_maps, "FIGURE_BUDGET", 1e9)  # any epoch is long enough: a map at every epoch end
    logger = TensorBoardLogger(tmp_path, name="run")
    fit_with(logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [i.step for i in events.Images("carelu/scale_map")] == [4, 8, 9]


def test_heatmap_figure_reads_as_labelled():
    names = ["stem.act", "block1.act", "block2.act"]
    history = torch.tensor([[0.1, -1.5, 0.9], [0.2, -1.0, 1.1], [0.3, 0.5, 1.3], [0.4, 1.0, 1.5]])  # steps × layers
    figure = dashboard.heatmap_figure(history, [0, 50, 100, 150], names, title="scale", label="s", low=-2.0,
                                      high=2.0, diverging=True)
    axes, colourbar = figure.axes
    assert [t.get_text() for t in axes.get_yticklabels()] == names  # model order, input side on top
    image = axes.get_images()[0]
    assert image.get_array().tolist() == history.T.tolist()  # row i is layer i, column j is logged step j
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "50", "100", "150"]
    assert colourbar.get_ylim() == pytest.approx((-2.0, 2.0))
    assert image.norm(0.0) == pytest.approx(0.5) and image.norm(-2.0) == 0.0 and image.norm(2.0) == 1.0
    sequential = dashboard.heatmap_figure(history.abs(), [0, 1, 2, 3], names, title="p", label="p", low=0.0, high=1.0)
    assert sequential.axes[0].get_images()[0].norm(0.5) == pytest.approx(0.5)
    assert sequential.axes[1].get_ylim() == pytest.approx((0.0, 1.0))


def test_value_range_is_the_finite_values_taken():
    values = torch.tensor([[0.8, float("nan")], [1.42, float("inf")], [0.95, 1.1]])
    assert dashboard.value_range(values) == pytest.approx((0.8, 1.42))
    assert dashboard.value_range(torch.full((2, 3), 0.7)) == pytest.approx((0.7 - 5e-4, 0.7 + 5e-4))  # widened
    assert dashboard.value_range(torch.tensor([float("nan")])) == (0.0, 1.0)


def test_a_diverging_map_reaches_zero_when_all_values_have_one_sign():
    history = torch.tensor([[0.8, 1.2], [0.9, 1.4]])
    figure = dashboard.heatmap_figure(history, [0, 1], ["a", "b"], title="s", label="s", low=0.8, high=1.4,
                                      diverging=True)
    image = figure.axes[0].get_images()[0]
    assert image.norm(0.0) == pytest.approx(0.5) and image.norm(1.4) == pytest.approx(1.0)
    assert figure.axes[1].get_ylim()[0] == pytest.approx(-dashboard.MIN_COLOUR_SPAN)


@pytest.mark.parametrize("layers", [17, 120])
def test_heatmap_labels_never_overlap(layers):
    names = [f"layer{i}.act" for i in range(layers)]
    figure = dashboard.heatmap_figure(torch.rand(5, layers), list(range(5)), names, title="p", label="p",
                                      low=0.0, high=1.0)
    axes = figure.axes[0]
    figure.canvas.draw()
    labels = [t for t in axes.get_yticklabels() if t.get_text()]
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.y1 <= b.y0 + 0.5 or b.y1 <= a.y0 + 0.5 for a, b in zip(boxes, boxes[1:]))
    assert labels[0].get_text() == "layer0.act" and (layers > 40 or len(labels) == layers)


@pytest.mark.slow
def test_trainer_cadence_is_used_and_zero_turns_logging_off(tmp_path):
    logger = CSVLogger(tmp_path, name="every3")
    trainer(logger=logger, callbacks=[CAReLUCallback()], max_steps=7, max_epochs=5, log_every_n_steps=3).fit(
        TinyNet(), loader()
    )
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r.get("carelu/net.2/scale")] == [0, 3, 6]
    logger = CSVLogger(tmp_path, name="off")
    trainer(logger=logger, callbacks=[CAReLUCallback(log_every_n_steps=0)], max_steps=7, max_epochs=5,
            log_every_n_steps=3).fit(TinyNet(), loader())
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        header = handle.readline()
    assert "carelu/" not in header


@pytest.mark.slow
def test_histograms_can_be_turned_off(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    fit_with(logger, log_histograms=False)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["histograms"] == [] and events.Tags()["images"]


@pytest.mark.slow
def test_csv_logger_gets_the_same_scalar_keys(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    fit_with(logger)
    with open(f"{logger.log_dir}/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = {f"carelu/{layer}/{q}" for layer in LAYERS for q in QUANTITIES}
    assert expected <= set(rows[0])
    logged = [r for r in rows if r["carelu/net.2/energy_ratio"]]
    assert [int(r["step"]) for r in logged] == [0, 2, 4, 6, 8]


def test_logging_off_measures_nothing(tmp_path):
    model = TinyNet()
    callback = CAReLUCallback(log_every_n_steps=0)
    trainer(logger=CSVLogger(tmp_path), callbacks=[callback], max_steps=3, log_every_n_steps=1).fit(model, loader())
    assert not any(m.track_statistics or m.pop_statistics() is not None
                   for m in model.modules() if isinstance(m, CAReLU))


def _table(rows: list[dict]) -> torch.Tensor:
    """A statistics table from per-layer field values and histogram counts, laid out by field name."""
    from caer_lightning import statistics

    table = torch.zeros(len(rows), statistics.WIDTH)
    for row, values in zip(table, rows):
        for field, value in values.items():
            if field == "histogram":
                statistics.histogram(row)[:] = torch.tensor(value, dtype=torch.float32)
            else:
                row[statistics.FIELDS.index(field)] = value
    return table


def test_scalars_are_means_per_group_and_skip_layers_that_did_not_run():
    table = _table([dict(sum_p=3.0, sum_s=-2.0, neg_win=1.0, sum_saturation=8.0, groups=4.0), dict()])
    metrics = dashboard.scalars(["a", "b"], table, torch.tensor([[0.5, 1.5], [0.0, 0.25]]))
    assert metrics == {"carelu/a/energy_ratio": 0.75, "carelu/a/scale": -0.5, "carelu/a/neg_win": 0.25,
                       "carelu/a/saturation": 2.0, "carelu/a/alpha": 0.5, "carelu/a/beta": 1.5,
                       "carelu/b/alpha": 0.0, "carelu/b/beta": 0.25}


def test_histograms_are_written_from_the_binned_counts():
    class Writer:
        def __init__(self):
            self.calls = []

        def add_histogram_raw(self, tag, **kwargs):
            self.calls.append((tag, kwargs))

    counts = [0.0] * 20
    counts[3], counts[7] = 2.0, 1.0  # p in [0.15, 0.2) twice and in [0.35, 0.4) once
    table = _table([dict(groups=3.0, sum_p=0.9, sum_p2=0.3, histogram=counts), dict(groups=0.0)])
    writer = Writer()
    dashboard.write_histograms(writer, ["a", "b"], table, step=7)
    (tag, kwargs), = writer.calls  # nothing for a layer without counts
    assert tag == "carelu/a/p"
    assert kwargs["min"] == pytest.approx(0.15) and kwargs["max"] == pytest.approx(0.40)
    assert (kwargs["num"], kwargs["sum"], kwargs["sum_squares"]) == pytest.approx((3.0, 0.9, 0.3))
    assert kwargs["bucket_limits"] == pytest.approx([(i + 1) * 0.05 for i in range(20)])
    assert kwargs["bucket_counts"] == counts and kwargs["global_step"] == 7


def test_summary_table_and_layout_exactly():
    final = {"carelu/a/energy_ratio": 0.61234, "carelu/a/scale": 1.0, "carelu/a/neg_win": 0.0,
             "carelu/a/alpha": -0.5, "carelu/a/beta": 0.549306}
    table = dashboard.summary_table(["a", "b"], final, {"a": "saturated"})
    assert table.splitlines() == [
        "| layer | energy ratio | scale | neg-win | α | β | flags |", "|---|---|---|---|---|---|---|",
        "| a | 0.6123 | 1 | 0 | -0.5 | 0.5493 | saturated |", "| b | – | – | – | – | – |  |",
    ]
    layout = dashboard.custom_scalars_layout(["a", "b"])
    assert list(layout) == ["CAReLU"] and list(layout["CAReLU"]) == list(QUANTITIES)
    assert layout["CAReLU"]["beta"] == ["Multiline", ["carelu/a/beta", "carelu/b/beta"]]


@pytest.mark.parametrize("count", [1, 2, 9, 10, 11, 17, 33, 120])
def test_thinned_ticks_cover_the_rows_evenly(count):
    from matplotlib.ticker import MaxNLocator

    ticks = dashboard._thinned(MaxNLocator(nbins=10, integer=True, min_n_ticks=1), count)
    steps = {b - a for a, b in zip(ticks, ticks[1:])}
    assert ticks[0] == 0 and ticks[-1] < count and len(steps) <= 1 and len(ticks) <= 11
    step = steps.pop() if steps else 1
    assert count - 1 - ticks[-1] < step  # the last rows are never left without a nearby label
    if count <= 10:
        assert ticks == list(range(count))


@pytest.mark.parametrize("variant", ["count", "energy", "l1"])
def test_histogram_of_p_puts_the_ends_of_0_1_into_the_end_bins(variant):
    from caer_lightning import statistics

    layer = CAReLU(variant=variant, reduction="channel")
    layer.train()
    layer.track_statistics = True
    z = torch.rand(2, 3, 4) + 0.1
    z[1] = -z[1]  # sample 0: every entry positive (p = 1); sample 1: none (p = 0)
    layer(z)
    counts = statistics.histogram(layer.pop_statistics())
    expected = torch.zeros(statistics.HISTOGRAM_BINS)
    expected[0], expected[-1] = 3, 3  # three channels each
    torch.testing.assert_close(counts, expected, rtol=0, atol=0)
