"""Sentences in, padded batches of token ids out, without holding the corpus in Python objects.

* :func:`load_splits` reads the train/eval/test splits with ``datasets.load_dataset`` (a Hub dataset, or local
  text/json/csv/parquet files) into Arrow datasets of stripped, non-blank sentences (:func:`load_texts`: the same as
  Python lists, for small data);
* :func:`encode` turns texts into token ids ending in EOS, truncated to ``max_length``; :func:`encode_split` does the
  same with ``Dataset.map`` into the datasets cache (memory-mapped Arrow, reused by the next run with the same data,
  tokenizer and ``max_length``) and returns a :class:`TokenSplit`;
* :func:`batch_plan` / :func:`make_batches` group sentences of similar length (little padding), reproducibly for a
  (seed, epoch), from a numpy array of lengths;
* :func:`collate` pads one batch into tensors;
* :class:`TrainStream` / :func:`prepare_stream` (``data.streaming``): the training split read as a stream, shuffled
  and length-bucketed in windows, each process its own part, with a resumable position;
* :func:`prepare_data` does the above for a recipe, training (or reusing) its tokenizer on a seeded sample of the
  training split, and :func:`configure_model_for_tokenizer` writes that tokenizer's vocabulary size and special ids
  into the model config. They live here, not in training, because evaluation (`textdvae eval`) and the benchmarks
  prepare data the same way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from transformers import PreTrainedTokenizerBase

from .recipe import DataConfig, Recipe
from .tokenization import build_tokenizer

POOL_BATCHES = 50  # make_batches sorts by length within pools of this many batches
# The version of batch_plan's order, recorded in checkpoints: bump it when the batches of a (seed, epoch) change, so
# that a run resumed mid-epoch from an older checkpoint says that the rest of that epoch is not the original's.
# 2: the rows are permuted by a Feistel network (1: a shuffled arange, 4 bytes a sentence).
BATCH_PLAN_VERSION = 2
ENCODING_VERSION = "textdvae-encode-2"  # part of the cache fingerprint of encoded splits: bump when encoding changes
# Rows per Arrow record batch in the files we write into the datasets cache (and per map batch). Opening a cached
# file reads every record batch's header (pyarrow also tells the kernel it will need each batch), and the page fault
# on each header maps the cached pages around it: with datasets' default 1,000-row batches, 0.7 GB of a warm
# 10M-sentence run's files were in its RSS before its first step (benchmarks/data_scale.py). At 50,000 rows a file
# has 50x fewer headers; a map batch of 50,000 sentences is a few tens of MB of Python objects.
ARROW_ROWS = 50_000
_TOKEN_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                     "length": datasets.Value("int32"), "truncated": datasets.Value("bool")})
# A text is cut to max_length x MAX_CHARS_PER_TOKEN characters before it is tokenized, so one enormous line (a file
# without newlines, a JSON record holding a whole book) cannot stall the tokenizer or fill the memory. Tokens of the
# tokenizers used here average 2-8 characters, so the cut only drops text that max_length would drop anyway.
MAX_CHARS_PER_TOKEN = 64
RELEASE_MIN_BYTES = 64 * 2**20  # token files at least this large are unmapped after each batch (TokenSplit.rows)
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # this process's libc
if _LIBC is not None:
    _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
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


def load_splits(cfg: DataConfig) -> tuple[dict[str, datasets.Dataset], dict[str, int]]:
    """Each split as an Arrow dataset with one column, ``text``, and how many blank texts each split skipped.

    Both mappings have the keys "train", "eval" and "test" for the splits named by ``cfg.train_split``,
    ``cfg.eval_split`` and ``cfg.test_split`` that exist (the training split is required). Sentences are stripped
    of surrounding whitespace; empty or whitespace-only texts are skipped and counted. ``cfg.max_train_samples``
    and ``cfg.max_eval_samples`` (eval and test) keep the first n sentences. The cleaning is a ``Dataset.map`` into
    the datasets cache, so for local or downloaded data nothing is held in memory and a second run reuses it.
    """
    _check_local_files(cfg)
    replace = _REPLACE_OPTIONS.get(cfg.path, {}) if cfg.encoding_errors == "replace" else {}
    options = {"writer_batch_size": ARROW_ROWS, **replace, **cfg.load_options}
    dataset = datasets.load_dataset(cfg.path, cfg.name, data_files=cfg.data_files, **options)
    if cfg.train_split not in dataset:
        raise DataError(f"data.train_split={cfg.train_split!r} is not a split of {cfg.path!r} (splits: "
                        f"{', '.join(dataset)}); set data.train_split to one of them")
    wanted = {"train": cfg.train_split, "eval": cfg.eval_split, "test": cfg.test_split}
    limits = {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    splits, n_blank = {}, {}
    for key, split in wanted.items():
        if split in dataset:
            sentences, n_blank[key] = _sentences(dataset[split], cfg, split)
            release_mapped_pages(cache_files(dataset[split]))  # what opening and cleaning it mapped of the raw file
            if limits[key] is not None and limits[key] < len(sentences):
                sentences = sentences.select(range(limits[key]))
            splits[key] = sentences
    return splits, n_blank


def load_texts(cfg: DataConfig) -> tuple[dict[str, list[str]], dict[str, int]]:
    """:func:`load_splits` with each split as a Python list of sentences (for small data and tests)."""
    splits, n_blank = load_splits(cfg)
    return {key: split.with_format("arrow")["text"].to_pylist() for key, split in splits.items()}, n_blank


def _sentences(split_data: datasets.Dataset, cfg: DataConfig, split: str) -> tuple[datasets.Dataset, int]:
    """The stripped, non-blank texts of one split (an Arrow dataset, column ``text``) and how many blank ones were
    skipped."""
    column = cfg.text_column
    if column not in split_data.column_names:
        raise DataError(f"data.text_column={column!r} is not a column of split {split!r} (columns: "
                        f"{', '.join(split_data.column_names)}); set data.text_column to the one holding the sentences")
    feature = split_data.features[column]
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    if kind not in ("string", "large_string"):
        raise DataError(f"column {column!r} of split {split!r} holds {kind} values, not text; set data.text_column to "
                        f"the one holding the sentences (columns: {', '.join(split_data.column_names)})")
    sentences = split_data.map(_strip_batch, batched=True, batch_size=ARROW_ROWS, writer_batch_size=ARROW_ROWS,
                               fn_kwargs={"column": column, "release": cache_files(split_data)},
                               new_fingerprint=_fingerprint("clean", split_data._fingerprint, column),
                               remove_columns=split_data.column_names, num_proc=_num_proc(cfg, len(split_data)),
                               features=datasets.Features({"text": datasets.Value("string")}),
                               desc=f"cleaning {split}")
    if len(sentences) == 0:
        source = f" ({cfg.data_files[split]})" if cfg.data_files and split in cfg.data_files else ""
        raise DataError(f"split {split!r}{source} has no sentences ({len(split_data)} texts, all blank); point it at "
                        "a file with one sentence per line or record")
    return sentences, len(split_data) - len(sentences)


def clean_sentence(value: str | None) -> str:
    """A record's text as training reads it: no byte-order mark, no surrounding whitespace ("" for blank/None)."""
    return value.lstrip(BOM).strip() if value is not None else ""


