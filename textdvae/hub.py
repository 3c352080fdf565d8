"""Push a trained textdvae model folder to the Hugging Face Hub, with a generated model card.

The local folder is never modified: the model card (``README.md``) and the extra files found next
to it (metrics / training recipe) are sent as in-memory bytes in the same single commit.

What is uploaded is a known list (:data:`MODEL_FILES`, the plots the card shows) plus what the caller names with
``include``; symlinks that leave the folder are refused, pickle-based weights are never sent, and the recipe goes out
as :func:`textdvae.redact.public_recipe` makes it (no credentials, no absolute local paths). A push that fails after
creating its repo deletes that repo again. :func:`check_push_access` checks a repo id and the token up front.

This module deliberately does not import torch: the parameter count is read from the safetensors
header.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import re
import struct
from pathlib import Path
from typing import Any

__all__ = ["HubError", "check_push_access", "generation_config_dict", "make_model_card", "push_space", "push_to_hub"]

logger = logging.getLogger(__name__)


class HubError(Exception):
    """A push to (or a request against) the Hugging Face Hub failed; the message says why and what to do."""


CARD_TAGS = ["text-vae", "textdvae"]
# What the card says of each gradient estimator of categorical codes (config.json's `estimator`), and its tag.
ESTIMATOR_TEXT = {
    "gumbel": ("trained with the Gumbel-Softmax relaxation (Jang et al. 2017)", "gumbel-softmax"),
    "gumbel_st": ("trained with straight-through Gumbel-Softmax (Jang et al. 2017)", "gumbel-softmax"),
    "reinmax": ("trained with the ReinMax estimator (Liu et al. 2023)", "reinmax"),
    "reinforce": ("trained with the score-function (REINFORCE) estimator and a learned baseline", "reinforce"),
}

# (key in metrics.json, human readable name) in the order they appear in the card
KNOWN_METRICS: list[tuple[str, str]] = [
    ("elbo", "ELBO"),
    ("nll", "Negative log-likelihood"),
    ("ppl", "Perplexity"),
    ("kl", "KL divergence"),
    ("mi", "Mutual information I(x; z)"),
    ("active_latents", "Active latents"),
    ("rec_bleu", "Reconstruction BLEU"),
    ("rec_token_acc", "Reconstruction token accuracy"),
]

# Keys of config.json described in the card's architecture section, by kind of latent.
ARCH_KEYS = {
    "categorical": ["encoder_type", "decoder_type", "latent", "num_latents", "num_categories", "estimator", "prior",
                    "hidden_dim", "embed_dim"],
    "gaussian": ["encoder_type", "decoder_type", "latent", "latent_dim", "hidden_dim", "embed_dim"],
    "none": ["decoder_type", "latent", "decoder_layers", "hidden_dim", "embed_dim"],
}

# `datasets` builder names: a recipe data path equal to one of these is not a Hub dataset id.
_DATASET_BUILDERS = {
    "text", "json", "csv", "parquet", "arrow", "pandas", "sql", "xml", "webdataset", "generator",
    "imagefolder", "audiofolder", "videofolder", "folder_based_builder", "cache",
}
_DATA_FILE_SUFFIXES = (
    ".txt", ".text", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".gz", ".bz2", ".xz",
    ".zst", ".zip", ".tar", ".yaml", ".yml",
)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")

# Weight formats we refuse to publish (pickle-based); textdvae ships safetensors only.
FORBIDDEN_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# What a model folder uploads without being asked: weights (one file or shards with their index), config, tokenizer
# files, generation config, the card, the recipe and metrics. Anything else only when named with `include`.
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
               "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
               "generation_config.json", "README.md", "recipe.yaml", "metrics.json")
# The top-level keys of a textdvae recipe (textdvae.recipe; not imported here, which would import transformers):
# ../config.yaml is borrowed only from a folder that is a training run's.
_RUN_RECIPE_KEYS = {"output_dir", "model", "data", "tokenizer", "train", "hub"}


# --------------------------------------------------------------------------------------- helpers


def _redact():
    """textdvae.redact (what of a recipe may be published). This file imports nothing else of the package, so that it
    also loads standalone (tests/test_hub_server.py): then redact.py, which imports nothing either, is read from
    beside it."""
    try:
        from . import redact
        return redact
    except ImportError:
        import importlib.util
        import sys

        if "_textdvae_redact" not in sys.modules:
            spec = importlib.util.spec_from_file_location("_textdvae_redact", Path(__file__).with_name("redact.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["_textdvae_redact"] = module
        return sys.modules["_textdvae_redact"]


def _is_hub_dataset_id(path: Any) -> bool:
    if not isinstance(path, str) or "/" not in path:
        return False
    if path.split("/")[0] in _DATASET_BUILDERS or path in _DATASET_BUILDERS:
        return False
    if path.startswith((".", "/", "~")) or path.lower().endswith(_DATA_FILE_SUFFIXES):
        return False
    if not _HUB_ID_RE.match(path) or "--" in path or ".." in path:
        return False
    return not Path(path).exists()  # a local folder like "data/corpus" is not a Hub id


def _safetensors_num_params(path: Path) -> int:
    """Number of elements in all tensors of a safetensors file, from its JSON header only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        total += math.prod(info.get("shape", []))
    return total


