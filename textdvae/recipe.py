"""Recipes: a YAML file plus dotted ``key=value`` overrides -> typed, validated config sections.

A recipe has five sections and one top-level key::

    output_dir: runs/quickstart
    model:     {...}   # architecture -> TextDVAEConfig (what goes to the Hub)
    data:      {...}   # DataConfig: arguments of datasets.load_dataset + length handling
    tokenizer: {...}   # TokenizerConfig: train one, or load a pretrained one
    train:     {...}   # TrainConfig: optimisation, schedules, evaluation, checkpoints
    hub:       {...}   # HubConfig: push at the end of training

Unknown keys fail at once and name the closest valid key; impossible values fail naming the value and
the fix. Config flows one way: recipe -> these dataclasses -> constructors.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .configuration import TextDVAEConfig, check_choice


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message names the key, the value and the fix."""


@dataclass
class DataConfig:
    """Where the sentences come from. Mirrors ``datasets.load_dataset`` so any Hub dataset or local file works."""

    path: str = "json"  # a Hub dataset id, or a builder: text, json, csv, parquet
    name: str | None = None  # dataset configuration name (load_dataset's `name`)
    data_files: dict[str, Any] | None = None  # split -> file or list of files, for local data
    load_options: dict[str, Any] = field(default_factory=dict)  # extra load_dataset kwargs, e.g. {delimiter: "\t"}
    text_column: str = "text"
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    max_length: int = 64  # tokens per sentence incl. end-of-sentence; longer ones are truncated and counted
    max_train_samples: int | None = None  # take the first n training sentences (quick runs, tests)
    max_eval_samples: int | None = None  # the same for the evaluation and test splits
    encoding_errors: str = "strict"  # non-UTF-8 bytes in local text files: strict (error naming file:line) | replace
    num_proc: int | None = None  # processes that clean and tokenize the splits (datasets' map num_proc); None: one
    # read the training split as a stream (no full download; for Hub-scale corpora): needs train.max_steps; the
    # evaluation and test splits are read up to max_eval_samples (10,000 when unset)
    streaming: bool = False
    shuffle_buffer: int = 50_000  # streaming: sentences per window that is shuffled and length-bucketed

    def validate(self) -> None:
        _positive("data.max_length", self.max_length, minimum=2)
        _positive("data.shuffle_buffer", self.shuffle_buffer)
        self.data_files = _expand_user(self.data_files)
        for key in ("max_train_samples", "max_eval_samples", "num_proc"):
            value = getattr(self, key)
            if value is not None:
                _positive(f"data.{key}", value)
        check_choice("data.encoding_errors", self.encoding_errors, ("strict", "replace"), RecipeError)


@dataclass
class TokenizerConfig:
    """Train a tokenizer on the training split, or load an existing one."""

    kind: str = "word"  # word | bpe | unigram | pretrained (name_or_path: a Hub id or folder) | sentencepiece (a .model file)
    vocab_size: int = 10000  # upper bound on the trained vocabulary, special tokens included
    min_frequency: int = 1  # a word seen fewer times in train becomes <unk> (word) / is not merged (bpe)
    lowercase: bool = False
    name_or_path: str | None = None  # for kind=pretrained or kind=sentencepiece
    # trained kinds read at most this many training sentences: all of them when the split is no larger, else a sample
    # drawn with sample_seed; None: the whole split (memory and time grow with it)
    train_samples: int | None = 1_000_000
    # the seed of that sample: its own, not train.seed, so that runs with other seeds reuse the tokenizer and the
    # tokenized splits in the datasets cache (at 10M sentences another tokenizer costs minutes of tokenizing)
    sample_seed: int = 0

    def validate(self) -> None:
        check_choice("tokenizer.kind", self.kind, ("word", "bpe", "unigram", "pretrained", "sentencepiece"), RecipeError)
        _positive("tokenizer.vocab_size", self.vocab_size, minimum=8)
        if self.train_samples is not None:
            _positive("tokenizer.train_samples", self.train_samples)
        _positive("tokenizer.sample_seed", self.sample_seed, minimum=0)
        _positive("tokenizer.min_frequency", self.min_frequency)
        if self.kind in ("pretrained", "sentencepiece") and not self.name_or_path:
            raise RecipeError(f"tokenizer.kind={self.kind} needs tokenizer.name_or_path (a Hub id, folder or .model file)")
        if self.name_or_path and self.name_or_path.startswith("~"):
            self.name_or_path = str(Path(self.name_or_path).expanduser())