def _strip_batch(batch: dict[str, list], column: str, release: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    texts = [text for text in map(clean_sentence, batch[column]) if text]
    release_mapped_pages(release)  # the pages of the source file this batch mapped (a pass reads all of it)
    return {"text": texts}


def _num_proc(cfg: DataConfig, n_rows: int) -> int | None:
    """data.num_proc, but never more processes than there are 1000-row pieces (tiny splits run in this process)."""
    if cfg.num_proc is None or cfg.num_proc < 2:
        return None
    return max(1, min(cfg.num_proc, n_rows // 1000)) if n_rows >= 2000 else None


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
    eos = _check_encoding(tokenizer, max_length)
    sequences, truncated = _encode_texts(tokenizer, texts, max_length, eos)
    stats = SplitStats(n_sentences=len(sequences), n_skipped_blank=n_skipped_blank, n_truncated=sum(truncated),
                       n_tokens=sum(map(len, sequences)))
    return sequences, stats


def _check_encoding(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a token and EOS), got {max_length}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; build it with "
                         "textdvae.tokenization.build_tokenizer")
    return eos


def _encode_texts(tokenizer, texts: list[str], max_length: int, eos: int) -> tuple[list[list[int]], list[bool]]:
    encoded = tokenizer(clip_characters(texts, max_length), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"] if texts else []
    return [with_eos(ids, max_length, eos) for ids in encoded], [len(ids) >= max_length for ids in encoded]


def clip_characters(texts: list[str], max_length: int) -> list[str]:
    """Each text cut to ``max_length * MAX_CHARS_PER_TOKEN`` characters (see MAX_CHARS_PER_TOKEN)."""
    limit = max_length * MAX_CHARS_PER_TOKEN
    return [text[:limit] for text in texts]


def with_eos(ids: list[int], max_length: int, eos: int) -> list[int]:
    """A sentence's token ids as the model reads them: its first ``max_length - 1`` tokens, then EOS."""
    return ids[:max_length - 1] + [eos]


def _encode_batch(batch: dict[str, list], tokenizer, max_length: int, eos: int,
                  release: frozenset[str] = frozenset()) -> dict[str, list]:
    sequences, truncated = _encode_texts(tokenizer, batch["text"], max_length, eos)
    release_mapped_pages(release)  # the pages of the text file this batch mapped
    return {"input_ids": sequences, "length": [len(ids) for ids in sequences], "truncated": truncated}


class TokenSplit(Sequence):
    """One split's token ids, kept in an Arrow dataset (memory-mapped when it came from the datasets cache).

    ``lengths`` (numpy, EOS included) is all that batching needs; the ids of a batch are fetched by :meth:`rows`.
    Also a read-only sequence of id lists, so code written for ``list[list[int]]`` works unchanged.
    """

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset.select_columns(["input_ids"])
        self.lengths = _lengths(dataset)  # 1 byte a sentence (max_length < 256), in our memory
        self.n_truncated = int(pc.sum(dataset.with_format("arrow")["truncated"]).as_py() or 0)
        files = cache_files(dataset)
        release_mapped_pages(files)  # the pages those two columns mapped
        # a small file cannot grow the RSS by much, and reading /proc/self/maps every batch costs a small model ~4 %
        # of its step (the quick-start recipe under py-spy): only large token files are released after each batch
        self._release = files if sum(map(os.path.getsize, files)) >= RELEASE_MIN_BYTES else frozenset()

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.rows(range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of a split of {len(self)}")
        return self.rows([index % len(self)])[0]

    def __iter__(self):
        for start in range(0, len(self), 10_000):
            yield from self.rows(range(start, min(start + 10_000, len(self))))

    def rows(self, indices) -> list[list[int]]:
        """The token ids of the given rows, in that order."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        rows = self.dataset.with_format("arrow")[indices]["input_ids"].to_pylist()
        release_mapped_pages(self._release)
        return rows


def cache_files(dataset: datasets.Dataset) -> frozenset[str]:
    """The Arrow files a dataset is memory-mapped from, as /proc/self/maps names them (none for in-memory data)."""
    return frozenset(str(Path(f["filename"]).resolve()) for f in dataset.cache_files)


def release_mapped_pages(files: frozenset[str]) -> int:
    """Take the pages of these memory-mapped files out of this process's resident set (Linux; elsewhere a no-op).

    Reading a row of a mapped Arrow file maps the page cache around it (the kernel's fault-around), so batches drawn
    at random from a large token file would, over an epoch, map the whole file into the RSS: a warm 10M-sentence run
    grew by 0.9 GB of such pages (benchmarks/data_scale.py). ``madvise(MADV_DONTNEED)`` on a read-only file mapping
    (pyarrow maps Arrow files read-only and never writes to them) only unmaps the pages: they stay in the page cache,
    and the next read maps them again from there (a minor fault, no disk). Only read-only mappings of exactly these
    files are touched, found afresh in /proc/self/maps each call. Returns the bytes of mappings advised.
    """
    if not files or _LIBC is None:
        return 0
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or "w" in fields[1] or fields[5].rstrip("\n") not in files:
                    continue
                start, end = (int(a, 16) for a in fields[0].split("-"))
                if _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
                    advised += end - start
    except OSError:  # no /proc: nothing to release
        return 0
    return advised


def _lengths(dataset: datasets.Dataset) -> np.ndarray:
    """The ``length`` column in the smallest unsigned dtype that holds it, copied chunk by chunk from the mapped file
    (never a full-size int32 copy: at 10M sentences that would be a 40 MB step in the peak RSS)."""
    column = dataset.with_format("arrow")["length"]
    lengths = np.empty(len(column), dtype=np.min_scalar_type(pc.max(column).as_py() or 0))
    start = 0
    for chunk in getattr(column, "chunks", [column]):
        lengths[start:start + len(chunk)] = chunk.to_numpy()
        start += len(chunk)
    return lengths


def encode_split(tokenizer: PreTrainedTokenizerBase, texts: datasets.Dataset, max_length: int,
                 num_proc: int | None = None) -> TokenSplit:
    """Encode a ``text`` dataset as :func:`encode` does, with ``Dataset.map`` into the datasets cache.

    The cache fingerprint is built from the texts' fingerprint, the tokenizer's full content (its tokenizer.json and
    special ids) and ``max_length``, so a later run with the same data and tokenizer reads the cached Arrow file
    instead of tokenizing again, and any change to them tokenizes afresh.
    """
    eos = _check_encoding(tokenizer, max_length)
    encoded = texts.map(_encode_batch, batched=True, batch_size=ARROW_ROWS, writer_batch_size=ARROW_ROWS,
                        remove_columns=texts.column_names, features=_TOKEN_FEATURES,
                        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "eos": eos,
                                   "release": cache_files(texts)},
                        new_fingerprint=_encoding_fingerprint(texts, tokenizer, max_length), num_proc=num_proc,
                        desc="tokenizing")
    return TokenSplit(encoded)


def _encoding_fingerprint(texts: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else datasets.fingerprint.Hasher.hash(tokenizer)
    return _fingerprint(texts._fingerprint, content, str(tokenizer.eos_token_id), str(max_length))


def _fingerprint(*parts: str) -> str:
    """A datasets cache fingerprint from what decides a pass's output (never from file paths, which the passes also
    take, to release pages, and which change when the cache moves)."""
    return hashlib.sha256("\n".join([ENCODING_VERSION, *parts]).encode("utf-8")).hexdigest()[:32]


def tokenizer_sample(train: datasets.Dataset, samples: int | None, seed: int, chunk: int = 10_000) -> Iterator[str]:
    """The training sentences a tokenizer is trained on: all of them, in order, when there are at most ``samples``
    (or ``samples`` is None); else ``samples`` of them drawn without replacement with ``seed`` (in corpus order)."""
    texts, files = train.with_format("arrow"), cache_files(train)
    if samples is None or len(train) <= samples:
        for start in range(0, len(train), chunk):
            part = texts[start:start + chunk]["text"].to_pylist()
            release_mapped_pages(files)
            yield from part
        return
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=samples, replace=False))
    for start in range(0, len(chosen), chunk):
        part = texts[chosen[start:start + chunk].tolist()]["text"].to_pylist()
        release_mapped_pages(files)
        yield from part


# the multipliers of splitmix64's finaliser (Steele, Lea & Flood 2014), the round function of the Feistel network below
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
FEISTEL_ROUNDS = 4  # Luby & Rackoff (1988): four rounds of a pseudo-random function give a pseudo-random permutation
PLAN_CACHE_ROWS = 2**20  # rows of sorted pools a BatchPlan keeps: a corpus this small has its epoch sorted once


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX_1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX_2
    return x ^ (x >> np.uint64(31))


class Permutation:
    """A pseudo-random permutation of range(n), evaluated on demand in O(1) memory: a balanced Feistel network on the
    smallest even number of bits that covers n (Luby & Rackoff 1988), restricted to range(n) by cycle walking (Black &
    Rogaway 2002: a value that lands outside is encrypted again until it lands inside). The round keys come from
    ``rng``, so the permutation is a function of the generator's state. Replaces storing a shuffled arange of n
    indices (4 bytes a sentence: 40 MB per 10M sentences)."""

    def __init__(self, n: int, rng: np.random.Generator):
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.keys = rng.integers(0, 2**63, FEISTEL_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:  # a bijection of range(2 ** (2 * half))
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix64(right ^ key) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The images of ``positions`` (each in range(n)), as int64."""
        out = self._encrypt(np.asarray(positions, dtype=np.uint64))
        outside = np.flatnonzero(out >= self.n)
        while outside.size:  # cycle walking: a handful of rounds, as the domain is under 4 n
            out[outside] = self._encrypt(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int64)


class BatchPlan:
    """One epoch's batches of row indices, computed a pool at a time: batch k is ``plan[k]``.

    The rows' positions 0..n-1 are mapped through ``permutation`` (None: the identity), cut into pools of ``pool``
    positions, and each pool's rows are sorted by length (ties by position) and cut into batches of ``batch_size``.
    ``pools`` / ``offsets`` say which pool and which batch of it batch k is. A plan holds 8 bytes per batch
    plus the sorted pools it caches (at most ``PLAN_CACHE_ROWS`` rows), not a list of every sentence."""

    def __init__(self, lengths: np.ndarray, batch_size: int, pool: int, permutation: Permutation | None,
                 pools: np.ndarray, offsets: np.ndarray):
        self.lengths, self.batch_size, self.pool, self.permutation = lengths, batch_size, pool, permutation
        self.pools, self.offsets = pools, offsets  # (n_batches,) int32 each
        self._sorted: dict[int, np.ndarray] = {}  # pool -> its rows sorted by length, most recently used last

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, k: int) -> np.ndarray:
        rows = self._pool_rows(int(self.pools[k]))
        start = int(self.offsets[k]) * self.batch_size
        return rows[start:start + self.batch_size]

    def sizes(self) -> np.ndarray:
        """Rows in each batch: ``batch_size``, except the last batch of a pool, which takes the rest."""
        pool_rows = np.minimum(self.pool, len(self.lengths) - self.pools.astype(np.int64) * self.pool)
        return np.minimum(self.batch_size, pool_rows - self.offsets.astype(np.int64) * self.batch_size)

    def keep(self, mask: np.ndarray) -> BatchPlan:
        """The plan with only the batches where ``mask`` is true, in the same order."""
        return BatchPlan(self.lengths, self.batch_size, self.pool, self.permutation, self.pools[mask],
                         self.offsets[mask])

    def _pool_rows(self, p: int) -> np.ndarray:
        rows = self._sorted.pop(p, None)
        if rows is None:
            positions = np.arange(p * self.pool, min((p + 1) * self.pool, len(self.lengths)), dtype=np.int64)
            members = self.permutation(positions) if self.permutation is not None else positions
            rows = members[np.argsort(self.lengths[members], kind="stable")]
            while self._sorted and sum(map(len, self._sorted.values())) + len(rows) > PLAN_CACHE_ROWS:
                self._sorted.pop(next(iter(self._sorted)))  # the least recently used pool
        self._sorted[p] = rows
        return rows


def batch_plan(lengths, batch_size: int, *, shuffle: bool, seed: int | list[int] = 0, epoch: int = 0) -> BatchPlan:
    """:func:`make_batches` as a :class:`BatchPlan` (the same batches in the same order), without Python lists."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = np.asarray(lengths)
    n = len(sizes)
    if not shuffle:  # one pool of every row: all sorted by length, ties by index, batches in that order
        n_batches = -(-n // batch_size)
        return BatchPlan(sizes, batch_size, max(n, 1), None, np.zeros(n_batches, dtype=np.int32),
                         np.arange(n_batches, dtype=np.int32))
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), epoch])  # seed: an int or a sequence of ints
    permutation = Permutation(n, rng) if n else None
    pool = batch_size * POOL_BATCHES
    pool_rows = np.minimum(pool, n - np.arange(0, n, pool, dtype=np.int64))  # rows of each pool
    per_pool = -(-pool_rows // batch_size)  # batches of each pool
    pools = np.repeat(np.arange(len(per_pool), dtype=np.int32), per_pool)
    offsets = (np.arange(len(pools)) - np.repeat(np.cumsum(per_pool) - per_pool, per_pool)).astype(np.int32)
    shuffled = rng.permutation(len(pools))  # the batches of all pools, in a random order
    return BatchPlan(sizes, batch_size, pool, permutation, pools[shuffled], offsets[shuffled])


def make_batches(lengths, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    """Batches of sentence indices, each index exactly once, grouped by length so padding stays small.

    With ``shuffle``: the indices are permuted (a seeded :class:`Permutation`, computed a pool at a time), cut into
    pools of ``POOL_BATCHES`` batches, each pool is sorted by length and cut into batches, and the batch order is
    shuffled. The result depends only on (lengths, batch_size,
    seed, epoch), so a run resumed at batch k of an epoch sees the same batches. Without ``shuffle`` (evaluation):
    all indices sorted by length, ties by index. (:func:`batch_plan` gives the same batches as numpy arrays.)
    """
    plan = batch_plan(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
    return [plan[k].tolist() for k in range(len(plan))]


def padding_waste(batches: list[list[int]], lengths: list[int]) -> float:
    """The fraction of positions in the padded batches that are padding."""
    padded = real = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        padded += max(sizes, default=0) * len(sizes)
        real += sum(sizes)
    return (padded - real) / padded if padded else 0.0


def collate(sequences: list[list[int]], pad_id: int, width: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (1 on tokens, 0 on padding), both (B, T) long tensors; T is
    the longest sequence, or ``width`` if that is more."""
    if not sequences:
        raise ValueError("collate needs at least one sequence")
    width = max(width, *map(len, sequences))
    input_ids = [ids + [pad_id] * (width - len(ids)) for ids in sequences]
    attention_mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long)}


@dataclass
class Prepared:
    tokenizer: PreTrainedTokenizerBase
    splits: dict[str, TokenSplit]  # split -> token ids ending with EOS (Arrow-backed)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> vars(SplitStats)


def prepare_data(recipe: Recipe, tokenizer: PreTrainedTokenizerBase | None = None) -> Prepared:
    """Load the splits, train the tokenizer on (a sample of) the training split unless one is given, encode every
    split into the datasets cache."""
    texts, blank = load_splits(recipe.data)
    if tokenizer is None:
        tokenizer = trained_tokenizer(recipe, texts["train"])
    splits, stats = {}, {}
    for name, items in texts.items():
        split = encode_split(tokenizer, items, recipe.data.max_length, _num_proc(recipe.data, len(items)))
        release_mapped_pages(cache_files(items))  # the text file's pages that opening and encoding it mapped
        splits[name] = split
        stats[name] = vars(SplitStats(n_sentences=len(split), n_skipped_blank=blank.get(name, 0),
                                      n_truncated=split.n_truncated, n_tokens=int(split.lengths.sum())))
    return Prepared(tokenizer, splits, stats)


def trained_tokenizer(recipe: Recipe, train: datasets.Dataset) -> PreTrainedTokenizerBase:
    """build_tokenizer on :func:`tokenizer_sample` of the training split, kept next to the split in the datasets
    cache (keyed by the split's fingerprint and the tokenizer section, whose ``sample_seed`` draws the sample; not
    ``train.seed``), so a second run on the same data, with any training seed, reloads it instead of training it
    again. Pretrained and sentencepiece tokenizers are loaded as before."""
    cfg = recipe.tokenizer
    sampled = cfg.train_samples is not None and len(train) > cfg.train_samples
    if cfg.kind in ("pretrained", "sentencepiece") or not train.cache_files:
        return build_tokenizer(cfg, tokenizer_sample(train, cfg.train_samples, cfg.sample_seed))
    section = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "sample_seed"}
    key = json.dumps([ENCODING_VERSION, train._fingerprint, section, cfg.sample_seed if sampled else None],
                     sort_keys=True)
    folder = (Path(train.cache_files[0]["filename"]).parent / "textdvae-tokenizers" /
              hashlib.sha256(key.encode("utf-8")).hexdigest()[:32])
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(folder)
    tokenizer = build_tokenizer(cfg, tokenizer_sample(train, cfg.train_samples, cfg.sample_seed))
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process saved the same tokenizer first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


