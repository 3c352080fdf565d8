"""Loading sentences, encoding them, length-bucketed batches and padding."""

import json
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from textdvae.data import DataError, collate, encode, load_texts, make_batches, padding_waste
from textdvae.recipe import DataConfig, TokenizerConfig
from textdvae.tokenization import build_tokenizer

from conftest import SCHEDULED_KL

SHARED = Path("/work/shared/data")
# short Yelp: `label<TAB>sentence`; quotes are ordinary characters and "nan"/"null" are words, not missing values
YELP_OPTIONS = {"delimiter": "\t", "column_names": ["label", "text"], "quoting": 3, "na_filter": False}
pytestmark = pytest.mark.usefixtures("datasets_cache")


def write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_text_files_are_stripped_blank_lines_counted_and_splits_mapped(tmp_path):
    files = {
        "train": write(tmp_path / "train.txt", " the cat sat \n\n a dog ran \n   \n the end \n"),
        "validation": write(tmp_path / "valid.txt", " only valid \n"),
        "test": write(tmp_path / "test.txt", " only test \n \n"),
    }
    texts, n_blank = load_texts(DataConfig(path="text", data_files=files))
    assert texts == {"train": ["the cat sat", "a dog ran", "the end"], "eval": ["only valid"], "test": ["only test"]}
    assert n_blank == {"train": 2, "eval": 0, "test": 1}


def test_json_lines_with_extra_keys_and_sample_limits(tmp_path):
    rows = [{"text": f"sentence {i} .", "subject": "cat", "tense": "past"} for i in range(10)]
    blank = {"text": " ", "subject": "dog", "tense": "past"}
    files = {"train": write(tmp_path / "train.jsonl", jsonl(rows[:6] + [blank])),
             "validation": write(tmp_path / "valid.jsonl", jsonl(rows[6:]))}
    cfg = DataConfig(path="json", data_files=files, max_train_samples=2, max_eval_samples=3)
    texts, n_blank = load_texts(cfg)
    assert texts == {"train": ["sentence 0 .", "sentence 1 ."],
                     "eval": ["sentence 6 .", "sentence 7 .", "sentence 8 ."]}
    assert n_blank == {"train": 1, "eval": 0}  # no test split: optional


def test_tab_separated_csv_keeps_quotes_and_na_like_words(tmp_path):
    lines = ['1\tshe said "great food" .', '0\t" quoted start', "1\tnan", "0\tnone", "1\t", '0\tit\'s "fine\n']
    file = write(tmp_path / "y.txt", "\n".join(lines))
    texts, n_blank = load_texts(DataConfig(path="csv", data_files={"train": file}, load_options=YELP_OPTIONS))
    assert texts["train"] == ['she said "great food" .', '" quoted start', "nan", "none", 'it\'s "fine']
    assert n_blank["train"] == 1


def test_missing_text_column_lists_the_columns(tmp_path):
    file = write(tmp_path / "t.jsonl", jsonl([{"sentence": "a b", "label": 1}]))
    cfg = DataConfig(path="json", data_files={"train": file})
    with pytest.raises(DataError, match=r"data.text_column='text'.*columns: sentence, label.*set data.text_column"):
        load_texts(cfg)
    with pytest.raises(DataError, match="column 'label' of split 'train' holds int64 values, not text"):
        load_texts(DataConfig(path="json", data_files=cfg.data_files, text_column="label"))


def test_missing_train_split_lists_the_splits(tmp_path):
    cfg = DataConfig(path="text", data_files={"validation": write(tmp_path / "v.txt", "a b\n")})
    with pytest.raises(DataError, match=r"data.train_split='train'.*splits: validation"):
        load_texts(cfg)


BAD_FILES = {  # a byte that is not UTF-8 (latin-1 é) on line 3
    "text": ("t.txt", b"fine\nalso fine\ncaf\xe9 au lait\n"),
    "json": ("t.jsonl", b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "caf\xe9 au lait"}\n'),
    "csv": ("t.tsv", b"1\tfine\n0\talso fine\n1\tcaf\xe9 au lait\n"),
}


