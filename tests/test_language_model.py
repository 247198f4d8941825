"""The character-level language model on the Lee news corpus: the corpus gensim ships, the split by whole
document, the vocabulary, the windows, bits per character, the causal mask and a short run through the callback."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from caer_lightning import CAReLU, CAReLUCallback, swap_activations
from caer_lightning.ab import choose_metric
from caer_lightning.data import LeeNewsDataModule
from caer_lightning.data import lee_news
from caer_lightning.data.lee_news import (SHARED_PASSAGE, CharVocabulary, EvaluationWindows, TrainingWindows,
                                          join_documents, lee_corpus_path, read_documents, related_groups,
                                          split_documents)
from caer_lightning.models import CharTransformerLM

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 50  # the held-out streams' lengths - 1 are no multiples of it: their last windows are padded


@pytest.fixture(scope="module")
def data() -> LeeNewsDataModule:
    module = LeeNewsDataModule(seq_len=SEQ_LEN, batch_size=16)
    module.setup("fit")
    return module


def tiny_model(vocab_size: int = 82, **kwargs) -> CharTransformerLM:
    torch.manual_seed(0)
    return CharTransformerLM(**{**dict(vocab_size=vocab_size, context=64, d_model=32, n_layers=2, n_heads=2),
                                **kwargs})


def test_the_corpus_is_gensims_lee_background():
    path = lee_corpus_path()
    assert path.name == "lee_background.cor" and path.parent.parent.parent.name == "gensim"
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 300 and sum(map(len, lines)) == 360_082 - 299  # 300 articles, 299 newlines between them
    documents = read_documents(path)
    assert len(documents) == len(set(lines)) == 293  # 7 articles are in the file twice: read once
    assert documents[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert documents[-1].endswith('good enough team to beat us as well."')


def test_reading_skips_empty_lines_and_repeats(tmp_path):
    (tmp_path / "corpus.txt").write_text("one\n\ntwo\r\none\nthree\n  \n")
    assert read_documents(tmp_path / "corpus.txt") == ["one", "two", "three"]


def test_documents_sharing_a_passage_are_grouped():
    documents = ["abcdefgh-1", "zz abcdefg", "qqqqqqqq", "fgh-1 xx", "zzz"]
    assert related_groups(documents, passage=5) == [[0, 1, 3], [2], [4]]  # 0-1 share "abcde", 0-3 "fgh-1"
    for seed in range(5):
        splits = split_documents(documents, 1, 1, seed, passage=5)
        assert [split for split, chosen in splits.items() if {0, 1, 3} & set(chosen)] in (["train"], ["val"], ["test"])


def test_a_missing_gensim_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(lee_news.importlib.util, "find_spec",
                        lambda name, *args: None if name == "gensim" else real(name, *args))
    with pytest.raises(ModuleNotFoundError, match=r"gensim/test/test_data/lee_background\.cor.*pip install gensim"):
        lee_corpus_path()
    with pytest.raises(ModuleNotFoundError, match="pip install gensim"):
        LeeNewsDataModule().setup("fit")


def test_the_split_is_by_whole_document_deterministic_and_disjoint(data):
    documents = read_documents(lee_corpus_path())
    indices = split_documents(documents, 30, 30, seed=0)
    assert [len(indices[s]) for s in ("train", "val", "test")] == [233, 30, 30]
    train, val, test = (set(indices[s]) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test and train | val | test == set(range(293))
    assert split_documents(documents, 30, 30, seed=0) == indices
    assert split_documents(documents, 30, 30, seed=1)["val"] != indices["val"]
    assert data.documents == {split: [documents[i] for i in chosen] for split, chosen in indices.items()}
    # every held-out document is whole in its split's text, and none of its passages of 200 characters (checked
    # every 25) is in another split's text: the corpus holds rewrites of one story (articles 59 and 72, ...)
    streams = {split: join_documents(docs) for split, docs in data.documents.items()}
    for split in ("val", "test"):
        for document in data.documents[split]:
            assert f"\n{document}\n" in streams[split]
            for start in range(0, len(document) - SHARED_PASSAGE + 1, 25):
                passage = document[start : start + SHARED_PASSAGE]
                assert all(passage not in streams[other] for other in streams if other != split)


def test_the_vocabulary_is_the_training_texts_characters_and_round_trips(data):
    train_text = join_documents(data.documents["train"])
    vocabulary = data.vocabulary
    assert vocabulary.characters == sorted(set(train_text)) and data.vocab_size == len(set(train_text)) + 1 == 82
    ids = vocabulary.encode(train_text)
    assert ids.dtype == torch.long and int(ids.min()) == 1 and vocabulary.decode(ids) == train_text
    assert vocabulary.encode("é\nA").tolist() == [0, vocabulary.ids["\n"], vocabulary.ids["A"]]
    assert vocabulary.decode([0, vocabulary.ids["a"]]) == lee_news.UNKNOWN + "a"
    assert len(CharVocabulary("abca")) == 4 and CharVocabulary("bca").encode("abcz").tolist() == [1, 2, 3, 0]


def test_training_windows_predict_the_next_character():
    ids = torch.arange(23)
    windows = TrainingWindows(ids, 5)
    assert len(windows) == 4  # (23 - 1) // 5: the tail of 2 is dropped
    x, y = windows[3]
    assert x.tolist() == [15, 16, 17, 18, 19] and y.tolist() == [16, 17, 18, 19, 20]


def test_evaluation_windows_score_every_character_once(data):
    for split in ("val", "test"):
        stream = data.vocabulary.encode(join_documents(data.documents[split]))
        windows = data.splits[split]
        assert isinstance(windows, EvaluationWindows) and (len(stream) - 1) % SEQ_LEN
        targets = torch.cat([windows[i][1] for i in range(len(windows))])
        inputs = torch.cat([windows[i][0] for i in range(len(windows))])
        scored = targets != -100
        assert torch.equal(targets[scored], stream[1:]) and torch.equal(inputs[scored], stream[:-1])
        assert int((~scored).sum()) == len(windows) * SEQ_LEN - (len(stream) - 1) > 0


def test_bpc_is_the_cross_entropy_in_nats_over_ln2(data):
    """val_bpc from the Trainer against an independent sum over the held-out stream, window by window."""
    import lightning.pytorch as pl

    model = tiny_model(data.vocab_size)
    with torch.no_grad():
        model.net.head.weight.mul_(30)  # peaked predictions: losses that differ by character, and so by batch
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (scores,) = trainer.validate(model, datamodule=data, verbose=False)
    stream = data.vocabulary.encode(join_documents(data.documents["val"])).double()
    nats, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(stream) - 1, SEQ_LEN):
            x, y = stream[start : start + SEQ_LEN].long(), stream[start + 1 : start + SEQ_LEN + 1].long()
            log_p = model.net(x[: len(y)].unsqueeze(0))[0].double().log_softmax(-1)
            nats -= float(log_p.gather(1, y.unsqueeze(1)).sum())
            count += len(y)
    assert count == len(stream) - 1
    assert scores["val_loss"] == pytest.approx(nats / count, rel=1e-5)
    assert scores["val_bpc"] == pytest.approx(nats / count / math.log(2), rel=1e-5)


@pytest.mark.parametrize("swap", [None, "token"])
def test_a_future_character_does_not_change_earlier_logits(swap):
    model = tiny_model().eval()
    if swap:
        swap_activations(model, targets=(torch.nn.GELU,), factory=lambda old: CAReLU(reduction=swap, alpha_init=1.0))
        assert sum(isinstance(m, CAReLU) for m in model.modules()) == 2
    ids = torch.randint(1, 82, (3, 40), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 25] = (ids[:, 25] % 81) + 1
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :25], after[:, :25])
    assert not torch.allclose(before[:, 25:], after[:, 25:])


def test_a_swap_with_one_competition_per_sample_would_see_the_future():
    """Why the configs use reduction: token: a sample-wide competition mixes later positions into earlier ones."""
    model = tiny_model().eval()
    swap_activations(model, targets=(torch.nn.GELU,), factory=lambda old: CAReLU(reduction="sample", alpha_init=1.0))
    ids = torch.randint(1, 82, (3, 40), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 25] = (ids[:, 25] % 81) + 1
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, :25], model(changed)[:, :25])


def test_the_model_swaps_its_feed_forward_activations():
    model = tiny_model(activation="relu")
    assert swap_activations(model, targets=(torch.nn.ReLU,)) == ["net.blocks.0.mlp.act", "net.blocks.1.mlp.act"]
    assert sum(p.numel() for p in tiny_model(d_model=32, n_layers=1, n_heads=1).parameters()) == (
        82 * 32 + 64 * 32  # embeddings
        + 2 * 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)  # one block
        + 2 * 32 + 32 * 82 + 82)  # final norm, head


@pytest.mark.slow
def test_a_short_run_through_the_callback_learns(tmp_path):
    import lightning.pytorch as pl

    pl.seed_everything(0)
    data = LeeNewsDataModule(seq_len=64, batch_size=32)
    callback = CAReLUCallback(targets=("torch.nn.GELU",), reduction="token")
    model = CharTransformerLM(vocab_size=82, context=64, d_model=64, n_layers=2, n_heads=4,
                              optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    trainer = pl.Trainer(max_steps=120, limit_val_batches=8, val_check_interval=120, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert callback.swapped == ["net.blocks.0.mlp.act", "net.blocks.1.mlp.act"]
    layers = [m for m in model.modules() if isinstance(m, CAReLU)]
    assert len(layers) == 2 and all(m.reduction == "token" for m in layers)
    assert any(float(m.beta.detach()) != pytest.approx(math.atanh(0.5)) for m in layers)  # α, β trained
    uniform = math.log2(data.vocab_size)  # 6.36 bits: a model that learned nothing
    assert float(trainer.callback_metrics["val_bpc"]) < uniform - 2.0
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    loaded = CharTransformerLM.load_from_checkpoint(tmp_path / "lm.ckpt").eval()  # rebuilds the swap
    ids = torch.randint(1, 82, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model.eval()(ids))


@pytest.mark.parametrize("kwargs, message", [
    (dict(activation="swish"), r"activation='swish' is not supported; accepted values: gelu, relu"),
    (dict(d_model=30, n_heads=4), r"d_model=30 is not divisible by n_heads=4; accepted values: .*1, 2, 3, 5, 6"),
    (dict(vocab_size=0), r"vocab_size=0 is not supported; accepted values: an int >= 1"),
    (dict(context=0), r"context=0 is not supported; accepted values: an int >= 1"),
    (dict(dropout=1.0), r"dropout=1.0 is not supported; accepted values: 0 <= dropout < 1"),
    (dict(scheduler_interval="batch"), r"scheduler_interval='batch'; accepted values: epoch, step"),
])
def test_bad_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CharTransformerLM(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=0), r"seq_len=0 is not supported; accepted values: an int >= 1"),
    (dict(val_documents=0), r"val_documents=0 is not supported; accepted values: an int >= 1"),
    (dict(batch_size=2.5), r"batch_size=2.5 is not supported"),
])
def test_bad_data_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeeNewsDataModule(**kwargs)


def test_a_split_leaving_no_training_document_is_refused():
    with pytest.raises(ValueError, match=r"val_documents=150 and test_documents=150 leave no training document of "
                                         r"293; accepted values: val_documents \+ test_documents well below 293"):
        LeeNewsDataModule(val_documents=150, test_documents=150).setup("fit")


def test_a_model_smaller_than_the_vocabulary_or_the_window_is_refused(data):
    import lightning.pytorch as pl

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"vocab_size=60 is smaller than the data's vocabulary \(82 ids.*>= 82"):
        trainer.validate(tiny_model(vocab_size=60), datamodule=data, verbose=False)
    with pytest.raises(ValueError, match=r"70 characters is longer than the model's context \(64\)"):
        tiny_model()(torch.ones(1, 70, dtype=torch.long))


def test_a_corpus_file_of_ones_own(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"document {i}: " + "abc" * i for i in range(10)) + "\n\n")
    module = LeeNewsDataModule(seq_len=8, batch_size=2, val_documents=2, test_documents=2, path=str(corpus))
    module.setup("fit")
    assert sum(len(docs) for docs in module.documents.values()) == 10  # the empty line is no document
    x, y = next(iter(module.train_dataloader()))
    assert x.shape == y.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])
    assert F.one_hot(x, module.vocab_size).shape[-1] == module.vocab_size


def test_the_hugging_face_gpt2_is_causal_and_swapped_per_token():
    pytest.importorskip("transformers")
    from caer_lightning.models import GPT2CharLM

    torch.manual_seed(0)
    model = GPT2CharLM(vocab_size=82, context=64, d_model=32, n_layers=2, n_heads=2).eval()
    names = swap_activations(model, targets=(torch.nn.GELU,),
                             factory=lambda old: CAReLU(reduction="token", alpha_init=1.0))
    assert names == ["net.transformer.h.0.mlp.act.act", "net.transformer.h.1.mlp.act.act"]
    ids = torch.randint(1, 82, (3, 40), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 25] = (ids[:, 25] % 81) + 1
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert before.shape == (3, 40, 82)
    assert torch.allclose(before[:, :25], after[:, :25], atol=1e-6)
    assert not torch.allclose(before[:, 25:], after[:, 25:])
    with pytest.raises(ValueError, match=r"activation='swish2' is not supported; accepted values: transformers'"):
        GPT2CharLM(activation="swish2")
    with pytest.raises(ValueError, match=r"a sequence of 70 characters is longer than the model's context \(64\)"):
        model(torch.ones(1, 70, dtype=torch.long))


@pytest.mark.parametrize("name", ["char_transformer_carelu", "gpt2_char_carelu"])
def test_the_lm_configs_compete_per_token_and_keep_the_lowest_bpc(name):
    config = yaml.safe_load((ROOT / "configs" / "lm" / f"{name}.yaml").read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}
    assert callbacks["CAReLUCallback"] == {"targets": ["torch.nn.GELU"], "reduction": "token"}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val_bpc" and callbacks["ModelCheckpoint"]["mode"] == "min"
    assert config["model"]["init_args"]["context"] >= config["data"]["init_args"]["seq_len"]
    metric = choose_metric(config)  # what `caer ab` compares
    assert (metric.val, metric.test, metric.mode) == ("val_bpc", "test_bpc", "min")

