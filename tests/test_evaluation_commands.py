"""`caer validate/test/predict` after `caer fit`: they log into the run that wrote the checkpoint (no new
version_N, no "dirpath has changed"), `caer predict` writes every prediction to a CSV file and says where, and
`caer` keeps Lightning's banners and a torch deprecation raised inside Lightning off the screen."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import BasePredictionWriter

from caer_lightning import cli, load_checkpoint
from caer_lightning.callbacks.prediction_writer import PredictionWriter
from caer_lightning.lightning_cli import build_cli, checkpoint_run, log_into_checkpoint_run, prediction_summary
from caer_lightning.models import TimmClassifier

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SHORT = ["--trainer.enable_progress_bar=false", "--trainer.limit_test_batches=1", "--trainer.limit_val_batches=1"]


def _args(tmp_path: Path) -> list[str]:
    return ["--config", QUICKSTART, f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", *SHORT]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-epoch quickstart run (two training batches): its folder, `<tmp>/quickstart/version_0`."""
    tmp_path = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", sys.argv[:1])  # as conftest does for each test (this fixture runs before)
        build_cli(["fit", *_args(tmp_path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                   "--trainer.log_every_n_steps=1"])
    run = tmp_path / "quickstart" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.mark.slow
def test_test_logs_into_the_run_that_wrote_the_checkpoint(trained):
    fit_config = (trained / "config.yaml").read_text()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_run = build_cli(["test", *_args(trained.parents[1]), "--ckpt_path", str(trained / "checkpoints/last.ckpt")])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert cli_run.trainer.log_dir == str(trained / "test")
    assert sorted(p.name for p in trained.parent.iterdir()) == ["version_0"]  # no new version
    assert (trained / "test" / "config.yaml").is_file() and any((trained / "test").glob("events.out.tfevents.*"))
    assert (trained / "config.yaml").read_text() == fit_config  # the training run's config is left as it was
    assert "test_acc" in cli_run.trainer.callback_metrics


@pytest.mark.slow
def test_predict_writes_every_prediction_and_says_where(trained, caplog):
    checkpoint = trained / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        cli_run = build_cli(["predict", *_args(trained.parents[1]), "--ckpt_path", str(checkpoint)])
    path = trained / "predict" / "predictions.csv"
    with path.open() as file:
        rows = list(csv.DictReader(file))
    x, labels = cli_run.datamodule.splits["test"].tensors
    assert [int(r["index"]) for r in rows] == list(range(len(x)))  # every test sample once, in order
    probabilities = torch.tensor([[float(r[f"p{k}"]) for k in range(10)] for r in rows])
    model = load_checkpoint(TimmClassifier, checkpoint).eval()
    with torch.no_grad():
        expected = model(x).softmax(dim=-1)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=1e-4)  # written with 6 significant digits
    assert [int(r["prediction"]) for r in rows] == expected.argmax(1).tolist()
    assert [float(r["confidence"]) for r in rows] == pytest.approx(expected.max(1).values.tolist(), rel=1e-5)
    assert [int(r["label"]) for r in rows] == labels.tolist()
    (writer,) = [c for c in cli_run.trainer.callbacks if isinstance(c, PredictionWriter)]
    accuracy = (expected.argmax(1) == labels).double().mean().item()
    assert writer.rows == len(x) and writer.accuracy == pytest.approx(accuracy)
    assert f"{len(x)} predictions written to {path}" in caplog.text
    assert f"accuracy against the batches' labels: {accuracy:.4f}" in caplog.text


@pytest.mark.slow
def test_predict_leaves_a_users_own_writer_alone(trained, tmp_path):
    class Collect(BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.batches = 0

        def write_on_batch_end(self, *args):
            self.batches += 1

    own = Collect()
    built = build_cli(_args(tmp_path), run=False)
    built.trainer.callbacks.append(own)
    built.before_predict()
    assert [c for c in built.trainer.callbacks if isinstance(c, BasePredictionWriter)] == [own]
    without = build_cli(_args(tmp_path), run=False)
    without.before_predict()
    (added,) = [c for c in without.trainer.callbacks if isinstance(c, BasePredictionWriter)]
    assert isinstance(added, PredictionWriter) and added.path == Path(without.trainer.log_dir) / "predictions.csv"


def _logger(**init_args):
    return Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=Namespace(**init_args))