def count_parameters(model_dir: str | Path) -> int | None:
    """Total parameter count of the ``*.safetensors`` files in ``model_dir`` (None if there are none)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    return sum(_safetensors_num_params(p) for p in files)


def _human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flat_metrics(metrics: dict | None) -> dict[str, Any]:
    """Accept ``{"elbo": ..}``, ``{"test_elbo": ..}``/``{"eval_elbo": ..}`` or ``{"test": {"elbo": ..}}``."""
    if not metrics:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    known = {k for k, _ in KNOWN_METRICS}
    if not any(k in metrics for k in known):
        for split in ("test", "eval", "validation", "val", "dev"):
            if isinstance(metrics.get(split), dict):
                return dict(metrics[split])
        out = dict(metrics)
        for key, value in metrics.items():
            for prefix in ("test_", "eval_", "validation_", "val_"):
                if key.startswith(prefix) and key[len(prefix):] in known and key[len(prefix):] not in out:
                    out[key[len(prefix):]] = value
        return out
    return dict(metrics)


def _fmt_value(v: Any) -> str:
    return _fmt_raw(v).replace("|", "\\|").replace("\n", " ")


def _fmt_raw(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v)


def _load_config(model_dir: Path) -> dict:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        return {}
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HubError(f"Could not read {cfg_path}: {e}. Re-save the model with save_pretrained().") from e
    return cfg if isinstance(cfg, dict) else {}


def generation_config_dict(config: dict) -> dict:
    """The generation config of a model (``generation_config.json``), from its ``config.json`` dict: the special
    token ids, and ``use_cache=False`` because ``model.generate`` re-runs the decoder over the prefix (the decoders
    keep their own state; ``TextDVAE.decode`` is the incremental path). `TextDVAE` builds its own from this, and
    `push_to_hub` adds it to a folder that has none; it loads with ``GenerationConfig.from_pretrained(repo_id)``.
    """
    out: dict[str, Any] = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    out["use_cache"] = False
    return out


# ------------------------------------------------------------------------------------ model card


def card_tags(config: dict) -> list[str]:
    """The card's tags: the library's, then the kind of latent and (categorical) the estimator's."""
    latent = config.get("latent", "categorical")
    if latent == "gaussian":
        return [CARD_TAGS[0], "gaussian-latent", *CARD_TAGS[1:]]
    if latent == "none":
        return ["language-model", *CARD_TAGS[1:]]
    estimator_tag = ESTIMATOR_TEXT.get(config.get("estimator"), (None, None))[1]
    return [CARD_TAGS[0], "discrete-latent", *([estimator_tag] if estimator_tag else []), *CARD_TAGS[1:]]


