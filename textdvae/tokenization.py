"""Tokenizers: train one on the training split, or load an existing one.

Every tokenizer returned by :func:`build_tokenizer` is a fast (``tokenizers``-backed) transformers tokenizer that

* has ``pad_token``, ``bos_token`` and ``eos_token`` set (and ``unk_token`` when its model has one);
* adds no special tokens when encoding: the model puts BOS in front of the decoder input and
  :func:`textdvae.data.encode` appends EOS, so a post-processor adding them would double them;
* survives ``save_pretrained(dir)`` + ``AutoTokenizer.from_pretrained(dir)`` with the same ids and decoding.

Trained tokenizers (kinds ``word``, ``bpe``, ``unigram``) give the special tokens the ids
PAD=0, BOS=1, EOS=2, UNK=3, and normalise text to Unicode NFC first (an "é" typed as e + combining accent and the
precomposed one are the same token). Loading never runs code from a tokenizer's folder or repo
(``trust_remote_code=False``); :func:`check_tokenizer_fits` refuses a tokenizer that does not fit its model.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges

from .recipe import RecipeError, TokenizerConfig

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3 in trained tokenizers

# Byte-level subwords start from all 256 byte symbols, so any text can be encoded without <unk>.
_BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()


def build_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None) -> PreTrainedTokenizerFast:
    """The tokenizer described by ``cfg``; ``texts`` (the training split) trains kinds word, bpe and unigram."""
    if cfg.kind in ("pretrained", "sentencepiece") and cfg.lowercase:
        raise RecipeError(f"tokenizer.lowercase=true only applies to trained tokenizers, not tokenizer.kind={cfg.kind}"
                          " (which keeps its own normalization); remove tokenizer.lowercase")
    if cfg.kind == "pretrained":
        return _pretrained(cfg.name_or_path)
    if cfg.kind == "sentencepiece":
        return _from_sentencepiece(cfg.name_or_path)
    if texts is None:
        raise ValueError(f"tokenizer.kind={cfg.kind} is trained on the training split: pass its texts")
    tokenizer = _train_words(cfg, texts) if cfg.kind == "word" else _train_byte_level_subwords(cfg, texts)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK)


def _train_words(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Whitespace-separated words (corpora such as PTB are already tokenised: punctuation is its own word).

    The special tokens come first, then the words by decreasing frequency (ties alphabetically), so frequent words
    get small ids, which an adaptive softmax relies on. The words are counted first and the special tokens put in
    front afterwards, so a corpus whose text already contains ``<unk>`` (PTB does) maps it to the special token
    rather than giving it a second id. Without a decoder, decoding joins the words with spaces.
    """
    counter = _whitespace_words(models.WordLevel(unk_token=UNK), cfg)
    counter.train_from_iterator(texts, trainers.WordLevelTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, show_progress=False))
    by_frequency = sorted(counter.get_vocab().items(), key=lambda item: item[1])
    words = [word for word, _ in by_frequency if word not in SPECIAL_TOKENS]
    vocab = {word: i for i, word in enumerate((SPECIAL_TOKENS + words)[:cfg.vocab_size])}
    return _whitespace_words(models.WordLevel(vocab, unk_token=UNK), cfg)