@pytest.mark.parametrize("builder", BAD_FILES)
def test_non_utf8_strict_names_file_and_line(builder, tmp_path):
    name, content = BAD_FILES[builder]
    file = write(tmp_path / name, content)
    options = YELP_OPTIONS if builder == "csv" else {}
    with pytest.raises(DataError, match=rf"{name}', line 3: byte 0xe9 .*data.encoding_errors=replace"):
        load_texts(DataConfig(path=builder, data_files={"train": file}, load_options=options))


@pytest.mark.parametrize("builder", BAD_FILES)
def test_non_utf8_replace_gives_replacement_character(builder, tmp_path):
    name, content = BAD_FILES[builder]
    file = write(tmp_path / name, content)
    options = YELP_OPTIONS if builder == "csv" else {}
    texts, _ = load_texts(DataConfig(path=builder, data_files={"train": file}, load_options=options,
                                     encoding_errors="replace"))
    assert texts["train"] == ["fine", "also fine", "caf\ufffd au lait"]


def test_empty_file_and_all_blank_split_are_errors(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=r"empty.txt' \(split 'train'\) is empty"):
        load_texts(DataConfig(path="text", data_files={"train": empty}))
    blank = write(tmp_path / "blank.txt", "\n  \n\t\n")
    with pytest.raises(DataError, match=r"split 'validation' \(.*blank.txt\) has no sentences"):
        load_texts(DataConfig(path="text", data_files={"train": write(tmp_path / "t.txt", "a\n"), "validation": blank}))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data.data_files.train='.*nope.txt' matches no file"):
        load_texts(DataConfig(path="text", data_files={"train": str(tmp_path / "nope.txt")}))


def test_encode_appends_eos_and_truncates_to_max_length():
    texts = ["a b c", "a b c d e f g", "a"]
    tokenizer = build_tokenizer(TokenizerConfig(kind="word"), texts)
    sequences, stats = encode(tokenizer, texts, max_length=4, n_skipped_blank=2)
    eos = tokenizer.eos_token_id
    assert sequences[0] == tokenizer("a b c")["input_ids"] + [eos]  # exactly max_length: not truncated
    assert sequences[1] == tokenizer("a b c")["input_ids"] + [eos]  # 8 with EOS -> 3 tokens + EOS
    assert sequences[2] == tokenizer("a")["input_ids"] + [eos]
    assert (stats.n_sentences, stats.n_skipped_blank, stats.n_truncated, stats.n_tokens) == (3, 2, 1, 10)


def ptb_like_lengths(n=42_000, seed=0):
    """Sentence lengths shaped like PTB's (EOS included): mean ~22, sd ~10, between 2 and 64."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(shape=4.8, scale=4.6, size=n).round().astype(int), 2, 64).tolist()


@pytest.mark.parametrize("shuffle", [True, False])
def test_make_batches_covers_every_index_once(shuffle):
    lengths = ptb_like_lengths(5_000)
    batches = make_batches(lengths, 64, shuffle=shuffle, seed=3, epoch=1)
    assert sorted(i for batch in batches for i in batch) == list(range(5_000))
    assert all(1 <= len(batch) <= 64 for batch in batches)
    assert sum(len(batch) < 64 for batch in batches) == 1  # only the remainder batch is short
    assert all(isinstance(i, int) for i in batches[0])


def test_make_batches_is_deterministic_per_seed_and_epoch():
    lengths = ptb_like_lengths(5_000)
    first = make_batches(lengths, 64, shuffle=True, seed=0, epoch=0)
    assert make_batches(lengths, 64, shuffle=True, seed=0, epoch=0) == first
    assert make_batches(lengths, 64, shuffle=True, seed=0, epoch=1) != first
    assert make_batches(lengths, 64, shuffle=True, seed=1, epoch=0) != first
    evaluation = make_batches(lengths, 64, shuffle=False, seed=5, epoch=7)
    assert evaluation == make_batches(lengths, 64, shuffle=False)
    flat = [i for batch in evaluation for i in batch]
    assert [lengths[i] for i in flat] == sorted(lengths)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 16, 17, 1000, 4097, 65_537])
def test_feistel_permutation_is_a_permutation(n):
    """Cycle walking keeps the Feistel network a bijection of range(n) for any n, powers of two and one past them
    (where the bit domain is nearly 4 n) included; and it is a function of the generator's state."""
    from textdvae.data import Permutation

    images = Permutation(n, np.random.default_rng(n))(np.arange(n))
    assert images.dtype == np.int64 and sorted(images.tolist()) == list(range(n))
    assert Permutation(n, np.random.default_rng(n))(np.arange(n)).tolist() == images.tolist()


