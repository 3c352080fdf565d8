"""Sentences in, padded batches of token ids out.

* :func:`load_texts` reads the train/eval/test splits with ``datasets.load_dataset`` (a Hub dataset, or local
  text/json/csv/parquet files) and returns stripped, non-blank sentences;
* :func:`encode` turns them into token ids ending in EOS, truncated to ``max_length``;
* :func:`make_batches` groups sentences of similar length (little padding), reproducibly for a (seed, epoch);
* :func:`collate` pads one batch into tensors;
* :func:`prepare_data` does the first two for a recipe, training (or reusing) its tokenizer, and
  :func:`configure_model_for_tokenizer` writes that tokenizer's vocabulary size and special ids into the model config.
  They live here, not in training, because evaluation (`textdvae eval`) and the benchmarks prepare data the same way.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .recipe import DataConfig, Recipe
from .tokenization import build_tokenizer

POOL_BATCHES = 50  # make_batches sorts by length within pools of this many batches
# A text is cut to max_length x MAX_CHARS_PER_TOKEN characters before it is tokenized, so one enormous line (a file
# without newlines, a JSON record holding a whole book) cannot stall the tokenizer or fill the memory. Tokens of the
# tokenizers used here average 2-8 characters, so the cut only drops text that max_length would drop anyway.
MAX_CHARS_PER_TOKEN = 64
BOM = "\ufeff"  # a UTF-8 byte-order mark some editors put at the start of a file: not part of the first sentence

_TEXT_BUILDERS = ("text", "json", "csv")  # builders that read local text files, checked before loading
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".7z")  # datasets decompresses these: not checked
# How each builder reads non-UTF-8 bytes as U+FFFD (data.encoding_errors=replace). The json builder hands files it
# believes to be "utf-8" to pyarrow untouched, ignoring encoding_errors; naming the same codec "utf8" makes it decode
# them itself first, honouring encoding_errors. csv passes encoding_errors on to pandas.read_csv.
_REPLACE_OPTIONS = {
    "text": {"encoding_errors": "replace"},
    "json": {"encoding": "utf8", "encoding_errors": "replace"},
    "csv": {"encoding_errors": "replace"},
}


class DataError(ValueError):
    """Data that cannot be used as given; the message names the file, split or column and the fix."""


@dataclass
class SplitStats:
    """What happened to one split on its way to token ids."""

    n_sentences: int
    n_skipped_blank: int  # empty or whitespace-only texts skipped by load_texts
    n_truncated: int  # sentences longer than max_length (EOS included), cut to fit
    n_tokens: int  # after truncation, EOS included


def load_texts(cfg: DataConfig) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The sentences of each split, and how many blank texts each split skipped.

    Both mappings have the keys "train", "eval" and "test" for the splits named by ``cfg.train_split``,
    ``cfg.eval_split`` and ``cfg.test_split`` that exist (the training split is required). Sentences are stripped
    of surrounding whitespace; empty or whitespace-only texts are skipped and counted. ``cfg.max_train_samples``
    and ``cfg.max_eval_samples`` (eval and test) keep the first n sentences.
    """
    _check_local_files(cfg)
    replace = _REPLACE_OPTIONS.get(cfg.path, {}) if cfg.encoding_errors == "replace" else {}
    dataset = datasets.load_dataset(cfg.path, cfg.name, data_files=cfg.data_files, **replace, **cfg.load_options)
    if cfg.train_split not in dataset:
        raise DataError(f"data.train_split={cfg.train_split!r} is not a split of {cfg.path!r} (splits: "
                        f"{', '.join(dataset)}); set data.train_split to one of them")
    wanted = {"train": cfg.train_split, "eval": cfg.eval_split, "test": cfg.test_split}
    limits = {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    texts, n_blank = {}, {}
    for key, split in wanted.items():
        if split in dataset:
            sentences, n_blank[key] = _sentences(dataset[split], cfg, split)
            texts[key] = sentences[:limits[key]]
    return texts, n_blank


def _sentences(split_data: datasets.Dataset, cfg: DataConfig, split: str) -> tuple[list[str], int]:
    """The stripped, non-blank texts of one split and the number of blank ones skipped."""
    column = cfg.text_column
    if column not in split_data.column_names:
        raise DataError(f"data.text_column={column!r} is not a column of split {split!r} (columns: "
                        f"{', '.join(split_data.column_names)}); set data.text_column to the one holding the sentences")
    feature = split_data.features[column]
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    if kind not in ("string", "large_string"):
        raise DataError(f"column {column!r} of split {split!r} holds {kind} values, not text; set data.text_column to "
                        f"the one holding the sentences (columns: {', '.join(split_data.column_names)})")
    values = split_data.with_format("arrow")[column].to_pylist()
    sentences = [text for text in (value.lstrip(BOM).strip() for value in values if value is not None) if text]
    if not sentences:
        source = f" ({cfg.data_files[split]})" if cfg.data_files and split in cfg.data_files else ""
        raise DataError(f"split {split!r}{source} has no sentences ({len(values)} texts, all blank); point it at "
                        "a file with one sentence per line or record")
    return sentences, len(values) - len(sentences)


def _check_local_files(cfg: DataConfig) -> None:
    """Fail early and precisely on local data files that are missing, empty or, in strict mode, not UTF-8."""
    for split, path in _local_files(cfg):
        if path.stat().st_size == 0:
            raise DataError(f"data file {str(path)!r} (split {split!r}) is empty; point data.data_files.{split} at a "
                            "file with one sentence per line or record")
        if cfg.encoding_errors == "strict" and not path.name.endswith(_COMPRESSED):
            _check_utf8(path)


def _local_files(cfg: DataConfig) -> Iterator[tuple[str, Path]]:
    """(split, file) for the local files named by ``cfg.data_files`` (paths or glob patterns) of a text builder."""
    if cfg.path not in _TEXT_BUILDERS:
        return
    for split, spec in (cfg.data_files or {}).items():
        for pattern in [spec] if isinstance(spec, str) else spec:
            if "://" in str(pattern):  # a URL or hf:// path: load_dataset fetches it
                continue
            matches = sorted(glob.glob(str(pattern), recursive=True))
            if not matches:
                raise DataError(f"data.data_files.{split}={str(pattern)!r} matches no file (relative paths start "
                                f"from {str(Path.cwd())!r}); fix the path")
            yield from ((split, Path(match)) for match in matches if Path(match).is_file())


def _check_utf8(path: Path) -> None:
    """Raise a DataError naming the first line (1-based) of ``path`` that is not valid UTF-8."""
    with path.open("rb") as file:
        for line_number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{str(path)!r}, line {line_number}: byte {line[err.start]:#04x} is not valid UTF-8; re-save the "
                    "file as UTF-8, or set data.encoding_errors=replace to read such bytes as U+FFFD") from None


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, *,
           n_skipped_blank: int = 0) -> tuple[list[list[int]], SplitStats]:
    """Token ids of each text with EOS appended, and the split's statistics.

    A sentence longer than ``max_length`` tokens (EOS included) keeps its first ``max_length - 1`` tokens and EOS,
    and is counted as truncated. ``n_skipped_blank`` (from :func:`load_texts`) is only recorded in the statistics.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a token and EOS), got {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; build it with "
                         "textdvae.tokenization.build_tokenizer")
    encoded = tokenizer(clip_characters(texts, max_length), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"] if texts else []
    sequences = [ids[:max_length - 1] + [eos] for ids in encoded]
    stats = SplitStats(n_sentences=len(sequences), n_skipped_blank=n_skipped_blank,
                       n_truncated=sum(len(ids) >= max_length for ids in encoded),
                       n_tokens=sum(map(len, sequences)))
    return sequences, stats


def clip_characters(texts: list[str], max_length: int) -> list[str]:
    """Each text cut to ``max_length * MAX_CHARS_PER_TOKEN`` characters (see MAX_CHARS_PER_TOKEN)."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    return [text[:limit] for text in texts]