class TrainStream:
    """The training split read as a stream (``data.streaming: true``): nothing downloaded or tokenized ahead.

    Each process reads its own part of the stream (``datasets.distributed.split_dataset_by_node``) in windows of
    ``data.shuffle_buffer`` sentences. A window is cleaned (stripped, blanks skipped) and tokenized, shuffled, cut into
    pools of ``POOL_BATCHES`` batches, each pool sorted by length and cut into batches of ``batch_size`` rows, and the
    window's batches shuffled: length bucketing inside a shuffle buffer, a function of (seed, rank, epoch, window).
    :meth:`position` is the stream's state at the start of the current window (``IterableDataset.state_dict``) plus
    the batches already taken from it, so :meth:`restore` re-reads that window and continues with the same batches.
    At the end of the stream the next epoch starts from the beginning.
    """

    def __init__(self, open_stream, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, batch_size: int, *,
                 seed: int, rank: int = 0, world: int = 1):
        from datasets.distributed import split_dataset_by_node

        self._open = lambda: split_dataset_by_node(open_stream(), rank=rank, world_size=world)
        self.cfg, self.tokenizer, self.batch_size = cfg, tokenizer, batch_size
        self.seed, self.rank = seed, rank
        self.eos = _check_encoding(tokenizer, cfg.max_length)
        self.epoch, self.window, self.taken = 0, 0, 0
        self.counts = {"n_sentences": 0, "n_skipped_blank": 0, "n_truncated": 0, "n_tokens": 0}
        self._window_start: dict | None = None  # the stream's state_dict before the current window
        self._window_counts = dict(self.counts)  # counts before the current window
        self._dataset, self._iterator, self._batches = None, None, []

    def position(self) -> dict:
        """Where this process's stream stands (JSON-serialisable): what :meth:`restore` needs."""
        return {"epoch": self.epoch, "window": self.window, "taken": self.taken, "state": self._window_start,
                "counts": self._window_counts}

    def restore(self, position: dict) -> None:
        """Continue from a :meth:`position`: the same window is read again and its first ``taken`` batches skipped."""
        self.epoch, self.window = position["epoch"], position["window"]
        self._dataset = self._open()
        if position["state"] is not None:
            self._dataset.load_state_dict(position["state"])
        self._iterator = iter(self._dataset)
        self.counts = dict(position["counts"])
        self._fill(resume_state=position["state"])
        self._batches, self.taken = self._batches[position["taken"]:], position["taken"]

    def next_batch(self) -> list[list[int]]:
        """This process's next batch of token ids."""
        while not self._batches:
            if self._iterator is None:  # the first batch of the run
                self._dataset = self._open()
                self._iterator = iter(self._dataset)
            else:
                self.window += 1
            self._fill()
        self.taken += 1
        return self._batches.pop(0)

    def _fill(self, resume_state: dict | None = None) -> None:
        """Read one window and build its batches; at the end of the stream, start the next epoch."""
        import copy

        state = resume_state if resume_state is not None else copy.deepcopy(self._dataset.state_dict())
        before = dict(self.counts)
        texts = self._read_window()
        if not texts and self.window == 0 and self.epoch == 0:
            raise DataError(f"the streamed training split {self.cfg.train_split!r} has no sentences for process "
                            f"{self.rank}; point data.data_files.train at more data or use fewer processes")
        if not texts:  # the stream is exhausted: a new epoch from the beginning
            self.epoch, self.window = self.epoch + 1, 0
            self._dataset = self._open()  # the order within the stream is ours (windows seeded by epoch): no set_epoch
            self._iterator = iter(self._dataset)
            state, before = copy.deepcopy(self._dataset.state_dict()), dict(self.counts)
            texts = self._read_window()
        self._window_start, self._window_counts, self.taken = state, before, 0
        ids, truncated = _encode_texts(self.tokenizer, texts, self.cfg.max_length, self.eos)
        self.counts["n_sentences"] += len(ids)
        self.counts["n_truncated"] += sum(truncated)
        self.counts["n_tokens"] += sum(map(len, ids))
        plan = batch_plan([len(x) for x in ids], self.batch_size, shuffle=True,
                          seed=[self.seed, self.rank, self.window], epoch=self.epoch)
        self._batches = [[ids[i] for i in plan[k]] for k in range(len(plan))]

    def _read_window(self) -> list[str]:
        column, texts, seen = self.cfg.text_column, [], 0
        for example in self._iterator:
            if column not in example:
                raise DataError(f"data.text_column={column!r} is not a column of the streamed split "
                                f"{self.cfg.train_split!r} (columns: {', '.join(example)}); set data.text_column")
            value = example[column]
            if value is not None and not isinstance(value, str):
                raise DataError(f"column {column!r} of the streamed split {self.cfg.train_split!r} holds "
                                f"{type(value).__name__} values, not text; set data.text_column")
            seen += 1
            text = clean_sentence(value)
            if text:
                texts.append(text)
            else:
                self.counts["n_skipped_blank"] += 1
            if seen >= self.cfg.shuffle_buffer:
                break
        return texts