def test_feistel_permutation_mixes_like_a_random_one():
    """Against what a uniformly random permutation of 100,000 gives: position and image uncorrelated (|r| ~ 0.003),
    about one fixed point (Poisson(1)), neighbours' images a third of the range apart on average; a weak network
    (one round, or a constant round function) fails at least one of these."""
    from textdvae.data import Permutation

    n = 100_000
    positions = np.arange(n)
    for seed in range(3):
        images = Permutation(n, np.random.default_rng(seed))(positions)
        assert abs(np.corrcoef(positions, images)[0, 1]) < 0.02
        assert (images == positions).sum() <= 6
        assert 0.32 < np.abs(np.diff(images)).mean() / n < 0.35
        # the residues of the images of consecutive runs are spread evenly (no lattice structure)
        counts = np.bincount(images[:10_000] % 10, minlength=10)
        assert counts.min() > 900 and counts.max() < 1100


def test_batch_plan_is_pinned_and_holds_no_list_of_sentences():
    """The plan of a (seed, epoch) is fixed (version data.BATCH_PLAN_VERSION: a run resumed from a checkpoint sees
    the same batches; change these values only with that version), and a 10M-sentence plan holds its batches' pool
    and offset (8 bytes a batch of 128) and at most PLAN_CACHE_ROWS rows of sorted pools, not 10M indices."""
    from textdvae.data import BATCH_PLAN_VERSION, PLAN_CACHE_ROWS, batch_plan

    assert BATCH_PLAN_VERSION == 2
    lengths = np.random.default_rng(5).integers(1, 40, 1000).astype(np.int32)
    plan = batch_plan(lengths, 16, shuffle=True, seed=3, epoch=2)
    assert [plan[k][:4].tolist() for k in range(3)] == [[119, 0, 114, 37], [599, 644, 392, 345], [442, 425, 698, 327]]

    big = np.random.default_rng(0).integers(2, 60, 10_000_000).astype(np.uint8)
    plan = batch_plan(big, 128, shuffle=True, seed=0, epoch=0)
    assert plan.pools.nbytes + plan.offsets.nbytes == 8 * len(plan) == 8 * -(-10_000_000 // 128)
    seen = np.concatenate([plan[k] for k in range(400)])
    assert len(np.unique(seen)) == len(seen) == 400 * 128  # distinct, and full: 10M rows are 1,562.5 pools of 6,400
    assert sum(map(len, plan._sorted.values())) <= PLAN_CACHE_ROWS
    assert all(np.all(np.diff(big[plan[k]].astype(int)) >= 0) for k in range(20))  # each batch sorted by length


def _mapped_rss(path: str) -> int:
    """Bytes of `path` resident in this process's mappings of it (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_token_rows_do_not_stay_mapped(tmp_path, monkeypatch):
    """Rows read at random from a mapped token file map the cached pages around each row (fault-around): without
    release the file's pages pile up in the RSS; TokenSplit.rows returns the same rows and leaves none mapped (for
    files of at least RELEASE_MIN_BYTES: lowered here to this test's ~4 MB file)."""
    from textdvae import data as data_lib
    from textdvae.data import TokenSplit

    monkeypatch.setattr(data_lib, "RELEASE_MIN_BYTES", 2**20)

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 60, 20_000)
    ids = [rng.integers(0, 30_000, n).astype(np.int32).tolist() for n in lengths]
    datasets.Dataset.from_dict({"input_ids": ids, "length": lengths.astype(np.int32), "truncated": [False] * len(ids)},
                               features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                                           "length": datasets.Value("int32"),
                                                           "truncated": datasets.Value("bool")})
                               ).save_to_disk(tmp_path / "tokens")
    split = TokenSplit(datasets.load_from_disk(tmp_path / "tokens"))
    (path,) = data_lib.cache_files(split.dataset)
    picks = rng.permutation(len(ids))[:400].tolist()
    raw = split.dataset.with_format("arrow")[picks]["input_ids"].to_pylist()  # the bare read, no release
    assert raw == [ids[i] for i in picks]
    assert _mapped_rss(path) > 2 ** 21  # 400 rows mapped more than 2 MB of the ~4 MB file
    assert split.rows(picks) == raw
    assert _mapped_rss(path) == 0


