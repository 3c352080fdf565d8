"""Tests for the in-memory Hub (tests/hub_server.py) and textdvae.hub.push_to_hub.

Client code runs in subprocesses (huggingface_hub reads HF_ENDPOINT at import time), the server in
this process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import (RESULT_MARK, HubServer, child_result, git_blob_oid, run_with_hub,  # noqa: E402
                        tree_digest)

HUB_PY = Path(__file__).resolve().parent.parent / "textdvae" / "hub.py"

# `import textdvae.hub` runs textdvae/__init__.py, which imports torch + transformers (~5 s per process).
# textdvae/hub.py has no package-relative imports, so these tests load that very file standalone to stay
# fast (the textdvae round-trip test, which needs the package anyway, covers `from textdvae.hub import`).
STANDALONE_HUB = f"""
import importlib.util as _ilu
_spec = _ilu.spec_from_file_location("_textdvae_hub", {str(HUB_PY)!r})
_hub = _ilu.module_from_spec(_spec); _spec.loader.exec_module(_hub)
push_to_hub, HubError, make_model_card = _hub.push_to_hub, _hub.HubError, _hub.make_model_card
"""


def _hub_module():
    spec = importlib.util.spec_from_file_location("_textdvae_hub_inproc", HUB_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRELUDE = f"""
import json, hashlib, sys
def emit(obj):
    print({RESULT_MARK!r} + json.dumps(obj), flush=True)
def sha(b):
    return hashlib.sha256(b).hexdigest()
"""


def write_model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "textdvae",
        "encoder_type": "gru",
        "decoder_type": "gru",
        "num_latents": 8,
        "num_categories": 16,
        "hidden_dim": 32,
        "embed_dim": 16,
        "latent": "categorical",
        "estimator": "gumbel_st",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(0)
    save_file(
        {"encoder.weight": rng.standard_normal((20, 16)).astype(np.float32), "decoder.bias": np.zeros(20, np.float32)},
        str(folder / "model.safetensors"),
    )
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return folder


@pytest.fixture
def hub():
    with HubServer({"hf_test": "write", "hf_read": "read"}) as server:
        yield server


# ----------------------------------------------------------------------------- raw huggingface_hub


def test_upload_folder_then_download(hub, tmp_path):
    folder = write_model_folder(tmp_path / "model")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("nested file")
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    up = run_with_hub(
        PRELUDE
        + f"""
from huggingface_hub import HfApi
api = HfApi()
url = api.create_repo("user/raw", exist_ok=True)
api.create_repo("user/raw", exist_ok=True)  # 409 handled by exist_ok
info = api.upload_folder(repo_id="user/raw", folder_path={str(folder)!r}, commit_message="add model")
emit({{"url": str(url), "commit_url": info.commit_url, "oid": info.oid}})
""",
        hub,
    )
    res = child_result(up)
    assert res["url"] == f"{hub.url}/user/raw"
    assert res["commit_url"] == f"{hub.url}/user/raw/commit/{res['oid']}"
    files = hub.files("user/raw")
    assert {k: v for k, v in files.items() if k != ".gitattributes"} == local
    assert [c["title"] for c in hub.commits("user/raw")] == ["add model", "initial commit"]
    assert ("POST", "/api/models/user/raw/preupload/main") in hub.requests_seen
    assert ("POST", "/api/models/user/raw/commit/main") in hub.requests_seen

    # fresh process + fresh cache, anonymous (public repo)
    down = run_with_hub(
        PRELUDE
        + f"""
import os
from pathlib import Path
from huggingface_hub import hf_hub_download, snapshot_download, HfApi
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
paths = {sorted(local)!r}
single = {{p: sha(Path(hf_hub_download("user/raw", p)).read_bytes()) for p in paths}}
snap = Path(snapshot_download("user/raw"))
snapshot = {{f.relative_to(snap).as_posix(): sha(f.read_bytes()) for f in snap.rglob("*") if f.is_file()}}
errors = {{}}
for name, call in [
    ("missing_file", lambda: hf_hub_download("user/raw", "nope.json")),
    ("missing_repo", lambda: hf_hub_download("user/does-not-exist", "config.json")),
    ("missing_revision", lambda: hf_hub_download("user/raw", "config.json", revision="nope")),
    ("missing_repo_info", lambda: HfApi().model_info("user/does-not-exist")),
]:
    try:
        call()
        errors[name] = None
    except Exception as e:
        errors[name] = [type(e).__name__, isinstance(e, EntryNotFoundError), isinstance(e, RepositoryNotFoundError), isinstance(e, RevisionNotFoundError)]