def prepare_stream(recipe: Recipe, tokenizer: PreTrainedTokenizerBase | None = None, *, rank: int = 0,
                   world: int = 1) -> tuple[Prepared, TrainStream]:
    """``data.streaming``: the training split as a :class:`TrainStream` (this process's part), the evaluation and
    test splits (at most ``data.max_eval_samples`` sentences each, 10,000 by default) read from their streams into
    Arrow. A tokenizer is trained on the first ``tokenizer.train_samples`` sentences of the training stream."""
    cfg = recipe.data
    _check_local_files(cfg)
    replace = _REPLACE_OPTIONS.get(cfg.path, {}) if cfg.encoding_errors == "replace" else {}

    def open_streams():  # split -> a fresh IterableDataset (a stream's position is state of its own object)
        return datasets.load_dataset(cfg.path, cfg.name, data_files=cfg.data_files, streaming=True, **replace,
                                     **cfg.load_options)

    def open_split(split: str):
        return open_streams()[split]

    names = list(open_streams())
    if cfg.train_split not in names:
        raise DataError(f"data.train_split={cfg.train_split!r} is not a split of {cfg.path!r} (splits: "
                        f"{', '.join(names)}); set data.train_split to one of them")
    splits, stats = {}, {}
    for key, split in (("eval", cfg.eval_split), ("test", cfg.test_split)):
        if split in names:
            rows = open_split(split).take(cfg.max_eval_samples or 10_000)
            texts = datasets.Dataset.from_dict({cfg.text_column: [r.get(cfg.text_column) for r in rows]})
            splits[key], blank = _sentences(texts, cfg, split)
            stats[key] = {"n_skipped_blank": blank}
    if not splits:
        raise DataError(f"data.streaming=true needs an evaluation or test split besides {cfg.train_split!r} (splits: "
                        f"{', '.join(names)}); add data.data_files.validation or set data.eval_split")
    if tokenizer is None:
        limit = recipe.tokenizer.train_samples
        rows = open_split(cfg.train_split).take(limit) if limit else open_split(cfg.train_split)
        sample = (text for text in (clean_sentence(r.get(cfg.text_column)) for r in rows) if text)
        tokenizer = build_tokenizer(recipe.tokenizer, sample)
    prepared = Prepared(tokenizer, {}, {})
    for key, texts in splits.items():
        split = encode_split(tokenizer, texts, cfg.max_length)
        prepared.splits[key] = split
        prepared.stats[key] = {"n_sentences": len(split), "n_skipped_blank": stats[key]["n_skipped_blank"],
                               "n_truncated": split.n_truncated, "n_tokens": int(split.lengths.sum())}
    stream = TrainStream(lambda: open_split(cfg.train_split), cfg, tokenizer, recipe.train.batch_size // world,
                         seed=recipe.train.seed, rank=rank, world=world)
    return prepared, stream


def configure_model_for_tokenizer(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> None:
    """Write the tokenizer's vocabulary size and special-token ids into ``recipe.model`` and re-validate it."""
    c = recipe.model
    c.vocab_size = len(tokenizer)
    c.pad_token_id, c.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    c.eos_token_id, c.unk_token_id = tokenizer.eos_token_id, tokenizer.unk_token_id
    c.__post_init__()  # re-validate: adaptive-softmax cutoffs must lie inside the real vocabulary