@pytest.mark.slow
def test_only_the_run_that_wrote_the_checkpoint_is_reused(tmp_path):
    ckpt = str(tmp_path / "logs" / "exp" / "version_3" / "checkpoints" / "last.ckpt")
    assert checkpoint_run(ckpt) == (tmp_path / "logs" / "exp", "version_3")
    assert checkpoint_run(str(tmp_path / "model.ckpt")) is None and checkpoint_run("best") is None

    def reused(logger, ckpt_path=ckpt):
        config = Namespace(ckpt_path=ckpt_path, trainer=Namespace(logger=logger))
        done = log_into_checkpoint_run(config, "test")
        return done, config.trainer.logger

    done, logger = reused(_logger(save_dir=str(tmp_path / "logs"), name="exp", version=None, sub_dir=None))
    assert done and logger.init_args.version == "version_3" and logger.init_args.sub_dir == "test"
    done, logger = reused([_logger(save_dir=str(tmp_path / "logs"), name="exp", version=None, sub_dir="mine")])
    assert done and logger[0].init_args.sub_dir == "mine"  # the user's sub_dir is kept
    assert not reused(_logger(save_dir=str(tmp_path / "logs"), name="other", version=None))[0]
    assert not reused(_logger(save_dir=str(tmp_path / "logs"), name="exp", version=7))[0]  # the user chose one
    assert not reused(_logger(save_dir=str(tmp_path / "logs"), name="exp", version=None), ckpt_path=None)[0]
    csv_logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                           init_args=Namespace(save_dir=str(tmp_path / "logs"), name="exp", version=None))
    assert not reused(csv_logger)[0] and csv_logger.init_args.version is None
    assert not reused(True)[0]


def _trainer(world_size: int = 1, rank: int = 0, dataloaders: int = 1):
    return SimpleNamespace(world_size=world_size, global_rank=rank, num_predict_batches=[1] * dataloaders)


def test_prediction_writer_columns(tmp_path):
    writer = PredictionWriter(tmp_path / "out" / "values.csv")
    trainer = _trainer(dataloaders=2)
    writer.on_predict_start(trainer, None)
    writer.write_on_batch_end(trainer, None, torch.tensor([0.5, -1.25]), [4, 7], torch.zeros(2, 3), 0, 1)
    writer.on_predict_end(trainer, None)
    rows = list(csv.reader((tmp_path / "out" / "values.csv").open()))
    assert rows == [["dataloader", "index", "value"], ["1", "4", "0.5"], ["1", "7", "-1.25"]]
    assert writer.accuracy is None and writer.rows == 2


def test_prediction_writer_numbers_rows_and_finds_labels(tmp_path):
    writer = PredictionWriter(tmp_path / "p.csv")
    trainer = _trainer()
    writer.on_predict_start(trainer, None)
    labelled = (torch.zeros(2, 3), torch.tensor([1, 0]))
    writer.write_on_batch_end(trainer, None, torch.tensor([0.25, 0.5]), None, labelled, 0, 0)
    writer.write_on_batch_end(trainer, None, torch.tensor([0.75, 1.0]), None, labelled, 1, 0)
    writer.on_predict_end(trainer, None)
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows == [["index", "value", "label"], ["0", "0.25", "1"], ["1", "0.5", "0"], ["2", "0.75", "1"],
                    ["3", "1", "0"]]  # without batch_indices the index runs on across batches
    assert writer.rows == 4 and writer.accuracy is None  # values are not classes: no accuracy
    for not_labels in ((torch.zeros(2, 3), torch.tensor([0.5, 1.5])), (torch.zeros(2, 3), torch.tensor([1, 0, 1])),
                       (torch.zeros(2, 3), torch.tensor([[1], [0]])), [torch.zeros(2, 3)], torch.zeros(2, 3)):
        writer.on_predict_start(trainer, None)
        writer.write_on_batch_end(trainer, None, torch.tensor([0.25, 0.5]), None, not_labels, 0, 0)
        writer.on_predict_end(trainer, None)
        assert next(csv.reader((tmp_path / "p.csv").open())) == ["index", "value"], not_labels