tree = sorted(f.path for f in HfApi().list_repo_tree("user/raw", recursive=True) if hasattr(f, "size"))
emit({{"single": single, "snapshot": snapshot, "errors": errors, "tree": tree, "sha": HfApi().model_info("user/raw").sha}})
""",
        hub,
        token=None,
    )
    res2 = child_result(down)
    expected = {p: hashlib.sha256(b).hexdigest() for p, b in local.items()}
    assert res2["single"] == expected
    assert {k: v for k, v in res2["snapshot"].items() if k != ".gitattributes"} == expected
    assert res2["errors"]["missing_file"][1] is True  # EntryNotFoundError
    assert res2["errors"]["missing_repo"][2] is True  # RepositoryNotFoundError
    assert res2["errors"]["missing_revision"][3] is True  # RevisionNotFoundError
    assert res2["errors"]["missing_repo_info"][2] is True
    assert res2["tree"] == sorted(files)
    assert res2["sha"] == res["oid"]


# ---------------------------------------------------------------------------- textdvae.hub.push_to_hub


def _front_matter(readme: str) -> dict:
    lines = readme.split("\n")
    assert lines[0] == "---", readme[:200]
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end]))


def test_push_to_hub_card_branch_and_untouched_folder(hub, tmp_path):
    out = tmp_path / "run"
    final = write_model_folder(out / "final")
    metrics = {"elbo": -40.5, "nll": 39.0, "ppl": 17.2, "kl": 1.5, "mi": 0.8, "active_latents": 7, "rec_bleu": 61.0, "rec_token_acc": 0.83, "note": "x"}
    (out / "metrics.json").write_text(json.dumps(metrics))
    recipe = {"output_dir": "run", "data": {"path": "someone/sentences", "text_field": "text"}, "model": {"num_latents": 8},
              "train": {"lr": 0.001, "steps": 100}}
    (out / "config.yaml").write_text(yaml.safe_dump(recipe))
    (out / "log.jsonl").write_text("")  # a training run's folder: its config.yaml and metrics.json are borrowed
    plain = write_model_folder(tmp_path / "plain")
    before = (tree_digest(out), tree_digest(plain))

    proc = run_with_hub(
        PRELUDE
        + STANDALONE_HUB
        + f"""
