"""Tokenizers: trained word/bpe/unigram, converted sentencepiece models, and pretrained folders."""

import io
import random

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from textdvae.recipe import RecipeError, TokenizerConfig
from textdvae.tokenization import BOS, EOS, PAD, UNK, build_tokenizer

WORDS = "the a cat dog bird sat ran on under mat hill big small red quickly slowly , . ! café naïve 42 1999".split()


def corpus(n=400, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


# Unseen characters, accents, an emoji, U+FFFD (from data.encoding_errors=replace), runs of spaces, digits.
HARD_SENTENCES = ["the cat sat on the mat .", "Zebra über Ærø 😀 costs $3.50!", "two  spaces and\ta tab",
                  "bad byte \ufffd here", "12345 67", "ＦＵＬＬ width"]


def ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_word_ids_are_specials_then_words_by_decreasing_frequency():
    texts = ["b a c a", "a b <unk> d d d d d", "a c a"]  # a:5, d:5, b:2, c:2; a literal <unk> is not a word
    tokenizer = build_tokenizer(TokenizerConfig(kind="word"), texts)
    assert tokenizer.convert_ids_to_tokens(list(range(8))) == [PAD, BOS, EOS, UNK, "a", "d", "b", "c"]
    assert len(tokenizer) == 8
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3


def test_word_unseen_words_are_unk_and_decoding_joins_words_with_spaces():
    tokenizer = build_tokenizer(TokenizerConfig(kind="word"), ["the cat sat .", "the dog ran .", "it's a-b"])
    encoded = ids(tokenizer, "the zebra sat , .")  # whitespace-split only: "," is a word of its own, unseen
    assert encoded == [tokenizer.convert_tokens_to_ids(word) for word in ("the", UNK, "sat", UNK, ".")]
    assert tokenizer.unk_token_id == 3
    assert tokenizer.decode(ids(tokenizer, "the cat ran .")) == "the cat ran ."
    assert tokenizer.tokenize("it's  a-b") == ["it's", "a-b"]  # split on whitespace only, not on punctuation


def test_word_min_frequency_and_vocab_size_cap():
    texts = ["x x x y y z", "x y w"]  # x:4, y:3, z:1, w:1
    frequent = build_tokenizer(TokenizerConfig(kind="word", min_frequency=2), texts)
    assert frequent.convert_ids_to_tokens(list(range(4, len(frequent)))) == ["x", "y"]
    assert ids(frequent, "z w x") == [3, 3, 4]
    capped = build_tokenizer(TokenizerConfig(kind="word", vocab_size=8), texts * 3 + ["v u t s r"])
    assert len(capped) == 8
    assert capped.convert_ids_to_tokens([4, 5]) == ["x", "y"]


def test_word_lowercase():
    tokenizer = build_tokenizer(TokenizerConfig(kind="word", lowercase=True), ["The cat", "the CAT"])
    assert tokenizer.convert_ids_to_tokens([4, 5]) == ["cat", "the"]
    assert ids(tokenizer, "THE Cat") == [5, 4]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_byte_level_subwords_decode_back_to_the_text(kind):
    tokenizer = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=400), corpus())
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [PAD, BOS, EOS, UNK]
    for text in HARD_SENTENCES:
        encoded = ids(tokenizer, text)
        assert tokenizer.unk_token_id not in encoded  # every byte has a symbol
        assert tokenizer.decode(encoded) == text
    assert len(ids(tokenizer, "the cat sat on the mat .")) < len("the cat sat on the mat .")  # merges were learnt


def test_byte_level_vocab_too_small_is_rejected():
    with pytest.raises(RecipeError, match=r"tokenizer.vocab_size=100 .*256 byte symbols"):
        build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=100), corpus())


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_no_special_tokens_added_and_save_load_round_trip(kind, tmp_path):
    tokenizer = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=400), corpus())
    texts = corpus(20, seed=1) + HARD_SENTENCES
    for text in texts:
        assert ids(tokenizer, text) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert not {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} & set(ids(tokenizer, text))
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert [ids(reloaded, text) for text in texts] == [ids(tokenizer, text) for text in texts]
    assert [reloaded.decode(ids(reloaded, text)) for text in texts] == [tokenizer.decode(ids(tokenizer, text))
                                                                        for text in texts]
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2, 3)


