"""MNIST-1D: the canonical data built offline, the split, the paper's MLP and CNN, and a short run through the
callback."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from caer_lightning.data import MNIST1DDataModule
from caer_lightning.data.mnist1d import canonical_mnist1d
from caer_lightning.models import MNIST1DClassifier
from caer_lightning.models.mnist1d import CNN, MLP


@pytest.fixture(scope="module")
def data() -> MNIST1DDataModule:
    module = MNIST1DDataModule()
    module.setup("fit")
    return module


@pytest.mark.slow  # builds MNIST-1D: about 1 s of NumPy each time
def test_the_data_is_the_published_mnist1d(monkeypatch):
    """Values of the published mnist1d_data.pkl (the arrays `get_dataset` downloads), built here without a network."""
    import mnist1d.data
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must be built, not downloaded")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(mnist1d.data, "get_dataset", no_network)
    arrays = canonical_mnist1d()
    assert arrays["x"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40)
    assert arrays["y"][:12].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9]
    assert arrays["y_test"][:12].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7]
    assert np.bincount(arrays["y"]).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    assert arrays["x"][0, :4].tolist() == pytest.approx([-0.3320056674, -0.4719103657, -0.7786970763, -1.0097408295])
    assert arrays["x_test"][-1, -3:].tolist() == pytest.approx([0.6598756471, 0.8777343498, 1.1931518368])
    assert float(arrays["x"].sum()) == pytest.approx(-51.78747, abs=1e-4)
    assert float(np.abs(arrays["x"]).sum()) == pytest.approx(118338.2951, abs=1e-3)


@pytest.mark.slow  # builds MNIST-1D: about 1 s of NumPy each time
def test_building_leaves_the_global_random_states_alone():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    canonical_mnist1d()  # seeds both with 42 inside
    assert (random.random(), np.random.rand()) == expected


@pytest.mark.slow  # builds MNIST-1D: about 1 s of NumPy each time
def test_splits(data):
    train, val, test = (data.splits[s].tensors for s in ("train", "val", "test"))
    assert train[0].shape == (3500, 40) and val[0].shape == (500, 40) and test[0].shape == (1000, 40)
    assert train[0].dtype == torch.float32 and train[1].dtype == torch.long
    rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731
    assert not rows(train[0]) & rows(val[0]) and not rows(train[0]) & rows(test[0])
    assert len(rows(train[0]) | rows(val[0])) == 4000  # the 4,000 canonical training signals, each once
    again = MNIST1DDataModule()
    again.setup("fit")
    assert torch.equal(again.splits["val"].tensors[0], val[0])
    other = MNIST1DDataModule(seed=1)
    other.setup("fit")
    assert not torch.equal(other.splits["val"].tensors[0], val[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_size=0), r"val_size=0 is not supported; accepted values: 1 <= val_size <= 3999"),
    (dict(val_size=4000), r"val_size=4000 is not supported"),
    (dict(batch_size=0), r"batch_size=0 is not supported; accepted values: an int >= 1"),
])
def test_bad_data_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNIST1DDataModule(**kwargs)


def test_the_papers_models():
    cnn, mlp = CNN(), MLP()
    assert sum(p.numel() for p in cnn.parameters()) == 150 + 1900 + 1900 + 1260  # 3 convs (25 ch) + Linear(125, 10)
    assert sum(p.numel() for p in mlp.parameters()) == 4100 + 10100 + 1010
    x = torch.randn(7, 40)
    assert cnn(x).shape == mlp(x).shape == (7, 10)
    assert sum(isinstance(m, torch.nn.ReLU) for m in cnn.modules()) == 3
    assert sum(isinstance(m, torch.nn.ReLU) for m in mlp.modules()) == 2
    h = mlp.act1(mlp.linear1(x))
    assert torch.allclose(mlp(x), mlp.linear3(h + mlp.act2(mlp.linear2(h))))  # the residual of the paper's MLP


@pytest.mark.parametrize("kwargs, message", [
    (dict(net="gru"), r"net='gru' is not supported; accepted values: mlp, cnn"),
    (dict(scheduler_interval="batch"), r"scheduler_interval='batch'; accepted values: epoch, step"),
])
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MNIST1DClassifier(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["cnn", "mlp"])
def test_a_short_run_through_the_callback_learns(net, tmp_path):
    import lightning.pytorch as pl

    from caer_lightning import CAReLU, CAReLUCallback

    pl.seed_everything(0)
    callback = CAReLUCallback()
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path)
    model = MNIST1DClassifier(net=net)
    trainer.fit(model, MNIST1DDataModule())
    (scores,) = trainer.test(model, MNIST1DDataModule(), verbose=False)
    assert callback.swapped == {"cnn": ["model.features.1", "model.features.3", "model.features.5"],
                                "mlp": ["model.act1", "model.act2"]}[net]
    assert sum(isinstance(m, CAReLU) for m in model.modules()) == len(callback.swapped)
    assert scores["test_acc"] > 0.3  # after 140 steps; chance is 0.1