def test_prediction_writer_refuses_what_it_cannot_write(tmp_path):
    writer = PredictionWriter(tmp_path / "p.csv")
    trainer = _trainer()
    writer.on_predict_start(trainer, None)
    with pytest.raises(ValueError, match=r"shape \(N, C\) or \(N,\); predict_step returned a tensor of shape \(2, 3, 4\)"):
        writer.write_on_batch_end(trainer, None, torch.zeros(2, 3, 4), None, None, 0, 0)
    with pytest.raises(ValueError, match="returned <class 'dict'>"):
        writer.write_on_batch_end(trainer, None, {"logits": torch.zeros(2, 3)}, None, None, 0, 0)
    scores, labels = torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])
    writer.write_on_batch_end(trainer, None, scores, None, (torch.zeros(2, 5), labels), 0, 0)
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3  # on disk as the batch ends, file still open
    with pytest.raises(ValueError, match="batch 1 gives the columns"):
        writer.write_on_batch_end(trainer, None, scores, None, torch.zeros(2, 5), 1, 0)  # now without labels
    writer.on_exception(trainer, None, ValueError())
    rows = list(csv.reader((tmp_path / "p.csv").open()))  # what was written before the failure is kept
    assert rows == [["index", "prediction", "confidence", "label", "p0", "p1"], ["0", "1", "0.9", "1", "0.1", "0.9"],
                    ["1", "0", "0.8", "1", "0.8", "0.2"]]
    assert writer.accuracy == 0.5


def test_each_process_writes_its_own_file(tmp_path):
    writer = PredictionWriter(tmp_path / "predictions.csv")
    assert writer.output_path(_trainer()) == tmp_path / "predictions.csv"
    assert writer.output_path(_trainer(world_size=4, rank=2)) == tmp_path / "predictions.rank2.csv"


def test_prediction_summary_shows_the_first_rows(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("index,prediction,confidence,label,p0,p1\n" + "".join(f"{i},1,0.9,1,0.1,0.9\n" for i in range(8)))
    lines = prediction_summary(path, 8, 0.25).splitlines()
    assert lines[0] == f"caer predict: 8 predictions written to {path} (accuracy against the batches' labels: 0.2500)"
    assert lines[1:] == ["first rows:", "  index,prediction,confidence,label,p0,...",
                         *(f"  {i},1,0.9,1,0.1,..." for i in range(5))]


def test_caer_keeps_lightnings_banner_and_a_deprecation_inside_lightning_off_the_screen(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_lightning_notices()
        message = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        for module in ("lightning.pytorch.utilities._pytree", "pytorch_lightning.utilities._pytree", "mine"):
            warnings.warn_explicit(message, FutureWarning, "x.py", 1, module=module)
        warnings.warn_explicit("something else is deprecated", FutureWarning, "x.py", 1,
                               module="lightning.pytorch.utilities._pytree")
    assert sorted(str(w.message) for w in caught) == [message, "something else is deprecated"]  # only the two
    with caplog.at_level(logging.INFO):
        for name in cli.RANK_ZERO_LOGGERS:
            logging.getLogger(name).info("💡 Tip: try our cloud")
            logging.getLogger(name).info("Restoring states from the checkpoint path at x.ckpt")
    assert "Tip" not in caplog.text and caplog.text.count("Restoring states") == len(cli.RANK_ZERO_LOGGERS)


@pytest.mark.slow
def test_caer_predict_as_users_run_it(trained):
    done = subprocess.run(
        [sys.executable, "-m", "caer_lightning.cli", "predict", *_args(trained.parents[1]),
         "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")],
        capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"predictions written to {trained / 'predict' / 'predictions.csv'}" in output
    assert "Tip:" not in output and "LeafSpec" not in output and "dirpath has changed" not in output