@dataclass
class TrainConfig:
    """Optimisation and the schedules that fight posterior collapse. Steps are optimizer steps."""

    seed: int = 0
    batch_size: int = 64  # sentences per optimizer step (global, across processes)
    eval_batch_size: int = 256
    max_steps: int | None = None  # stop after this many steps; if None, train for `epochs`
    epochs: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | linear | cosine (decay to 0 at the last step, after warm-up)
    warmup_steps: int = 0  # learning-rate warm-up
    grad_clip: float = 5.0  # max global gradient norm; 0 disables
    beta_schedule: str = "linear"  # KL weight: constant | linear | sigmoid | cyclical (Fu et al. 2019)
    beta_max: float = 1.0
    beta_warmup_steps: int = 0
    beta_cycles: int = 4  # cyclical only
    beta_ratio: float = 0.5  # cyclical only: fraction of each cycle spent increasing
    free_bits: float = 0.0  # nats per latent; the objective uses max(KL_i, free_bits)
    target_rate: float | None = None  # nats per sentence of validation KL to hold; replaces the beta schedule by a
    # feedback controller on beta (schedules.RateController); None: the beta schedule above
    word_dropout: float = 0.0  # probability of replacing a decoder input token by <unk> (Bowman et al. 2016)
    tau_start: float = 1.0  # Gumbel-Softmax temperature at step 0
    tau_min: float = 0.5  # floor of the temperature
    tau_decay: float = 0.0  # per-step rate: tau = max(tau_min, tau_start * exp(-tau_decay * step))
    eval_every: int = 500  # steps between validation passes (and best-checkpoint updates)
    save_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # the newest checkpoints kept (the best one is kept as well)
    log_every: int = 20
    resume: bool = False  # continue from the newest checkpoint in output_dir
    iw_samples: int = 100  # importance samples for the final NLL estimate
    iw_temperature: float = 1.0  # the NLL's proposal: q(z|x) tempered by this (1: q itself; evaluation.py)
    max_nonfinite_steps: int = 20  # consecutive non-finite losses before the run stops
    mixed_precision: str = "no"  # no | bf16 (CPUs with AVX-512 BF16 or AMX, and GPUs) | fp16 (GPU)
    # Experiment trackers that get log.jsonl's numbers and the recipe, through accelerate's tracker API: any of
    # accelerate's names (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, trackio, swanlab). The default
    # writes TensorBoard events to output_dir/textdvae/ when tensorboard is installed (pip install
    # 'textdvae[tensorboard]'); a named tracker that is not installed gets a warning and is left out; [] logs to none.
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    # A resume refuses a recipe that differs from the checkpoint's in what sets the data order or the schedules
    # (RESUME_SENSITIVE_KEYS); name the dotted keys (e.g. [train.max_steps]) or sections ([data]) you mean to change.
    resume_allow_changes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # nan passes every `< 0` check and inf every `> 0` one
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value) and f.name != "target_rate":  # checked below
                raise RecipeError(f"train.{f.name} must be a finite number, got {value}")
        if not 0 <= self.seed < 2**32:
            raise RecipeError(f"train.seed must be in [0, 2**32) (numpy's and torch's seed range), got {self.seed}")
        for key in self.resume_allow_changes:
            if key not in RESUME_SENSITIVE_KEYS and key not in {k.split(".")[0] for k in RESUME_SENSITIVE_KEYS}:
                raise RecipeError(f"train.resume_allow_changes names {key!r}, which a resume does not check; it takes "
                                  f"{', '.join(RESUME_SENSITIVE_KEYS)} or the section data")
        for key in ("batch_size", "eval_batch_size", "eval_every", "save_every", "log_every", "keep_checkpoints", "iw_samples",
                    "max_nonfinite_steps", "beta_cycles"):
            _positive(f"train.{key}", getattr(self, key))
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps)
        if not self.iw_temperature > 0:
            raise RecipeError(f"train.iw_temperature must be > 0, got {self.iw_temperature}; 1 samples the NLL's "
                              "importance samples from q(z|x) itself, 1.5 from a wider proposal")
        if not self.epochs > 0:
            raise RecipeError(f"train.epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise RecipeError(f"train.lr must be > 0, got {self.lr}; a typical value is 1e-3")
        for key in ("weight_decay", "grad_clip", "beta_max", "free_bits", "warmup_steps", "beta_warmup_steps", "tau_decay"):
            if getattr(self, key) < 0:
                raise RecipeError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.target_rate is not None and not (self.target_rate > 0 and math.isfinite(self.target_rate)):
            raise RecipeError(f"train.target_rate must be a positive number of nats per sentence, got {self.target_rate}")
        if not 0 <= self.word_dropout < 1:
            raise RecipeError(f"train.word_dropout must be in [0, 1), got {self.word_dropout}")
        if not 0 < self.beta_ratio <= 1:
            raise RecipeError(f"train.beta_ratio must be in (0, 1], got {self.beta_ratio}")
        if not (self.tau_start > 0 and self.tau_min > 0):
            raise RecipeError(f"train.tau_start and train.tau_min must be > 0, got {self.tau_start} and {self.tau_min}")
        check_choice("train.lr_schedule", self.lr_schedule, ("constant", "linear", "cosine"), RecipeError)
        check_choice("train.beta_schedule", self.beta_schedule, ("constant", "linear", "sigmoid", "cyclical"), RecipeError)
        check_choice("train.mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"), RecipeError)
        from accelerate.utils import LoggerType
        for name in self.log_with:
            check_choice("train.log_with", name, tuple(t.value for t in LoggerType), RecipeError)