def _whitespace_words(model: models.WordLevel, cfg: TokenizerConfig) -> Tokenizer:
    """Split on whitespace only (``WhitespaceSplit``): ``Whitespace`` would also split off punctuation."""
    tokenizer = _with_normalizer(Tokenizer(model), cfg)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def _train_byte_level_subwords(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """BPE or unigram over byte-level symbols (as GPT-2): lossless, decode(encode(text)) == text for any text.

    Byte-level rather than Metaspace pre-tokenization because a character unseen in training (an accent, an emoji,
    the U+FFFD left by ``data.encoding_errors=replace``) still encodes to its bytes instead of <unk>, and spaces
    come back exactly as they were.
    """
    minimum = len(SPECIAL_TOKENS) + len(_BYTE_ALPHABET)
    if cfg.vocab_size < minimum:
        raise RecipeError(f"tokenizer.vocab_size={cfg.vocab_size} is too small for tokenizer.kind={cfg.kind}: the "
                          f"special tokens and the 256 byte symbols alone take {minimum}; use e.g. 1000 or more")
    if cfg.kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=SPECIAL_TOKENS, initial_alphabet=_BYTE_ALPHABET,
                                      show_progress=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIAL_TOKENS, unk_token=UNK,
                                          initial_alphabet=_BYTE_ALPHABET, show_progress=False)
    tokenizer = _with_normalizer(tokenizer, cfg)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _with_normalizer(tokenizer: Tokenizer, cfg: TokenizerConfig) -> Tokenizer:
    steps = [normalizers.NFC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


class TokenizerMismatch(ValueError):
    """A tokenizer whose vocabulary or special tokens differ from its model's config.json."""


def check_tokenizer_fits(config, tokenizer) -> None:
    """Raise TokenizerMismatch naming every difference between a tokenizer and the model config it is loaded with:
    its size against ``vocab_size`` (a larger one gives ids the embeddings do not have), and the pad, bos, eos and
    unk ids the model was trained with."""
    problems = []
    if len(tokenizer) != config.vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens, config.json vocab_size={config.vocab_size}")
    for name in ("pad", "bos", "eos", "unk"):
        expected, got = getattr(config, f"{name}_token_id", None), getattr(tokenizer, f"{name}_token_id", None)
        if expected is not None and got != expected:
            problems.append(f"{name}_token_id is {got} in the tokenizer, {expected} in config.json")
    if problems:
        raise TokenizerMismatch(f"the tokenizer does not fit the model ({'; '.join(problems)}); save the tokenizer the "
                                "model was trained with beside it (a training run's final/ holds both)")


def _pretrained(name_or_path: str) -> PreTrainedTokenizerFast:
    """A Hub tokenizer or a saved folder, re-wrapped as a plain fast tokenizer that adds no special tokens.

    Re-wrapping keeps the text -> ids pipeline (its ``tokenizer.json``) but drops the post-processor and the
    model-specific class, which would put [CLS]/[SEP] or BOS back when the saved tokenizer is reloaded.
    """
    loaded = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    if not isinstance(loaded, PreTrainedTokenizerFast):
        raise RecipeError(f"tokenizer.name_or_path={name_or_path!r} loads a {type(loaded).__name__}, which has no "
                          "fast (tokenizers) version; convert it first or use tokenizer.kind=sentencepiece for a "
                          ".model file")
    backend = Tokenizer.from_str(loaded.backend_tokenizer.to_str())
    backend.post_processor = None
    specials = {key: getattr(loaded, key) for key in ("pad_token", "bos_token", "eos_token", "unk_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, clean_up_tokenization_spaces=loaded.clean_up_tokenization_spaces,
        **{key: value for key, value in specials.items() if value is not None})
    _ensure_special_tokens(tokenizer)
    return tokenizer


def _ensure_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    """Give an existing tokenizer the pad, bos and eos tokens the model needs.

    A missing EOS is added as ``</s>``; a missing BOS becomes the EOS token (as in GPT-2, where one token marks
    both ends); a missing PAD is added as ``<pad>`` with its own id rather than reusing EOS, so a padded position
    can never be mistaken for an end of sentence. Added tokens enlarge the vocabulary: size the model with
    ``len(tokenizer)``.
    """
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})


# --- sentencepiece .model files ----------------------------------------------------------------------------------
# The model file is a protobuf (sentencepiece_model.proto). Its few fields used here are read directly, so no
# protobuf package is needed. Field numbers:
_MODEL_PIECES, _MODEL_TRAINER_SPEC, _MODEL_NORMALIZER_SPEC = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TRAINER_MODEL_TYPE, _TRAINER_SPLIT_BY_WHITESPACE, _TRAINER_WHITESPACE_AS_SUFFIX = 3, 22, 24
_TRAINER_BYTE_FALLBACK = 35
# special token -> (field number, default id); -1 means the model has no such piece
_TRAINER_IDS = {"unk_token": (40, 0), "bos_token": (41, 1), "eos_token": (42, 2), "pad_token": (43, -1)}
_NORM_CHARSMAP, _NORM_ADD_DUMMY_PREFIX, _NORM_REMOVE_EXTRA_WHITESPACES = 2, 3, 4
_UNIGRAM, _BPE = 1, 2
_TYPE_NORMAL, _TYPE_CONTROL, _TYPE_USER_DEFINED = 1, 3, 4