from huggingface_hub import ModelCard
url_main = push_to_hub({str(final)!r}, "user/dvae")
url_again = push_to_hub({str(final)!r}, "user/dvae")  # nothing changed: no new commit
url_dev = push_to_hub({str(plain)!r}, "user/dvae", revision="dev", commit_message="dev push")
url_plain = push_to_hub({str(plain)!r}, "user/plain", private=True)
card = ModelCard.load("user/dvae")
evals = [(r.metric_type, r.metric_value) for r in (card.data.eval_results or [])]
emit({{"main": url_main, "again": url_again, "dev": url_dev, "plain": url_plain, "library": card.data.library_name, "evals": evals}})
""",
        hub,
    )
    res = child_result(proc)

    # one commit on main, holding everything including the card
    commits = hub.commits("user/dvae")
    assert len(commits) == 2 and commits[1]["title"] == "initial commit"
    assert res["main"] == f"{hub.url}/user/dvae/commit/{commits[0]['oid']}"
    assert res["again"] == res["main"]
    files = hub.files("user/dvae")
    assert set(commits[0]["changed"]) == set(files) - {".gitattributes"}
    expected_files = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.json",
                      "recipe.yaml", "generation_config.json"}
    assert set(files) == expected_files | {".gitattributes"}
    assert json.loads(files["generation_config.json"]) == {"use_cache": False}  # no token ids in this config.json
    assert not (final / "generation_config.json").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert files[name] == (final / name).read_bytes()
    assert files["metrics.json"] == (out / "metrics.json").read_bytes()
    assert yaml.safe_load(files["recipe.yaml"]) == recipe  # rewritten by textdvae.redact.public_recipe

    readme = files["README.md"].decode()
    meta = _front_matter(readme)
    assert meta["library_name"] == "textdvae"
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["text-vae", "discrete-latent", "gumbel-softmax", "textdvae"]
    assert meta["datasets"] == ["someone/sentences"]
    assert "pipeline_tag" not in meta
    got = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert got == {k: v for k, v in metrics.items() if k != "note"}
    assert 'TextDVAE.from_pretrained("user/dvae")' in readme
    assert "num_categories" in readme and "gumbel_st" in readme
    assert f"{20 * 16 + 20:,}" in readme  # parameter count from the safetensors header
    assert "lr: 0.001" in readme  # recipe block
    assert res["library"] == "textdvae"
    assert dict(map(tuple, res["evals"])) == got  # huggingface_hub parses our model-index

    # revision="dev" -> new branch (started from main), main untouched
    branches = hub.branches("user/dvae")
    assert set(branches) == {"main", "dev"}
    dev_commits = hub.commits("user/dvae", "dev")
    assert dev_commits[0]["title"] == "dev push" and dev_commits[1]["oid"] == commits[0]["oid"]
    assert dev_commits[0]["changed"] == ["README.md"]  # same weights/tokenizer, card without metrics
    assert res["dev"] == f"{hub.url}/user/dvae/commit/{branches['dev']}"
    assert hub.commits("user/dvae") == commits
    assert "model-index" not in _front_matter(hub.files("user/dvae", "dev")["README.md"].decode())

    # folder without metrics / recipe: no model-index, no datasets; repo private
    plain_meta = _front_matter(hub.files("user/plain")["README.md"].decode())
    assert "model-index" not in plain_meta and "datasets" not in plain_meta
    assert hub.is_private("user/plain")
    assert "metrics.json" not in hub.files("user/plain")

    assert (tree_digest(out), tree_digest(plain)) == before, "push_to_hub modified the local folder"


def test_push_to_hub_failures(hub, tmp_path):
    good = write_model_folder(tmp_path / "good")
    pickled = write_model_folder(tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    no_weights = write_model_folder(tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = write_model_folder(tmp_path / "notokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    (no_tokenizer / "tokenizer_config.json").unlink()
    missing = tmp_path / "does-not-exist"
    before = tree_digest(tmp_path)

    code = (
        PRELUDE
        + "from huggingface_hub import HfApi\n"
        + STANDALONE_HUB
        + f"""
HfApi(token="hf_test").create_repo("user/existing")
cases = {{
    "no_token": lambda: push_to_hub({str(good)!r}, "user/a"),
    "bad_token": lambda: push_to_hub({str(good)!r}, "user/a", token="hf_wrong"),
    "read_only_new": lambda: push_to_hub({str(good)!r}, "user/a", token="hf_read"),
    "read_only_existing": lambda: push_to_hub({str(good)!r}, "user/existing", token="hf_read"),
    "bad_repo_id": lambda: push_to_hub({str(good)!r}, "not a valid/repo!!", token="hf_test"),
    "missing_folder": lambda: push_to_hub({str(missing)!r}, "user/a", token="hf_test"),
    "pickle_weights": lambda: push_to_hub({str(pickled)!r}, "user/a", token="hf_test"),
    "no_safetensors": lambda: push_to_hub({str(no_weights)!r}, "user/a", token="hf_test"),
    "no_tokenizer": lambda: push_to_hub({str(no_tokenizer)!r}, "user/a", token="hf_test"),
}}
out = {{}}
for name, call in cases.items():
    try:
        call()
        out[name] = None
    except HubError as e:
        out[name] = ["HubError", str(e)]
    except Exception as e:
        out[name] = [type(e).__name__, str(e)]