def describe_latent(config: dict) -> str:
    """The card's first paragraph: what the model does with a sentence, for its kind of latent."""
    latent = config.get("latent", "categorical")
    if latent == "none":
        return ("A language model trained with the `textdvae` library: the decoder of a text VAE without a latent "
                "variable, the baseline that textdvae's VAEs are measured against. It scores and generates "
                "sentences; it has no code to encode them into.")
    if latent == "gaussian":
        dim = config.get("latent_dim")
        size = f"a {dim}-dimensional" if isinstance(dim, int) else "a"
        return ("A variational autoencoder for sentences with a continuous latent, trained with the `textdvae` "
                f"library (the Gaussian baseline of Bowman et al. 2016): each sentence is encoded into {size} "
                "Gaussian latent vector from which the decoder reconstructs it.")
    n_lat, n_cat = config.get("num_latents"), config.get("num_categories")
    how = ESTIMATOR_TEXT.get(config.get("estimator"), ("",))[0]
    desc = ("A discrete variational autoencoder for sentences, trained with the `textdvae` library. Each sentence is "
            f"encoded into a sequence of categorical latent variables{f' ({how})' if how else ''}, from which the "
            "decoder reconstructs it.")
    if isinstance(n_lat, int) and isinstance(n_cat, int) and n_lat > 0 and n_cat > 1:
        desc += (f" This model uses {n_lat} latent variables with {n_cat} categories each, i.e. a code of at most "
                 f"{n_lat * math.log2(n_cat):.1f} bits per sentence.")
    if config.get("prior") == "autoregressive":
        desc += " Its prior over the codes is learned (an autoregressive MADE), so `sample` draws typical codes."
    return desc