def test_length_bucketing_keeps_padding_small():
    lengths = ptb_like_lengths()
    bucketed = padding_waste(make_batches(lengths, 64, shuffle=True), lengths)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    unsorted = padding_waste([order[i:i + 64] for i in range(0, len(order), 64)], lengths)
    assert bucketed < 0.05
    assert unsorted > 10 * bucketed


def test_padding_waste_counts_padded_positions():
    assert padding_waste([[0, 1], [2]], [3, 1, 5]) == pytest.approx(2 / 11)
    assert padding_waste([], []) == 0.0


def test_collate_right_pads_with_mask():
    batch = collate([[5, 6, 2], [7, 2], [2]], pad_id=0)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 2], [7, 2, 0], [2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]


@pytest.mark.skipif(not (SHARED / "ptb").is_dir(), reason="Penn Treebank not in /work/shared/data")
def test_penn_treebank_loads_stripped():
    texts, n_blank = load_texts(DataConfig(path="text", data_files={"train": str(SHARED / "ptb/valid.txt")}))
    assert len(texts["train"]) == 3370 and n_blank == {"train": 0}
    assert all(text == text.strip() and text for text in texts["train"])


@pytest.mark.skipif(not (SHARED / "short_yelp").is_dir(), reason="short Yelp not in /work/shared/data")
def test_short_yelp_loads_with_the_csv_builder():
    files = {"train": str(SHARED / "short_yelp/valid.txt")}
    texts, n_blank = load_texts(DataConfig(path="csv", data_files=files, load_options=YELP_OPTIONS))
    lines = (SHARED / "short_yelp/valid.txt").read_text(encoding="utf-8").splitlines()
    assert texts["train"] == [line.split("\t", 1)[1].strip() for line in lines]
    assert len(texts["train"]) == 10_000 and n_blank == {"train": 0}


def ptb_recipe(tmp_path, *overrides):
    from textdvae import recipe as recipe_lib
    if (tmp_path / "train.txt").exists():  # written once: a rewritten file is new data to datasets (its mtime)
        files = {"train": str(tmp_path / "train.txt"), "validation": str(tmp_path / "valid.txt")}
    else:
        files = {"train": write(tmp_path / "train.txt", "".join(f"w{i % 7} w{i % 5} w{i % 3} .\n" for i in range(300))
                                + "  \n" + "a b c d e f g h i j k l\n"),
                 "validation": write(tmp_path / "valid.txt", "w1 w2 .\nw0 zz .\n")}
    return recipe_lib.load("recipes/quickstart.yaml", [
        f"output_dir={tmp_path / 'run'}", "data.path=text", "data.text_column=text",
        f"data.data_files.train={files['train']}", f"data.data_files.validation={files['validation']}",
        f"data.data_files.test={files['validation']}", "data.max_length=6", *SCHEDULED_KL, *overrides])


def test_prepared_splits_are_arrow_backed_and_match_encode(tmp_path):
    from textdvae.data import TokenSplit, prepare_data
    recipe = ptb_recipe(tmp_path)
    prepared = prepare_data(recipe)
    texts, _ = load_texts(recipe.data)
    for split in ("train", "eval"):
        expected, stats = encode(prepared.tokenizer, texts[split], max_length=6)
        got = prepared.splits[split]
        assert isinstance(got, TokenSplit) and got.dataset.cache_files  # memory-mapped from the datasets cache
        assert got.rows(range(len(got))) == expected == list(got)
        assert got.lengths.tolist() == [len(ids) for ids in expected]
        assert got.rows([1, 0]) == [expected[1], expected[0]] and got[-1] == expected[-1]
    assert prepared.stats["train"] == {"n_sentences": 301, "n_skipped_blank": 1, "n_truncated": 1,
                                       "n_tokens": 300 * 5 + 6}