emit(out)
"""
    )
    res = child_result(run_with_hub(code, hub, token=None))  # no HF_TOKEN in the child
    for name, value in res.items():
        assert value is not None and value[0] == "HubError", (name, value)
    assert "HF_TOKEN" in res["no_token"][1] and "hf auth login" in res["no_token"][1]
    assert "HF_TOKEN" in res["bad_token"][1]
    assert "write access" in res["read_only_new"][1]
    assert "write access" in res["read_only_existing"][1] and "user/existing" in res["read_only_existing"][1]
    assert "not a valid/repo!!" in res["bad_repo_id"][1] and "namespace/name" in res["bad_repo_id"][1]
    assert str(missing) in res["missing_folder"][1]
    assert "pytorch_model.bin" in res["pickle_weights"][1]
    assert "model.safetensors" in res["no_safetensors"][1]
    assert "tokenizer" in res["no_tokenizer"][1] and str(no_tokenizer) in res["no_tokenizer"][1]
    assert hub.repo_ids() == ["user/existing"]
    assert [c["title"] for c in hub.commits("user/existing")] == ["initial commit"]

    # server down: a closed port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = run_with_hub(
        PRELUDE
        + STANDALONE_HUB
        + f"""
try:
    push_to_hub({str(good)!r}, "user/a")
    emit(None)
except HubError as e:
    emit(str(e))
""",
        dead,
    )
    msg = child_result(down)
    assert msg is not None and dead in msg and "network" in msg
    assert tree_digest(tmp_path) == before, "a failed push modified local files"


# ------------------------------------------------------------------------------ transformers round trip


def test_transformers_push_and_from_pretrained(hub):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    push = run_with_hub(
        PRELUDE
        + """