def spm_model(tmp_path, **options):
    """A tiny sentencepiece model trained on the generated corpus; returns its path."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buffer, minloglevel=2,
                                   hard_vocab_limit=False, **options)
    path = tmp_path / "tiny.model"
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("options", [
    {"model_type": "unigram", "vocab_size": 60, "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3},
    {"model_type": "bpe", "vocab_size": 316, "byte_fallback": True},  # sentencepiece's default ids, no pad piece
], ids=["unigram", "bpe-byte-fallback"])
def test_sentencepiece_ids_match_sentencepiece(options, tmp_path):
    path = spm_model(tmp_path, **options)
    processor = spm.SentencePieceProcessor(model_file=str(path))
    tokenizer = build_tokenizer(TokenizerConfig(kind="sentencepiece", name_or_path=str(path)), None)
    texts = corpus(30, seed=2) + HARD_SENTENCES + ["  leading and trailing  ", "Café NAÏVE"]
    for text in texts:
        assert ids(tokenizer, text) == processor.encode(text), text
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        processor.unk_id(), processor.bos_id(), processor.eos_id())
    # sentencepiece's pad id when the model has one; otherwise <pad> is added after the last piece
    expected_pad = processor.pad_id() if processor.pad_id() >= 0 else processor.get_piece_size()
    assert tokenizer.pad_token_id == expected_pad
    for text in corpus(10, seed=3):
        assert tokenizer.decode(ids(tokenizer, text)) == text
    for text in texts:  # sentencepiece decodes <unk> as " ⁇ "; compare the rest (unseen characters as bytes)
        encoded = processor.encode(text)
        if processor.unk_id() not in encoded:
            assert tokenizer.decode(encoded) == processor.decode(encoded)
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert [ids(reloaded, text) for text in texts] == [processor.encode(text) for text in texts]


def test_sentencepiece_missing_file_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match="not a file"):
        build_tokenizer(TokenizerConfig(kind="sentencepiece", name_or_path=str(tmp_path / "missing.model")), None)
    (tmp_path / "junk.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(RecipeError, match="not a sentencepiece model"):
        build_tokenizer(TokenizerConfig(kind="sentencepiece", name_or_path=str(tmp_path / "junk.model")), None)


def test_pretrained_from_a_saved_folder(tmp_path):
    trained = build_tokenizer(TokenizerConfig(kind="word"), corpus())
    trained.save_pretrained(tmp_path)
    loaded = build_tokenizer(TokenizerConfig(kind="pretrained", name_or_path=str(tmp_path)), None)
    for text in corpus(20, seed=4):
        assert ids(loaded, text) == ids(trained, text)
        assert loaded.decode(ids(loaded, text)) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)


def test_pretrained_gets_missing_specials_and_stops_adding_special_tokens(tmp_path):
    """A GPT-2/BERT-like folder: no pad, no bos, and a post-processor that wraps every text in </s>."""
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="</s> $A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)
    assert ids(AutoTokenizer.from_pretrained(tmp_path), "a b") == [1, 2, 3, 1]  # as saved: adds </s>

    tokenizer = build_tokenizer(TokenizerConfig(kind="pretrained", name_or_path=str(tmp_path)), None)
    assert ids(tokenizer, "a b c") == [2, 3, 0]
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("</s>", "</s>", PAD)
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (1, 1, 4)
    assert len(tokenizer) == 5
    tokenizer.save_pretrained(tmp_path / "again")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert ids(reloaded, "a b c") == [2, 3, 0]
    assert (reloaded.bos_token_id, reloaded.eos_token_id, reloaded.pad_token_id) == (1, 1, 4)


def test_pretrained_without_eos_gets_one_used_as_bos(tmp_path):
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    tokenizer = build_tokenizer(TokenizerConfig(kind="pretrained", name_or_path=str(tmp_path)), None)
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == (EOS, EOS, PAD)
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (2, 2, 3)  # after [UNK], a
    assert ids(tokenizer, "a b") == [1, 0]


def test_lowercase_is_rejected_for_existing_tokenizers(tmp_path):
    with pytest.raises(RecipeError, match="tokenizer.lowercase"):
        build_tokenizer(TokenizerConfig(kind="pretrained", name_or_path=str(tmp_path), lowercase=True), None)
