"""SNLI: reading the official JSONL release (on a sample the tests write), the vocabulary, batches, the pair
classifier and a short run through the callback."""

from __future__ import annotations

import pytest
import torch

from caer_lightning import CAReLU, CAReLUCallback
from caer_lightning.data import SNLIDataModule
from caer_lightning.data.snli import PAD, SNLI_URL, UNKNOWN, WordVocabulary, read_snli, tokenize
from caer_lightning.models import SNLIClassifier
from caer_lightning.models.snli import SentenceEncoder
from helpers import SNLI_SAMPLE, write_snli_sample


def test_reading_keeps_gold_labels_and_drops_no_consensus(tmp_path):
    folder = write_snli_sample(tmp_path)
    pairs = read_snli(folder / "snli_1.0_train.jsonl")
    assert len(pairs) == len(SNLI_SAMPLE) - 1  # the "-" pair is dropped
    assert pairs[:3] == [("A man is playing a guitar on stage.", "A man is performing music.", 0),
                         ("A man is playing a guitar on stage.", "The man is asleep in bed.", 2),
                         ("A man is playing a guitar on stage.", "The man is a famous singer.", 1)]
    (tmp_path / "bad.jsonl").write_text('{"gold_label": "maybe", "sentence1": "a", "sentence2": "b"}\n')
    with pytest.raises(ValueError, match=r"line 1: gold_label='maybe'; accepted values: entailment, neutral, "
                                         r"contradiction or '-'"):
        read_snli(tmp_path / "bad.jsonl")


def test_tokens_and_the_vocabulary():
    assert tokenize("Two dogs, running.") == ["two", "dogs", ",", "running", "."]
    vocabulary = WordVocabulary([["b", "a", "b"], ["c", "b", "a", "d"]], size=5)
    assert vocabulary.words == ["<pad>", "<unk>", "b", "a", "c"]  # by count, ties alphabetical, cut at 5 ids
    assert vocabulary.encode(["a", "d", "b"]).tolist() == [3, UNKNOWN, 2]
    assert vocabulary.encode([]).tolist() == [UNKNOWN]
    assert WordVocabulary([["a", "a", "b"]], size=10, min_freq=2).words == ["<pad>", "<unk>", "a"]


def test_missing_files_name_the_folder_and_the_download(tmp_path):
    module = SNLIDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as error:
        module.setup("fit")
    message = str(error.value)
    assert "snli_1.0_train.jsonl, snli_1.0_dev.jsonl, snli_1.0_test.jsonl" in message
    assert str(tmp_path / "nowhere") in message and SNLI_URL in message


def test_batches(tmp_path):
    module = SNLIDataModule(data_dir=str(write_snli_sample(tmp_path)), batch_size=3, max_length=8)
    module.setup("fit")
    assert module.vocab_size == len(module.vocabulary) == 2 + len({w for p, h, _ in SNLI_SAMPLE[:7]
                                                                  for w in tokenize(p) + tokenize(h)})
    premises, hypotheses, labels = next(iter(module.val_dataloader()))
    assert labels.tolist() == [0, 2, 1]
    assert premises.shape == (3, 8)  # "a man is playing a guitar on stage ." cut to max_length words
    words = module.vocabulary.words
    assert [words[i] for i in premises[0]] == ["a", "man", "is", "playing", "a", "guitar", "on", "stage"]
    assert hypotheses.shape == (3, 7) and [words[i] for i in hypotheses[1]] == tokenize("The man is asleep in bed.")
    assert hypotheses[0].tolist()[-1] == PAD  # "a man is performing music ." padded to the batch's longest


@pytest.mark.parametrize("encoder", ["bilstm", "mean"])
def test_padding_does_not_change_a_sentence_vector(encoder):
    torch.manual_seed(0)
    sentence_encoder = SentenceEncoder(20, 8, 6, encoder).eval()
    ids = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, PAD, PAD], [6, 7, 8, 9, 10]])
    with torch.no_grad():
        alone, batched = sentence_encoder(ids), sentence_encoder(padded)
    assert alone.shape == (1, sentence_encoder.size) and torch.allclose(alone[0], batched[0], atol=1e-6)


def test_the_classifier_sees_both_sentences():
    torch.manual_seed(0)
    model = SNLIClassifier(vocab_size=30, embedding_dim=8, hidden_size=6, mlp_size=10).eval()
    premise, hypothesis = torch.tensor([[3, 4, 5]]), torch.tensor([[6, 7, PAD]])
    with torch.no_grad():
        logits = model(premise, hypothesis)
        assert logits.shape == (1, 3)
        assert not torch.allclose(logits, model(premise, torch.tensor([[8, 7, PAD]])))
        assert not torch.allclose(logits, model(torch.tensor([[3, 4, 9]]), hypothesis))


@pytest.mark.parametrize("kwargs, message", [
    (dict(encoder="cnn"), r"encoder='cnn' is not supported; accepted values: bilstm, mean"),
    (dict(mlp_size=0), r"mlp_size=0 is not supported; accepted values: an int >= 1"),
    (dict(scheduler_interval="batch"), r"scheduler_interval='batch'; accepted values: epoch, step"),
])
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SNLIClassifier(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=2), r"vocab_size=2 is not supported; accepted values: an int >= 3"),
    (dict(max_length=0), r"max_length=0 is not supported; accepted values: an int >= 1"),
])
def test_bad_data_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SNLIDataModule(**kwargs)


@pytest.mark.slow
def test_a_short_run_through_the_callback_learns_the_sample(tmp_path):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    data = SNLIDataModule(data_dir=str(write_snli_sample(tmp_path, copies=8)), batch_size=8)
    callback = CAReLUCallback()
    model = SNLIClassifier(vocab_size=100, embedding_dim=16, hidden_size=16, mlp_size=32,
                           optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    trainer = pl.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    (scores,) = trainer.test(model, datamodule=data, verbose=False)
    assert callback.swapped == ["model.act"] and isinstance(model.model.act, CAReLU)
    assert scores["test_acc"] == 1.0  # the test file holds the training pairs: memorised
    with pytest.raises(ValueError, match=r"vocab_size=5 is smaller than the data's vocabulary"):
        pl.Trainer(logger=False, enable_progress_bar=False).validate(SNLIClassifier(vocab_size=5), datamodule=data)