def make_model_card(
    model_dir: str | Path,
    metrics: dict | None = None,
    recipe: dict | None = None,
    repo_id: str | None = None,
) -> str:
    """Return the text of a Hugging Face model card (``README.md``) for the model saved in ``model_dir``.

    YAML front matter (library_name, tags, license, datasets when the recipe's ``data.path`` is a Hub
    dataset id, and a ``model-index`` with the numeric metrics among elbo/nll/ppl/kl/mi/active_latents/
    rec_bleu/rec_token_acc), then a description of the architecture (from ``config.json`` and the
    safetensors header), the training recipe, a metrics table and a usage snippet.
    """
    import yaml

    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    flat = _flat_metrics(metrics)
    recipe = recipe or None
    if recipe is not None and not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict, got {type(recipe).__name__}")
    if recipe is not None:  # what a reader needs, never credentials or local paths
        recipe = _redact().public_recipe(recipe)

    if repo_id:
        model_name = repo_id.split("/")[-1]
    else:
        model_name = model_dir.resolve().parent.name if model_dir.resolve().name == "final" else model_dir.resolve().name

    data_cfg = (recipe or {}).get("data") if isinstance((recipe or {}).get("data"), dict) else {}
    data_path = data_cfg.get("path") if data_cfg else None
    hub_dataset = data_path if _is_hub_dataset_id(data_path) else None

    # ---- front matter
    latent = config.get("latent", "categorical")  # configs saved before `latent` existed were categorical
    meta: dict[str, Any] = {"library_name": "textdvae", "tags": card_tags(config)}
    if hub_dataset:
        meta["datasets"] = [hub_dataset]
    meta["license"] = "apache-2.0"
    index_metrics = [
        {"type": key, "name": name, "value": flat[key]}
        for key, name in KNOWN_METRICS
        if _is_number(flat.get(key)) and math.isfinite(flat[key])
    ]
    if index_metrics:
        dataset_entry: dict[str, Any] = {
            "type": hub_dataset or "custom",
            "name": hub_dataset or (Path(str(data_path)).name if data_path else "custom"),
        }
        if data_cfg and isinstance(data_cfg.get("name"), str):
            dataset_entry["config"] = data_cfg["name"]
        split = (data_cfg or {}).get("test_split") or (data_cfg or {}).get("eval_split")
        if isinstance(split, str):
            dataset_entry["split"] = split
        meta["model-index"] = [
            {
                "name": model_name,
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Sentence autoencoding"},
                        "dataset": dataset_entry,
                        "metrics": index_metrics,
                    }
                ],
            }
        ]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)

    # ---- body
    out: list[str] = ["---", front.rstrip("\n"), "---", ""]
    out.append(f"# {model_name}")
    out.append("")
    out += [describe_latent(config), "", "## Architecture", ""]
    rows = [(k, config[k]) for k in ARCH_KEYS.get(latent, ARCH_KEYS["categorical"]) if k in config]
    try:
        n_params = count_parameters(model_dir)
    except (OSError, ValueError) as e:  # unreadable header: leave it out rather than fail the card
        n_params = None
        rows.append(("parameters", f"unknown ({e})"))
    if n_params is not None:
        rows.append(("parameters", _human_count(n_params)))
    if rows:
        out += ["| Setting | Value |", "|---|---|"]
        out += [f"| {k} | {_fmt_value(v)} |" for k, v in rows]
    else:
        out.append("No `config.json` was found next to the weights.")
    out.append("")

    out += ["## Training recipe", ""]
    if recipe:
        out += ["```yaml", yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip("\n"), "```"]
    else:
        out.append("No training recipe was provided.")
    if data_path:
        where = f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})" if hub_dataset else f"`{data_path}`"
        out += ["", f"Training data: {where}."]
    out.append("")

    out += ["## Evaluation", ""]
    table_rows = [(name, flat[key]) for key, name in KNOWN_METRICS if key in flat and _is_number(flat[key])]
    known_keys = {k for k, _ in KNOWN_METRICS}
    table_rows += [(k, v) for k, v in flat.items() if k not in known_keys and _is_number(v)]
    if table_rows:
        out += ["| Metric | Value |", "|---|---|"]
        out += [f"| {name} | {_fmt_value(v)} |" for name, v in table_rows]
    else:
        out.append("No evaluation metrics were provided.")
    out.append("")

    rid = repo_id or "REPO_ID"
    out += [
        "## Usage",
        "",
        "```python",
        "from textdvae import TextDVAE",
        "",
        f'model = TextDVAE.from_pretrained("{rid}")',
        *(['codes, probs = model.encode(["a sentence"])',
           'print(model.reconstruct(["a sentence"]))',
           'print(model.interpolate("first sentence", "second sentence", method="hamming"))']
          if latent == "categorical" else
          ["texts, _ = model.sample(3)  # sentences drawn from the model", "print(texts)"]),
        "```",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- push


def _find_extras(model_dir: Path) -> tuple[dict | None, dict | None, dict[str, bytes]]:
    """Locate metrics and recipe for the card. Returns (metrics, recipe, extra files to upload).

    Looks in ``model_dir`` (``metrics.json``, ``recipe.yaml``) then, only when the parent is a textdvae training
    run (:func:`is_run_folder`), in the parent (``output_dir/metrics.json`` + ``output_dir/config.yaml``). The
    recipe is always uploaded as ``recipe.yaml`` rewritten by :func:`textdvae.redact.public_recipe`; metrics found
    only in the parent are uploaded as ``metrics.json``.
    """
    import yaml

    public_recipe = _redact().public_recipe
    extras: dict[str, bytes] = {}
    metrics = recipe = None
    parent = model_dir.resolve().parent
    borrow = is_run_folder(parent)
    metric_files = [(model_dir / "metrics.json", None)] + ([(parent / "metrics.json", "metrics.json")] if borrow else [])
    recipe_files = [(model_dir / "recipe.yaml", None)] + ([(parent / "config.yaml", "recipe.yaml")] if borrow else [])
    for candidate, upload_as in metric_files:
        if candidate.is_file():
            raw = candidate.read_bytes()
            try:
                metrics = json.loads(raw)
            except ValueError as e:
                raise HubError(f"{candidate} is not valid JSON ({e}); fix or remove it before pushing.") from e
            if upload_as:
                extras[upload_as] = raw
            break
    for candidate, upload_as in recipe_files:
        if candidate.is_file():
            raw = candidate.read_bytes()
            try:
                recipe = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise HubError(f"{candidate} is not valid YAML ({e}); fix or remove it before pushing.") from e
            if recipe is not None and not isinstance(recipe, dict):
                recipe = None
            if recipe is not None:
                public = public_recipe(recipe, parent)
                if public != recipe or upload_as:  # as written when it is already fit to publish (training's is)
                    extras["recipe.yaml"] = yaml.safe_dump(public, sort_keys=False, allow_unicode=True).encode("utf-8")
                recipe = public
            break
    if metrics is not None and not isinstance(metrics, dict):
        metrics = None
    return metrics, recipe, extras


def is_run_folder(folder: Path) -> bool:
    """A textdvae training run's output folder: a config.yaml that reads as a recipe, and checkpoints/ or log.jsonl."""
    import yaml

    config = folder / "config.yaml"
    if not config.is_file() or not ((folder / "checkpoints").is_dir() or (folder / "log.jsonl").is_file()):
        return False
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "output_dir" in raw and "model" in raw and set(raw) <= _RUN_RECIPE_KEYS


def _collect_files(model_dir: Path, include: list[str] | tuple[str, ...] = (), card_text: str = "") -> list[tuple[str, Path]]:
    """(path in repo, local path) of the files to upload: :data:`MODEL_FILES`, images the card shows, and files
    matching an ``include`` glob. Refuses pickle-based weights and symlinks that point outside ``model_dir``."""
    files: list[tuple[str, Path]] = []
    forbidden: list[str] = []
    root = model_dir.resolve()
    left_out = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if path.suffix.lower() in FORBIDDEN_WEIGHT_SUFFIXES:  # refused even unasked: the folder is not what it seems
            forbidden.append(rel)
            continue
        wanted = (any(fnmatch.fnmatch(rel, pattern) for pattern in MODEL_FILES)
                  or (path.suffix.lower() in (".png", ".svg", ".jpg") and rel in card_text)
                  or any(fnmatch.fnmatch(rel, pattern) for pattern in include))
        if not wanted:
            left_out.append(rel)
            continue
        target = path.resolve()  # a symlink (or a file in a symlinked folder) may lead anywhere
        if root not in target.parents:
            raise HubError(f"Refusing to push {model_dir}: {rel} is a symlink to {target}, outside the folder. "
                           "Copy the file into the folder (or remove the link) and try again.")
        if path.is_file():
            files.append((rel, path))
    if left_out:
        logger.info("not uploaded (not part of a model; name them with --include to send them): %s",
                    ", ".join(left_out))
    if forbidden:
        raise HubError(
            f"Refusing to push {model_dir}: it contains pickle-based files ({', '.join(forbidden)}). "
            "textdvae publishes safetensors weights only; remove these files (or push a folder written by "
            "save_pretrained()) and try again."
        )
    return files


def _explain(exc: BaseException, repo_id: str, endpoint: str) -> str:
    """One clear paragraph for a huggingface_hub / network error."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HFValidationError):
        return (
            f"Invalid Hub repository name {repo_id!r}: expected the form `namespace/name` (your user or "
            f"organization name, a slash, then the model name; letters, digits, '-', '_' and '.' only). "
            f"Details: {exc}"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return f"Cannot push {repo_id}: offline mode is enabled (HF_HUB_OFFLINE=1). Unset it to push to {endpoint}."
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else None
        server_msg = getattr(exc, "server_message", None) or ""
        detail = f" (server said: {server_msg.strip()})" if server_msg.strip() else ""
        if status == 401:
            return (
                f"Could not push to {repo_id} on {endpoint}: not logged in / invalid token: set HF_TOKEN or run "
                f"`hf auth login` (or pass token=...) with a token that has write access{detail}."
            )
        if status == 403:
            return (
                f"Could not push to {repo_id} on {endpoint}: the token has no write access to {repo_id}. Use a "
                f"token with the 'write' role (or fine-grained write permission on this namespace){detail}."
            )
        if isinstance(exc, RevisionNotFoundError):
            return f"Could not push to {repo_id} on {endpoint}: revision/branch not found{detail}."
        if isinstance(exc, RepositoryNotFoundError) or status == 404:
            return (
                f"Could not push to {repo_id} on {endpoint}: repository not found or not accessible with this "
                f"token{detail}."
            )
        if status == 409:
            return f"Could not push to {repo_id} on {endpoint}: conflict (HTTP 409){detail}. Retry the push."
        if status == 412:
            return f"Could not push to {repo_id} on {endpoint}: the branch moved during the push (HTTP 412). Retry the push."
        if status is not None and status >= 500:
            return f"The Hub at {endpoint} failed with HTTP {status} while pushing {repo_id}{detail}; try again later."
        return f"Pushing {repo_id} to {endpoint} failed (HTTP {status}): {exc}"
    return f"Could not reach {endpoint}; check your network (and HF_ENDPOINT if you set it). Details: {exc!r}"


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2  # huggingface_hub's HTTP client
    except ImportError:  # pragma: no cover
        httpx2 = None
    if httpx2 is not None and isinstance(exc, httpx2.TransportError):
        return True
    try:
        import httpx
    except ImportError:
        httpx = None
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Check ``repo_id``'s syntax and that the token (``token``, else HF_TOKEN or the saved login) is valid on the
    configured endpoint, before anything long runs; returns the token's user name. Raises :class:`HubError`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    api = HfApi(token=token)
    try:
        validate_repo_id(repo_id)
        me = api.whoami()
    except (HFValidationError, HfHubHTTPError) as e:
        raise HubError(_explain(e, repo_id, api.endpoint)) from None
    except Exception as e:
        if type(e).__name__ == "LocalTokenNotFoundError":
            raise HubError(f"hub.repo_id={repo_id} pushes at the end of training, but no Hub token is set: set "
                           f"HF_TOKEN or run `hf auth login`, or drop hub.repo_id") from None
        if _is_network_error(e) or type(e).__name__ == "OfflineModeIsEnabled":
            raise HubError(_explain(e, repo_id, api.endpoint)) from None
        raise
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError(f"the Hub token is read-only, so the push to {repo_id} on {api.endpoint} would fail after "
                       "training; use a token with the 'write' role (HF_TOKEN or `hf auth login`)")
    return me["name"]


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    metrics: dict | None = None,
    recipe: dict | None = None,
    include: list[str] | tuple[str, ...] = (),
) -> str:
    """Push a saved textdvae model folder to the Hub as ONE commit (files + generated ``README.md``).

    ``model_dir`` must hold ``config.json``, ``model.safetensors`` (as written by ``save_pretrained``) and the
    tokenizer files; a ``generation_config.json`` (see :func:`generation_config_dict`) is added when the folder
    has none. Metrics and recipe for the card are read from ``model_dir/metrics.json``
    and ``model_dir/recipe.yaml``, else ``model_dir.parent/metrics.json`` and
    ``model_dir.parent/config.yaml`` (training output layout ``output_dir/final/``); the latter are
    uploaded as ``metrics.json`` / ``recipe.yaml``. Only the files a model needs are sent (:data:`MODEL_FILES`),
    plus those matching an ``include`` glob. A ``README.md`` in ``model_dir`` is replaced by the
    generated card in the repo (the local folder is never modified). ``revision`` is created as a branch
    (from ``main``) if needed. ``token`` defaults to huggingface_hub's own resolution (``HF_TOKEN`` or
    the saved login). ``metrics`` / ``recipe`` given here are used (and uploaded as ``metrics.json`` /
    ``recipe.yaml``) instead of files. Returns the commit URL. Raises :class:`HubError` on any failure.
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise HubError(
            f"Model folder {str(model_dir)!r} does not exist (or is not a directory). Pass the folder written "
            "by save_pretrained(), e.g. the `final/` folder of a training run."
        )
    missing = [n for n in ("config.json", "model.safetensors") if not (model_dir / n).is_file()]
    if missing:
        raise HubError(
            f"Model folder {str(model_dir)!r} is missing {' and '.join(missing)}; it does not look like a folder "
            "written by TextDVAE.save_pretrained()."
        )
    names = {p.name for p in model_dir.iterdir()}
    if not names & {"tokenizer.json", "tokenizer_config.json"}:
        raise HubError(
            f"Model folder {str(model_dir)!r} has no tokenizer files (tokenizer.json / tokenizer_config.json); a model "
            "on the Hub needs its tokenizer to read and write text. Save it next to the weights with "
            "tokenizer.save_pretrained(folder) (training runs do this in final/), or push the model object with "
            "model.push_to_hub(repo_id)."
        )
    found_metrics, found_recipe, extras = _find_extras(model_dir)
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise HubError(f"metrics must be a dict (as metrics.json holds), got {type(metrics).__name__}")
        extras["metrics.json"] = (json.dumps(metrics, indent=2) + "\n").encode("utf-8")
    if recipe is not None:
        import yaml
        if not isinstance(recipe, dict):
            raise HubError(f"recipe must be a dict (as a recipe YAML file holds), got {type(recipe).__name__}")
        extras["recipe.yaml"] = yaml.safe_dump(recipe, sort_keys=False).encode("utf-8")
    metrics = found_metrics if metrics is None else metrics
    recipe = found_recipe if recipe is None else recipe
    if "generation_config.json" not in names:  # sent from memory: the local folder is never written to
        config = _load_config(model_dir)
        gen = generation_config_dict(config)
        if config.get("transformers_version"):
            gen["transformers_version"] = config["transformers_version"]
        extras["generation_config.json"] = (json.dumps(gen, indent=2, sort_keys=True) + "\n").encode("utf-8")

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    api = HfApi(token=token)
    endpoint = api.endpoint
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(_explain(e, repo_id, endpoint)) from None

    card = make_model_card(model_dir, metrics=metrics, recipe=recipe, repo_id=repo_id)
    files = _collect_files(model_dir, include, card)
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
        for rel, path in files
        if rel != "README.md" and rel not in extras
    ]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data) for rel, data in extras.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))

    created = None  # the repo this push created: deleted again if the push fails
    try:
        try:
            existed = api.repo_exists(repo_id, token=token)
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            full_id = repo_url.repo_id or repo_id
            created = None if existed else full_id
            if revision and revision != "main" and not revision.startswith("refs/"):
                api.create_branch(full_id, branch=revision, exist_ok=True, token=token)
            info = api.create_commit(
                full_id,
                operations,
                commit_message=commit_message or "Upload textdvae model",
                revision=revision,
                token=token,
            )
        except BaseException:
            if created is not None:  # leave no half-created repo behind
                try:
                    api.delete_repo(created, token=token)
                except Exception as e:  # noqa: BLE001 - the push's own error is the one to report
                    logger.warning("the push failed and the repo %s it created could not be deleted (%r); delete "
                                   "it on the Hub", created, e)
            raise
    except HubError:
        raise
    except (HFValidationError, HfHubHTTPError) as e:
        raise HubError(_explain(e, repo_id, endpoint)) from e
    except ValueError as e:  # e.g. the Hub rejected the card metadata
        raise HubError(f"Pushing {repo_id} to {endpoint} failed: {e}") from e
    except Exception as e:
        if _is_network_error(e) or type(e).__name__ == "OfflineModeIsEnabled":
            raise HubError(_explain(e, repo_id, endpoint)) from e
        raise
    return str(info.commit_url)


