"""Character-level language modelling on the Lee news corpus: 300 Australian news articles (Lee, Pincombe and
Welsh, 2005) that ship inside gensim's wheel as `gensim/test/test_data/lee_background.cor`, one article a line.

Nothing is downloaded and gensim is not imported: the file is found through the installed package's folder."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

CORPUS_PACKAGE = "gensim"
CORPUS_FILE = "test/test_data/lee_background.cor"
SEPARATOR = "\n"  # between documents, and before the first: every document starts after one
UNKNOWN = "\ufffd"  # what decode() writes for the unknown id
SHARED_PASSAGE = 200  # characters: documents sharing a passage this long are versions of one story


def lee_corpus_path() -> Path:
    """The path of gensim's `lee_background.cor`; a clear error when gensim or the file is missing."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Lee news corpus is the file {CORPUS_PACKAGE}/{CORPUS_FILE} of the `gensim` package, which is not "
            "installed: pip install gensim (or pip install caer-lightning, which declares it)")
    for folder in spec.submodule_search_locations:
        path = Path(folder, CORPUS_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError(f"gensim is installed but its wheel has no {CORPUS_FILE} (looked in "
                            f"{', '.join(spec.submodule_search_locations)}); reinstall gensim>=4.3.1")


def read_documents(path: str | Path) -> list[str]:
    """The documents of a corpus file with one document a line; empty lines and repeats of an earlier document are
    skipped (lee_background.cor holds 7 articles twice)."""
    documents: dict[str, None] = {}
    for line in Path(path).read_text(encoding="utf-8").split("\n"):  # read_text turns \r\n into \n
        if line.strip():
            documents.setdefault(line)
    return list(documents)


def related_groups(documents: Sequence[str], passage: int = SHARED_PASSAGE) -> list[list[int]]:
    """Indices of documents grouped by shared passages: two documents that hold the same `passage` characters are
    in one group (transitively), so that versions of one story stay on one side of a split. Groups sorted, in the
    order of their first document."""
    parent = list(range(len(documents)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_holder: dict[int, int] = {}  # hash of a passage -> the first document holding it
    for index, document in enumerate(documents):
        for start in range(len(document) - passage + 1):
            holder = first_holder.setdefault(hash(document[start : start + passage]), index)
            if holder != index:
                parent[root(index)] = root(holder)
    groups: dict[int, list[int]] = {}
    for index in range(len(documents)):
        groups.setdefault(root(index), []).append(index)
    return sorted(groups.values())


def split_documents(documents: Sequence[str], val_documents: int, test_documents: int, seed: int,
                    passage: int = SHARED_PASSAGE) -> dict[str, list[int]]:
    """Indices of whole documents per split ("train", "val", "test"), each sorted: the groups of `related_groups`
    in an order drawn by `seed` with Python's `random` (the same on every platform and version) fill val up to
    `val_documents`, then test up to `test_documents` (a group never split, so a split may get one or two more),
    and the rest train. No document, and no passage of `passage` characters, is in two splits."""
    groups = related_groups(documents, passage)
    random.Random(seed).shuffle(groups)
    splits: dict[str, list[int]] = {"val": [], "test": [], "train": []}
    for group in groups:
        split = ("val" if len(splits["val"]) < val_documents else
                 "test" if len(splits["test"]) < test_documents else "train")
        splits[split] += group
    if not splits["train"]:
        raise ValueError(f"val_documents={val_documents} and test_documents={test_documents} leave no training "
                         f"document of {len(documents)}; accepted values: val_documents + test_documents well below "
                         f"{len(documents)}")
    return {split: sorted(splits[split]) for split in ("train", "val", "test")}


def join_documents(documents: Sequence[str]) -> str:
    """One stream: each document preceded by the separator, and one separator at the end (so the model is also
    scored on predicting the end of the last document)."""
    return "".join(SEPARATOR + document for document in documents) + SEPARATOR


class CharVocabulary:
    """Characters of a training text, sorted, with id 0 for any character not among them."""

    def __init__(self, text: str) -> None:
        self.characters = sorted(set(text))
        self.ids = {character: index + 1 for index, character in enumerate(self.characters)}

    def __len__(self) -> int:
        return len(self.characters) + 1

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.ids.get(character, 0) for character in text], dtype=torch.long)

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        return "".join(self.characters[i - 1] if i > 0 else UNKNOWN for i in torch.as_tensor(ids).tolist())


class TrainingWindows(Dataset):
    """Windows of `length` + 1 characters of a stream, starting every `length` characters: input = the first
    `length`, target = the last `length` (the next character of each). A tail shorter than a window is dropped."""

    def __init__(self, ids: Tensor, length: int) -> None:
        self.ids, self.length = ids, length
        self.count = max((len(ids) - 1) // length, 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        window = self.ids[index * self.length : index * self.length + self.length + 1]
        return window[:-1], window[1:]


class EvaluationWindows(TrainingWindows):
    """Contiguous windows covering a whole stream, so that every character after the first is predicted exactly
    once; the last window is padded, its padded targets set to -100 (ignored by the loss)."""

    def __init__(self, ids: Tensor, length: int) -> None:
        super().__init__(ids, length)
        self.count = -(-(len(ids) - 1) // length)  # ceil

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        window = self.ids[index * self.length : index * self.length + self.length + 1]
        x, y = window[:-1], window[1:]
        if len(y) < self.length:
            pad = self.length - len(y)
            x = torch.cat([x, x.new_zeros(pad)])
            y = torch.cat([y, y.new_full((pad,), -100)])
        return x, y


class LeeNewsDataModule(pl.LightningDataModule):
    """Character-level language modelling on the Lee news corpus (300 articles, 360,082 characters): batches of
    (input ids (N, seq_len), next-character ids (N, seq_len)).

    The articles are split whole, by `seed`: `val_documents` for validation, `test_documents` for test, the rest
    for training. The vocabulary is the training split's characters plus id 0 for any other (`vocab_size` after
    setup). Training takes windows of `seq_len` + 1 characters of the training articles joined by a newline
    (`join_documents`), shuffled; validation and test cover their articles' whole text in contiguous windows.

    Args:
        seq_len: characters per window (the model's context).
        batch_size: windows per step.
        val_documents, test_documents: articles held out for validation and for test.
        seed: seed of the split by article.
        num_workers: DataLoader workers.
        path: a corpus file with one document a line instead of gensim's lee_background.cor.
    """

    def __init__(self, seq_len: int = 128, batch_size: int = 32, val_documents: int = 30, test_documents: int = 30,
                 seed: int = 0, num_workers: int = 0, path: str | None = None) -> None:
        super().__init__()
        for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                                 ("val_documents", val_documents, 1), ("test_documents", test_documents, 1),
                                 ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is not supported; accepted values: an int >= {low}")
        self.save_hyperparameters()
        self.documents: dict[str, list[str]] = {}
        self.vocabulary: CharVocabulary | None = None
        self.splits: dict[str, Dataset] = {}

    @property
    def vocab_size(self) -> int:
        """Ids of the vocabulary (the training split's characters + the unknown id); known after setup."""
        if self.vocabulary is None:
            raise RuntimeError("vocab_size is known after setup(): the vocabulary is built from the training split")
        return len(self.vocabulary)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        documents = read_documents(self.hparams.path or lee_corpus_path())
        indices = split_documents(documents, self.hparams.val_documents, self.hparams.test_documents,
                                  self.hparams.seed)
        self.documents = {split: [documents[i] for i in chosen] for split, chosen in indices.items()}
        streams = {split: join_documents(docs) for split, docs in self.documents.items()}
        self.vocabulary = CharVocabulary(streams["train"])
        length = self.hparams.seq_len
        self.splits = {"train": TrainingWindows(self.vocabulary.encode(streams["train"]), length),
                       "val": EvaluationWindows(self.vocabulary.encode(streams["val"]), length),
                       "test": EvaluationWindows(self.vocabulary.encode(streams["test"]), length)}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