@dataclass
class HubConfig:
    """Push the final model when ``repo_id`` is set (token from HF_TOKEN or the saved login)."""

    repo_id: str | None = None
    private: bool = False
    revision: str | None = None

    def validate(self) -> None:
        if self.repo_id is None:
            return
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id
        try:
            validate_repo_id(self.repo_id)
        except HFValidationError as err:
            raise RecipeError(f"hub.repo_id={self.repo_id!r} is not a Hub repository id ({err}); use namespace/name, "
                              "e.g. hub.repo_id=your-user/my-model") from None
        if "/" not in self.repo_id:
            raise RecipeError(f"hub.repo_id={self.repo_id!r} needs a namespace: your user or organization, a slash, "
                              "then the name, e.g. hub.repo_id=your-user/my-model")


@dataclass
class Recipe:
    output_dir: str
    model: TextDVAEConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    train: TrainConfig
    hub: HubConfig
    raw: dict[str, Any]  # the resolved recipe as a plain mapping (written to output_dir/config.yaml)

    def validate_combination(self) -> None:
        """Checks that span sections."""
        if self.model.estimator == "reinmax" and self.train.tau_min < 1:
            raise RecipeError(
                f"model.estimator=reinmax needs a temperature >= 1 (Liu et al. 2023), got train.tau_min={self.train.tau_min}; "
                "set train.tau_start=1 train.tau_min=1 (or higher)")
        rate, m = self.train.target_rate, self.model
        if rate is not None and m.latent == "none":
            raise RecipeError(f"train.target_rate={rate} sets the rate of a code, but model.latent=none has no code; "
                              "drop train.target_rate or set model.latent=categorical")
        if rate is not None and m.latent == "categorical" and rate >= m.num_latents * math.log(m.num_categories):
            raise RecipeError(
                f"train.target_rate={rate} nats is out of reach: {m.num_latents} latents of {m.num_categories} "
                f"categories hold at most N log K = {m.num_latents * math.log(m.num_categories):.2f} nats; lower the "
                "target or raise model.num_latents / model.num_categories")
        if self.data.streaming and self.train.max_steps is None:
            raise RecipeError("data.streaming=true reads the training split as a stream of unknown length: set "
                              "train.max_steps as the budget (train.epochs needs the split's size)")
        if self.data.streaming and self.data.max_train_samples is not None:
            raise RecipeError("data.max_train_samples does not apply to data.streaming=true (the stream has no "
                              "end to cut); drop it and bound the run with train.max_steps")
        if ("transformer" in (m.encoder_type, m.decoder_type) and self.data.max_length > m.max_position_embeddings):
            raise RecipeError(f"data.max_length={self.data.max_length} tokens exceeds model.max_position_embeddings="
                              f"{m.max_position_embeddings}, the longest sequence a Transformer can take; lower "
                              "data.max_length or raise model.max_position_embeddings")
        if self.train.beta_schedule == "cyclical" and self.train.max_steps is None:
            raise RecipeError("train.beta_schedule=cyclical needs train.max_steps to place its cycles")


# What a resume compares with the recipe stored in the checkpoint: these set the data order, the number of steps or
# a schedule, so a changed value would make the resumed run a different run than the one the checkpoint belongs to.
RESUME_SENSITIVE_KEYS = ("train.seed", "train.batch_size", "train.max_steps", "train.epochs", "train.lr",
                         "train.lr_schedule", "train.warmup_steps", "train.beta_schedule", "train.beta_max",
                         "train.beta_warmup_steps", "train.beta_cycles", "train.beta_ratio", "train.tau_start",
                         "train.tau_min", "train.tau_decay", "train.target_rate", "data")


def resume_differences(stored: dict[str, Any], current: dict[str, Any], allowed: list[str]) -> list[str]:
    """``key: stored -> current`` for each RESUME_SENSITIVE_KEYS entry (a section: each of its keys) that differs
    between two resolved recipes and is not named (or its section) in ``allowed``."""
    out = []
    for key in RESUME_SENSITIVE_KEYS:
        section, _, name = key.partition(".")
        old, new = stored.get(section) or {}, current.get(section) or {}
        names = [name] if name else sorted(set(old) | set(new))
        for n in names:
            if old.get(n) != new.get(n) and f"{section}.{n}" not in allowed and section not in allowed:
                out.append(f"{section}.{n}: {old.get(n)!r} -> {new.get(n)!r}")
    return out


_SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "train": TrainConfig, "hub": HubConfig}
_TOP_LEVEL = ("output_dir", "model", *_SECTIONS)


def model_config_keys() -> list[str]:
    """The architecture keys a recipe's ``model`` section accepts: TextDVAEConfig's documented arguments."""
    return [key for key in TextDVAEConfig.architecture_keys() if key != "vocab_size"]  # vocab_size comes from the tokenizer


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides (dotted keys, YAML-typed values) and validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found; pass a YAML file such as recipes/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {str(path)!r} must be a YAML mapping of sections (model, data, tokenizer, train, hub), "
                          f"got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return from_dict(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``train.max_steps=200`` -> raw["train"]["max_steps"] = 200 (the value is parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r} must look like key=value, e.g. train.max_steps=200")
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value != "" else None


def from_dict(raw: dict[str, Any]) -> Recipe:
    _check_keys("", raw, _TOP_LEVEL)
    if not raw.get("output_dir"):
        raise RecipeError("the recipe needs output_dir (where checkpoints and the final model go), "
                          "e.g. output_dir=runs/my_run")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = _section(raw, name)
        _check_keys(f"{name}.", values, [f.name for f in dataclasses.fields(cls)])
        sections[name] = cls(**values)
        _check_types(name, sections[name])
        if hasattr(sections[name], "validate"):
            sections[name].validate()
    model_values = _section(raw, "model")
    _check_keys("model.", model_values, model_config_keys())
    # The real vocabulary size comes from the tokenizer at training time; until then its upper bound stands in
    # (trained tokenizers never exceed tokenizer.vocab_size) so that size-dependent checks can run now.
    provisional_vocab = sections["tokenizer"].vocab_size if sections["tokenizer"].kind in ("word", "bpe", "unigram") else 2**31 - 1
    try:
        model = TextDVAEConfig(vocab_size=provisional_vocab, **model_values)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"invalid model section: {err}") from None
    raw["output_dir"] = str(Path(str(raw["output_dir"])).expanduser())
    recipe = Recipe(output_dir=raw["output_dir"], model=model, raw=resolved(raw, sections, model), **sections)
    recipe.validate_combination()
    return recipe


def resolved(raw: dict[str, Any], sections: dict[str, Any], model: TextDVAEConfig) -> dict[str, Any]:
    """The recipe with every default filled in: what the run really used."""
    out: dict[str, Any] = {"output_dir": str(raw["output_dir"])}
    out["model"] = {key: getattr(model, key) for key in model_config_keys() if hasattr(model, key)}
    for name, value in sections.items():
        out[name] = dataclasses.asdict(value)
    return out


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise RecipeError(f"recipe section {name!r} must be a mapping, got {values!r}")
    return values


def _check_keys(prefix: str, values: dict[str, Any], valid: list[str] | tuple[str, ...]) -> None:
    for key in values:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(sorted(valid))}"
            raise RecipeError(f"unknown recipe key {prefix}{key}{hint}")


def _check_types(section: str, obj: Any) -> None:
    """YAML gives ints, floats, bools, strings, lists and mappings: catch `train.lr=fast` before it reaches the
    optimizer. Checked against each field's annotation itself (``int``, ``str | None``, ``list[str]``, ...)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if value is None and type(None) in options:
            continue
        if float in options and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:  # YAML reads 3e-4 (no dot) as a string; users mean the number
                setattr(obj, f.name, float(value))
                continue
            except ValueError:
                pass
        if not any(_is_a(value, t) for t in options if t is not type(None)):
            names = [("null" if t is type(None) else str(t) if typing.get_args(t) else t.__name__) for t in options]
            raise RecipeError(f"{section}.{f.name} must be {' or '.join(names)}, got {value!r}")


def _is_a(value: Any, hint: Any) -> bool:
    """isinstance for an annotation: ``list[str]`` checks the items too; a bool is not an int."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint) or hint
    if not isinstance(value, origin) or (isinstance(value, bool) and origin is not bool):
        return False
    args = typing.get_args(hint)
    if origin is list and args:
        return all(_is_a(item, args[0]) for item in value)
    if origin is dict and args:
        return all(_is_a(k, args[0]) and _is_a(v, args[1]) for k, v in value.items())
    return True


def _expand_user(data_files: dict[str, Any] | None) -> dict[str, Any] | None:
    """``~/corpus/train.txt`` -> the home folder's path (datasets would look for a folder named ``~``)."""
    if not data_files:
        return data_files

    def expand(value: Any) -> Any:
        return str(Path(value).expanduser()) if isinstance(value, str) and value.startswith("~") else value
    return {split: [expand(v) for v in spec] if isinstance(spec, list) else expand(spec)
            for split, spec in data_files.items()}


def _positive(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{key} must be an integer >= {minimum}, got {value!r}")