import torch, transformers
from tokenizers import Tokenizer, models, pre_tokenizers
torch.manual_seed(0)
config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=16)
model = transformers.GPT2LMHeadModel(config).eval()
vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + [f"w{i}" for i in range(18)])}
tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
model.push_to_hub("user/tiny")
fast.push_to_hub("user/tiny")
ids = fast("w1 w2 w3 w4", return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
emit({"ids": ids.tolist(), "hash": sha(logits.numpy().tobytes())})
""",
        hub,
    )
    pushed = child_result(push)
    files = hub.files("user/tiny")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert not any(name.endswith(".bin") for name in files)
    n_requests = len(hub.requests_seen)

    load = run_with_hub(
        PRELUDE
        + """
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained("user/tiny")
model = AutoModelForCausalLM.from_pretrained("user/tiny").eval()
tok = AutoTokenizer.from_pretrained("user/tiny")
ids = tok("w1 w2 w3 w4", return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
emit({"ids": ids.tolist(), "hash": sha(logits.numpy().tobytes()), "type": config.model_type, "cls": type(model).__name__})
""",
        hub,
    )
    loaded = child_result(load)
    assert loaded["type"] == "gpt2" and loaded["cls"] == "GPT2LMHeadModel"
    assert loaded["ids"] == pushed["ids"]
    assert loaded["hash"] == pushed["hash"]
    # from_pretrained only downloaded over /resolve (plus optional API calls); nothing failed server-side
    reads = hub.requests_seen[n_requests:]
    assert ("GET", "/user/tiny/resolve/main/config.json") in reads or any(
        m == "GET" and p.endswith("/config.json") for m, p in reads
    )


def test_server_inspection_and_etag(hub):
    """The ETag served for a file is its git blob sha-1 (what huggingface_hub compares against)."""
    assert hub.url.startswith("http://127.0.0.1:")
    proc = run_with_hub(
        PRELUDE
        + """
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
api = HfApi()
api.create_repo("user/e")
api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id="user/e")
meta = get_hf_file_metadata(hf_hub_url("user/e", "a/b.txt"))
emit({"etag": meta.etag, "size": meta.size, "commit": meta.commit_hash, "whoami": api.whoami()["name"]})
""",
        hub,
    )
    res = child_result(proc)
    assert res["etag"] == git_blob_oid(b"hello") and res["size"] == 5
    assert res["commit"] == hub.branches("user/e")["main"]
    assert res["whoami"] == "user"
    assert hub.files("user/e")["a/b.txt"] == b"hello"


# ------------------------------------------------------------------------------------ model card only


@pytest.mark.parametrize(
    "data_path, expected",
    [
        ("someone/sentences", ["someone/sentences"]),
        ("text", None),
        ("json", None),
        ("csv/train", None),  # builder name, not a Hub id
        ("data/train.txt", None),  # local file
        ("./corpus/x", None),
        (None, None),
    ],
)
def test_model_card_datasets_field(tmp_path, data_path, expected):
    make_model_card = _hub_module().make_model_card
    folder = write_model_folder(tmp_path / "m")
    recipe = {"data": {"path": data_path}} if data_path is not None else None
    meta = _front_matter(make_model_card(folder, recipe=recipe))
    assert meta.get("datasets") == expected


def test_model_card_metrics_and_usage(tmp_path):
    make_model_card = _hub_module().make_model_card
    folder = write_model_folder(tmp_path / "m")
    card = make_model_card(folder, metrics={"test": {"elbo": -3.5, "ppl": 2.0, "kl": float("nan"), "mi": True}}, repo_id="org/name")
    meta = _front_matter(card)
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"elbo": -3.5, "ppl": 2.0}  # nested split, no NaN/bool
    assert all(set(m) == {"type", "name", "value"} for m in metrics)
    assert meta["model-index"][0]["name"] == "name"
    assert card.count('TextDVAE.from_pretrained("org/name")') == 1
    assert 'model.interpolate("first sentence", "second sentence", method="hamming")' in card
    assert "model-index" not in _front_matter(make_model_card(folder))
    assert 'from_pretrained("REPO_ID")' in make_model_card(folder)


# One card per kind of latent and estimator, from the shipped recipes' own model sections (a config that can exist).
CARD_CASES = [  # recipe, overrides, tags before "textdvae", phrases the card must have, phrases it must not have
    ("quickstart.yaml", [], ["text-vae", "discrete-latent", "gumbel-softmax"],
     ["16 latent variables with 4 categories", "at most 32.0 bits", "straight-through Gumbel-Softmax",
      "model.interpolate("], ["Gaussian", "learned"]),
    ("quickstart.yaml", ["model.estimator=gumbel"], ["text-vae", "discrete-latent", "gumbel-softmax"],
     ["the Gumbel-Softmax relaxation", "32.0 bits"], ["straight-through"]),
    ("quickstart.yaml", ["model.estimator=reinmax", "train.tau_start=1", "train.tau_min=1"], ["text-vae", "discrete-latent", "reinmax"],
     ["ReinMax estimator", "32.0 bits"], ["Gumbel"]),
    ("quickstart.yaml", ["model.estimator=reinforce"], ["text-vae", "discrete-latent", "reinforce"],
     ["score-function (REINFORCE)", "32.0 bits"], ["Gumbel"]),
    ("ptb_gru.yaml", [], ["text-vae", "discrete-latent", "gumbel-softmax"],
     ["8 latent variables with 16 categories", "at most 32.0 bits", "prior over the codes is learned",
      "| prior | autoregressive |"], ["Gaussian"]),
    ("ptb_gru_gaussian.yaml", [], ["text-vae", "gaussian-latent"],
     ["32-dimensional Gaussian latent", "| latent_dim | 32 |", "model.sample(3)"],
     ["categorical", "Gumbel", "bits", "num_latents", "num_categories", "estimator", "discrete", "model.encode"]),
    ("ptb_gru_lm.yaml", [], ["language-model"],
     ["without a latent", "| decoder_layers | 2 |", "model.sample(3)"],
     ["categorical", "Gumbel", "bits", "num_latents", "latent_dim", "estimator", "discrete", "model.encode",
      "encoder_type"]),
]


@pytest.mark.parametrize("recipe_file, overrides, kind_tags, says, never", CARD_CASES)
def test_model_card_describes_the_models_own_latent_and_estimator(tmp_path, recipe_file, overrides, kind_tags, says,
                                                                  never):
    from textdvae.recipe import load

    model_config = load(Path(__file__).resolve().parents[1] / "recipes" / recipe_file, overrides).model
    folder = tmp_path / "m"
    folder.mkdir()
    model_config.to_json_file(folder / "config.json")
    card = _hub_module().make_model_card(folder)
    meta = _front_matter(card)
    assert meta["tags"] == [*kind_tags, "textdvae"]
    body = card.split("---", 2)[2]
    for phrase in says:
        assert phrase in body, phrase
    for phrase in never:
        assert phrase not in body, phrase
