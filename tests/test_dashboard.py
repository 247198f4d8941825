"""Dashboards: the SPEC §4 scalars, custom-scalars layout, histograms and heat maps, read back from disk."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from caer_lightning import CAReLU, CAReLUCallback
from caer_lightning.dashboard import QUANTITIES, SEQUENTIAL, colorize, heatmap
from helpers import TinyNet, loader, trainer

LAYERS = ["net.2", "net.5"]
EVERY, STEPS = 2, 9  # logged steps 0, 2, 4, 6, 8: the last step is logged, so its α, β are the final ones


def fit_with(logger, **callback_kwargs):
    model = TinyNet()
    callback = CAReLUCallback(alpha_init=-2.0, beta_init=0.3, log_every_n_steps=EVERY, **callback_kwargs)
    trainer(logger=logger, callbacks=[callback], max_steps=STEPS, max_epochs=10).fit(model, loader())
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


def test_heatmap_images(tensorboard_run):
    _, events = tensorboard_run
    for tag in ("carelu/energy_ratio_map", "carelu/scale_map"):
        images = events.Images(tag)
        assert [i.step for i in images] == [4, 8, 9]
        last = Image.open(io.BytesIO(images[-1].encoded_image_string))
        assert last.size[1] == 8 * len(LAYERS) and last.size[0] >= 256
        assert len(set(last.getdata())) > 1, f"{tag} is a single colour"


def test_histograms_can_be_turned_off(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    fit_with(logger, log_histograms=False)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["histograms"] == [] and events.Tags()["images"]


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
    trainer(logger=CSVLogger(tmp_path), callbacks=[callback], max_steps=3).fit(model, loader())
    assert not any(m.track_statistics or m.pop_statistics() is not None
                   for m in model.modules() if isinstance(m, CAReLU))


def test_colorize_and_heatmap_shapes():
    values = torch.tensor([[0.0, 1.0]])
    rgb = colorize(values, SEQUENTIAL)
    assert rgb.shape == (3, 1, 2)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor(SEQUENTIAL[0])) and torch.allclose(rgb[:, 0, 1], torch.tensor(SEQUENTIAL[-1]))
    image = heatmap(torch.rand(1000, 3), 0.0, 1.0, SEQUENTIAL)
    assert image.shape == (3, 24, 512) and 0 <= image.min() and image.max() <= 1