def make_batches(lengths: list[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 epoch: int = 0) -> list[list[int]]:
    """Batches of sentence indices, each index exactly once, grouped by length so padding stays small.

    With ``shuffle``: the indices are shuffled, cut into pools of ``POOL_BATCHES`` batches, each pool is sorted by
    length and cut into batches, and the batch order is shuffled. The result depends only on (lengths, batch_size,
    seed, epoch), so a run resumed at batch k of an epoch sees the same batches. Without ``shuffle`` (evaluation):
    all indices sorted by length, ties by index.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = np.asarray(lengths, dtype=np.int64)
    if not shuffle:
        return _cut(np.argsort(sizes, kind="stable"), batch_size)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(sizes))
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        members = order[start:start + pool]
        batches += _cut(members[np.argsort(sizes[members], kind="stable")], batch_size)
    return [batches[i] for i in rng.permutation(len(batches))]


def _cut(indices: np.ndarray, batch_size: int) -> list[list[int]]:
    return [indices[start:start + batch_size].tolist() for start in range(0, len(indices), batch_size)]


def padding_waste(batches: list[list[int]], lengths: list[int]) -> float:
    """The fraction of positions in the padded batches that are padding."""
    padded = real = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        padded += max(sizes, default=0) * len(sizes)
        real += sum(sizes)
    return (padded - real) / padded if padded else 0.0


def collate(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (1 on tokens, 0 on padding), both (B, T) long tensors."""
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    width = max(map(len, sequences))
    input_ids = [ids + [pad_id] * (width - len(ids)) for ids in sequences]
    attention_mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long)}


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    splits: dict[str, list[list[int]]]  # split -> token ids ending with EOS
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> vars(SplitStats)


def prepare_data(recipe: Recipe, tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """Load the splits, train the tokenizer on the training split (unless one is given), encode every split."""
    texts, blank = load_texts(recipe.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(recipe.tokenizer, texts["train"])
    splits, stats = {}, {}
    for name, items in texts.items():
        ids, split_stats = encode(tokenizer, items, recipe.data.max_length)
        split_stats.n_skipped_blank = blank.get(name, 0)
        splits[name], stats[name] = ids, vars(split_stats)
    return Prepared(tokenizer, splits, stats)


def configure_model_for_tokenizer(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write the tokenizer's vocabulary size and special-token ids into ``recipe.model`` and re-validate it."""
    c = recipe.model
    c.vocab_size = len(tokenizer)
    c.pad_token_id, c.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    c.eos_token_id, c.unk_token_id = tokenizer.eos_token_id, tokenizer.unk_token_id
    c.__post_init__()  # re-validate: adaptive-softmax cutoffs must lie inside the real vocabulary