# ----------------------------------------------------------------------------------------- space

SPACE_APP = '''"""The textdvae demo page for the model {repo_id}: explore its code space in the browser."""

from textdvae.cli import load_model
from textdvae.demo import build_demo, launch, model_figures

MODEL, REVISION = "{repo_id}", {revision!r}

model, _ = load_model(MODEL, REVISION)
launch(build_demo(model, model_figures(MODEL, REVISION), title=f"textdvae: {{MODEL}}"))
'''


def space_files(repo_id: str, revision: str | None = None) -> dict[str, bytes]:
    """The files of a Gradio Space that serves `textdvae demo REPO_ID`: ``app.py`` (loads the model by repo id, at
    ``revision``: None for the default branch),
    ``requirements.txt`` (textdvae's dependencies and its ``demo`` extra, read from the installed package's
    metadata), ``README.md`` (the Space's settings: ``sdk: gradio``) and the ``textdvae/`` source itself, since the
    Space cannot pip-install it from a package index."""
    from importlib import metadata

    import yaml

    try:
        requires = metadata.requires("textdvae") or []
    except metadata.PackageNotFoundError:
        raise HubError("textdvae is not installed as a package, so the Space's requirements.txt cannot be written; "
                       "install it with pip install -e '.[demo]'") from None
    plain = [r for r in requires if ";" not in r]
    demo = [r.split(";")[0].strip() for r in requires if re.search(r"""extra\s*==\s*["']demo["']""", r)]
    requirements = plain + (demo or ["gradio"])  # an install older than the demo extra: any Gradio
    settings = {"title": f"textdvae {repo_id.split('/')[-1]}"[:30], "emoji": "🔤", "colorFrom": "indigo",
                "colorTo": "gray", "sdk": "gradio", "app_file": "app.py", "models": [repo_id], "tags": ["textdvae"]}
    try:
        settings["sdk_version"] = metadata.version("gradio")  # the Gradio this page was built and tested with
    except metadata.PackageNotFoundError:
        pass
    readme = (f"---\n{yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)}---\n\n"
              f"# textdvae demo: {repo_id}\n\nThe page of `textdvae demo {repo_id}`: encode a sentence into its code, "
              "click a latent's category to decode the edited code, interpolate and traverse in code space, and "
              f"sample from the prior. The model: [{repo_id}](https://huggingface.co/{repo_id}).\n")
    files = {"app.py": SPACE_APP.format(repo_id=repo_id, revision=revision).encode("utf-8"),
             "requirements.txt": ("\n".join(requirements) + "\n").encode("utf-8"),
             "README.md": readme.encode("utf-8")}
    package = Path(__file__).resolve().parent
    files.update({f"textdvae/{p.name}": p.read_bytes() for p in sorted(package.glob("*.py"))})
    return files


def push_space(repo_id: str, *, revision: str | None = None, private: bool = False, token: str | None = None) -> str:
    """Create (or update) the Gradio Space ``repo_id`` that serves the demo page of the model ``repo_id`` (at
    ``revision``), in one commit of :func:`space_files`. Returns the commit URL; raises :class:`HubError` on any
    failure."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
                  for path, data in space_files(repo_id, revision).items()]
    try:
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.create_commit(url.repo_id or repo_id, operations, repo_type="space",
                                 commit_message="textdvae demo page")
    except (HFValidationError, HfHubHTTPError) as e:
        raise HubError(_explain(e, repo_id, api.endpoint)) from e
    except Exception as e:
        if _is_network_error(e):
            raise HubError(_explain(e, repo_id, api.endpoint)) from e
        raise
    return str(info.commit_url)