def test_cached_files_are_written_in_large_record_batches(tmp_path, monkeypatch):
    """Opening a cached Arrow file reads every record batch's header (and maps the cached pages around each): the
    raw, cleaned and tokenized training split are each written in record batches of ARROW_ROWS rows, not datasets'
    default 1,000, and the token ids read back are the same."""
    import pyarrow as pa

    from textdvae import data as data_lib

    def batch_rows(dataset) -> list[int]:
        with pa.memory_map(dataset.cache_files[0]["filename"]) as source:
            return [b.num_rows for b in pa.ipc.open_stream(source).read_all().to_batches()]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = data_lib.prepare_data(ptb_recipe(tmp_path / "a"))
    monkeypatch.setattr(data_lib, "ARROW_ROWS", 120)
    loaded = []  # what load_dataset gave the data module: the raw splits
    load = datasets.load_dataset
    monkeypatch.setattr(data_lib.datasets, "load_dataset", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    texts, _ = data_lib.load_splits(ptb_recipe(tmp_path / "b").data)
    prepared = data_lib.prepare_data(ptb_recipe(tmp_path / "b"))
    assert batch_rows(loaded[0]["train"]) == [120, 120, 62]  # 302 lines, the blank one included
    assert batch_rows(texts["train"]) == [120, 120, 61]  # 301 sentences
    assert batch_rows(prepared.splits["train"].dataset) == [120, 120, 61]
    assert list(prepared.splits["train"]) == list(reference.splits["train"])


def test_second_preparation_reuses_the_cached_tokenizer_and_token_ids(tmp_path, monkeypatch):
    from textdvae import data as data_lib
    first = data_lib.prepare_data(ptb_recipe(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError("tokenized or trained again despite a warm cache")

    monkeypatch.setattr(data_lib, "build_tokenizer", fail)
    monkeypatch.setattr(data_lib, "_encode_batch", fail)
    again = data_lib.prepare_data(ptb_recipe(tmp_path))
    assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert again.splits["train"].rows(range(301)) == first.splits["train"].rows(range(301))
    assert again.stats == first.stats
    with pytest.raises(AssertionError, match="warm cache"):  # another max_length is another encoding
        data_lib.prepare_data(ptb_recipe(tmp_path, "data.max_length=5"), tokenizer=first.tokenizer)
    monkeypatch.undo()
    other = build_tokenizer(TokenizerConfig(kind="word", lowercase=True), ["W1 w2 ."])
    monkeypatch.setattr(data_lib, "_encode_batch", fail)
    with pytest.raises(AssertionError, match="warm cache"):  # another tokenizer is another encoding
        data_lib.prepare_data(ptb_recipe(tmp_path), tokenizer=other)


def test_another_training_seed_reuses_a_sampled_tokenizer_and_its_token_ids(tmp_path, monkeypatch):
    from textdvae import data as data_lib
    first = data_lib.prepare_data(ptb_recipe(tmp_path, "tokenizer.train_samples=50"))  # 301 sentences: sampled

    def fail(*args, **kwargs):
        raise AssertionError("tokenized or trained again for another training seed")

    monkeypatch.setattr(data_lib, "build_tokenizer", fail)
    monkeypatch.setattr(data_lib, "_encode_batch", fail)
    again = data_lib.prepare_data(ptb_recipe(tmp_path, "tokenizer.train_samples=50", "train.seed=7"))
    assert again.splits["train"].rows(range(301)) == first.splits["train"].rows(range(301))
    with pytest.raises(AssertionError, match="another training seed"):  # another sample is another tokenizer
        data_lib.prepare_data(ptb_recipe(tmp_path, "tokenizer.train_samples=50", "tokenizer.sample_seed=1"))


def test_tokenizer_reads_a_seeded_sample_of_a_large_training_split():
    from textdvae.data import tokenizer_sample
    train = datasets.Dataset.from_dict({"text": [f"s{i}" for i in range(1000)]})
    assert list(tokenizer_sample(train, None, seed=0, chunk=64)) == train["text"][:]
    assert list(tokenizer_sample(train, 1000, seed=0, chunk=64)) == train["text"][:]
    sample = list(tokenizer_sample(train, 100, seed=0, chunk=64))
    assert len(sample) == len(set(sample)) == 100 and set(sample) <= set(train["text"][:])
    assert sample == sorted(sample, key=lambda s: int(s[1:]))  # corpus order
    assert list(tokenizer_sample(train, 100, seed=0)) == sample
    assert list(tokenizer_sample(train, 100, seed=1)) != sample
