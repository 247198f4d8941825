"""SNLI (Bowman et al., 2015): 570k English sentence pairs labelled entailment, neutral or contradiction, read from
the official JSONL release (`snli_1.0_{train,dev,test}.jsonl`, in https://nlp.stanford.edu/projects/snli/snli_1.0.zip).
Nothing is downloaded: unzip the release and point `data_dir` at its folder."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
FILES = {"train": "snli_1.0_train.jsonl", "val": "snli_1.0_dev.jsonl", "test": "snli_1.0_test.jsonl"}
LABELS = ("entailment", "neutral", "contradiction")
NO_CONSENSUS = "-"  # gold_label of pairs whose annotators did not agree: dropped, as in the SNLI paper
PAD, UNKNOWN = 0, 1
SPECIALS = ("<pad>", "<unk>")
TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return TOKEN.findall(text.lower())


def read_snli(path: str | Path) -> list[tuple[str, str, int]]:
    """(sentence1, sentence2, label index into LABELS) of every pair of a SNLI JSONL file with a gold label."""
    pairs = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            label = record["gold_label"]
            if label == NO_CONSENSUS:
                continue
            if label not in LABELS:
                raise ValueError(f"{path}, line {number}: gold_label={label!r}; accepted values: "
                                 f"{', '.join(LABELS)} or {NO_CONSENSUS!r} (no consensus: dropped)")
            pairs.append((record["sentence1"], record["sentence2"], LABELS.index(label)))
    return pairs


class WordVocabulary:
    """Id 0 pads, id 1 stands for any word not kept; then the training words seen at least `min_freq` times, most
    frequent first (ties alphabetical), at most `size` ids in all."""

    def __init__(self, sentences: Iterable[Sequence[str]], size: int, min_freq: int = 1) -> None:
        counts = Counter(word for sentence in sentences for word in sentence)
        kept = sorted((word for word, count in counts.items() if count >= min_freq), key=lambda w: (-counts[w], w))
        self.words = [*SPECIALS, *kept[: size - len(SPECIALS)]]
        self.ids = {word: index for index, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Sequence[str]) -> Tensor:
        """Ids of the words; [UNKNOWN] for an empty sentence, so that every sentence has one position."""
        return torch.tensor([self.ids.get(word, UNKNOWN) for word in words] or [UNKNOWN], dtype=torch.long)


class PairDataset(Dataset):
    """(premise ids, hypothesis ids, label) triples, each sentence cut to `max_length` words."""

    def __init__(self, pairs: Sequence[tuple[Sequence[str], Sequence[str], int]], vocabulary: WordVocabulary,
                 max_length: int) -> None:
        self.items = [(vocabulary.encode(premise[:max_length]), vocabulary.encode(hypothesis[:max_length]), label)
                      for premise, hypothesis, label in pairs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self.items[index]


def collate_pairs(batch: Sequence[tuple[Tensor, Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Premises (N, L1) and hypotheses (N, L2), padded with PAD, and labels (N,)."""
    premises, hypotheses, labels = zip(*batch)
    return (pad_sequence(list(premises), batch_first=True, padding_value=PAD),
            pad_sequence(list(hypotheses), batch_first=True, padding_value=PAD), torch.tensor(labels))


class SNLIDataModule(pl.LightningDataModule):
    """SNLI from its official JSONL files: batches of (premise ids (N, L1), hypothesis ids (N, L2), labels (N,)),
    labels 0 entailment, 1 neutral, 2 contradiction; pairs without a gold label ("-") dropped. Train, dev (for
    validation) and test are the release's own files. The word vocabulary is built from the training pairs
    (`vocab_size` ids at most, `len(vocabulary)` after setup).

    Args:
        data_dir: the folder holding snli_1.0_train.jsonl, snli_1.0_dev.jsonl and snli_1.0_test.jsonl (the
            `snli_1.0` folder of snli_1.0.zip).
        batch_size: pairs per step.
        vocab_size: the most ids of the vocabulary, padding and unknown included.
        min_freq: training occurrences a word needs to get an id of its own.
        max_length: words kept of each sentence.
        num_workers: DataLoader workers.
    """

    num_classes = len(LABELS)

    def __init__(self, data_dir: str = "data/snli_1.0", batch_size: int = 128, vocab_size: int = 20000,
                 min_freq: int = 1, max_length: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        for name, value, low in (("batch_size", batch_size, 1), ("vocab_size", vocab_size, len(SPECIALS) + 1),
                                 ("min_freq", min_freq, 1), ("max_length", max_length, 1),
                                 ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not supported; accepted values: an int >= {low}")
        self.save_hyperparameters()
        self.vocabulary: WordVocabulary | None = None
        self.splits: dict[str, PairDataset] = {}

    @property
    def vocab_size(self) -> int:
        """Ids of the vocabulary built from the training pairs; known after setup."""
        if self.vocabulary is None:
            raise RuntimeError("vocab_size is known after setup(): the vocabulary is built from the training pairs")
        return len(self.vocabulary)

    def files(self) -> dict[str, Path]:
        """The three JSONL files; a FileNotFoundError naming the folder and where to get them when one is absent."""
        folder = Path(self.hparams.data_dir).expanduser()
        paths = {split: folder / name for split, name in FILES.items()}
        missing = [path.name for path in paths.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"SNLI: {', '.join(missing)} not found in data_dir={str(folder)!r} (looked in {folder.resolve()}). "
                f"Download {SNLI_URL}, unzip it and pass the folder holding the .jsonl files, e.g. "
                "--data.init_args.data_dir data/snli_1.0")
        return paths

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        pairs = {split: [(tokenize(premise), tokenize(hypothesis), label)
                         for premise, hypothesis, label in read_snli(path)]
                 for split, path in self.files().items()}
        self.vocabulary = WordVocabulary((s for p, h, _ in pairs["train"] for s in (p, h)), self.hparams.vocab_size,
                                         self.hparams.min_freq)
        self.splits = {split: PairDataset(chosen, self.vocabulary, self.hparams.max_length)
                       for split, chosen in pairs.items()}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, collate_fn=collate_pairs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