def _from_sentencepiece(path: str) -> PreTrainedTokenizerFast:
    """A sentencepiece ``.model`` file (unigram or BPE) as a fast tokenizer giving the same ids as sentencepiece.

    The pipeline mirrors sentencepiece's: its precompiled normalization rules, removal of extra whitespace, a
    dummy ``▁`` prefix, ``▁`` for spaces and pieces that never cross one, byte fallback when the model uses it.
    Special tokens are the pieces at the model's unk/bos/eos/pad ids, completed by :func:`_ensure_special_tokens`
    (sentencepiece models have no pad piece by default, so ``<pad>`` is usually added after the last piece).
    """
    pieces, trainer_spec, normalizer_spec = _read_sentencepiece(path)
    ids = {key: _option(trainer_spec, number, default) for key, (number, default) in _TRAINER_IDS.items()}
    specials = {key: pieces[i][0] for key, i in ids.items() if i >= 0}
    tokenizer = Tokenizer(_spm_model(path, pieces, trainer_spec, ids["unk_token"]))
    tokenizer.normalizer = _spm_normalizer(normalizer_spec)
    prepend = "always" if _option(normalizer_spec, _NORM_ADD_DUMMY_PREFIX, 1) else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        prepend_scheme=prepend, split=bool(_option(trainer_spec, _TRAINER_SPLIT_BY_WHITESPACE, 1)))
    metaspace = decoders.Metaspace(prepend_scheme=prepend)
    byte_fallback = bool(_option(trainer_spec, _TRAINER_BYTE_FALLBACK, 0))
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), metaspace]) if byte_fallback else metaspace
    tokenizer.add_tokens([AddedToken(text, normalized=False, special=kind == _TYPE_CONTROL)
                          for text, _, kind in pieces if kind in (_TYPE_CONTROL, _TYPE_USER_DEFINED)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)
    _ensure_special_tokens(wrapped)
    return wrapped


def _read_sentencepiece(path: str) -> tuple[list[tuple[str, float, int]], dict[int, list], dict[int, list]]:
    """The pieces (text, score, type), the trainer spec and the normalizer spec of a ``.model`` file."""
    if not Path(path).is_file():
        raise RecipeError(f"tokenizer.name_or_path={path!r} is not a file; tokenizer.kind=sentencepiece needs the "
                          "path of a sentencepiece .model file")
    try:
        model = _proto_fields(Path(path).read_bytes())
        pieces = [_piece(data) for data in model[_MODEL_PIECES]]
        trainer_spec = _proto_fields(model.get(_MODEL_TRAINER_SPEC, [b""])[-1])
        normalizer_spec = _proto_fields(model.get(_MODEL_NORMALIZER_SPEC, [b""])[-1])
    except (KeyError, IndexError, ValueError, struct.error):
        raise RecipeError(f"tokenizer.name_or_path={path!r} is not a sentencepiece model file") from None
    if _option(trainer_spec, _TRAINER_WHITESPACE_AS_SUFFIX, 0):
        raise RecipeError(f"{path!r} was trained with treat_whitespace_as_suffix=true, which cannot be converted")
    return pieces, trainer_spec, normalizer_spec


def _spm_model(path: str, pieces: list[tuple[str, float, int]], trainer_spec: dict[int, list],
               unk_id: int) -> models.Model:
    """The unigram model (pieces with their log-probabilities) or the BPE model (merges ranked by piece score)."""
    model_type = _option(trainer_spec, _TRAINER_MODEL_TYPE, _UNIGRAM)
    byte_fallback = bool(_option(trainer_spec, _TRAINER_BYTE_FALLBACK, 0))
    vocab = [(text, score) for text, score, _ in pieces]
    if model_type == _UNIGRAM:
        return models.Unigram(vocab, unk_id=unk_id, byte_fallback=byte_fallback)
    if model_type == _BPE:
        ids = {text: i for i, (text, _) in enumerate(vocab)}
        return models.BPE(ids, generate_merges(ids, vocab), unk_token=vocab[unk_id][0], fuse_unk=True,
                          byte_fallback=byte_fallback)
    raise RecipeError(f"{path!r} is a sentencepiece model of type {model_type} (word or char); only unigram and bpe "
                      "models can be converted")


def _spm_normalizer(spec: dict[int, list]) -> normalizers.Normalizer:
    """Sentencepiece's normalization: the precompiled character map, then strip and collapse runs of spaces."""
    steps = []
    charsmap = spec.get(_NORM_CHARSMAP, [b""])[-1]
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if _option(spec, _NORM_REMOVE_EXTRA_WHITESPACES, 1):
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def _option(spec: dict[int, list], number: int, default: int) -> int:
    """An integer field of a spec message (the last occurrence wins, as in protobuf), or its default."""
    value = spec.get(number, [default])[-1]
    return value - (1 << 64) if value >= 1 << 63 else value  # a negative int32 (pad_id=-1) is 64-bit two's complement


def _piece(data: bytes) -> tuple[str, float, int]:
    """(text, score, type) of one ``SentencePiece`` message."""
    fields = _proto_fields(data)
    score = struct.unpack("<f", fields[_PIECE_SCORE][-1])[0] if _PIECE_SCORE in fields else 0.0
    return fields[_PIECE_TEXT][-1].decode("utf-8"), score, fields.get(_PIECE_TYPE, [_TYPE_NORMAL])[-1]


def _proto_fields(data: bytes) -> dict[int, list]:
    """Decode one protobuf message: field number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            size, position = _varint(data, position)
            value, position = data[position:position + size], position + size
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = data[position:position + size], position + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position
