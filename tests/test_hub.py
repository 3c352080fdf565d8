"""Share models on the Hub (issue #6), end to end against the loopback Hub of tests/hub_server.py.

One tiny training run (module fixture) pushes at its end because its recipe sets ``hub.repo_id``; then
``textdvae push`` pushes the same folder again, a fresh process loads it by repo id (``TextDVAE`` and
``AutoModel``) and compares weights and reconstructions with the local folder, runs the card's snippet,
``textdvae reconstruct REPO_ID`` and ``model.push_to_hub``; the failure cases exit with status 2 and one clear
paragraph, leaving the local folder untouched.

Every client runs in a subprocess: huggingface_hub reads ``HF_ENDPOINT`` at import time. Each one costs ~5 s
(importing torch + transformers), so related checks share a process: five in all, three of them the real
``python -m textdvae`` (train, push, push with no network); the other two call ``textdvae.cli.main`` in-process.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import (RESULT_MARK, HubServer, child_result, run_cli_with_hub, run_with_hub,  # noqa: E402
                        tree_digest)

from conftest import ROOT, TINY  # noqa: E402

RUN = [*TINY, "train.max_steps=30", "train.eval_every=15", "train.save_every=15"]
CARD_METRICS = ["elbo", "nll", "ppl", "kl", "mi", "active_latents", "rec_bleu", "rec_token_acc"]
PRELUDE = f"""
import json, hashlib, sys
def emit(obj):
    print({RESULT_MARK!r} + json.dumps(obj), flush=True)
"""


def tensor_digests(path: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in load_file(str(path)).items()}


def front_matter(readme: str) -> dict:
    lines = readme.split("\n")
    assert lines[0] == "---", readme[:200]
    return yaml.safe_load("\n".join(lines[1:lines.index("---", 1)]))


def sentences(n: int = 4) -> list[str]:
    lines = (ROOT / "data" / "test.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def hub():
    with HubServer({"hf_test": "write", "hf_read": "read"}) as server:
        yield server


@pytest.fixture(scope="module")
def trained(hub, tmp_path_factory):
    """A tiny training run whose recipe sets hub.repo_id: it pushes its final/ folder to user/tiny-run."""
    out = tmp_path_factory.mktemp("hubrun") / "run"
    proc = run_cli_with_hub(["train", "recipes/quickstart.yaml", f"output_dir={out}", *RUN, "hub.repo_id=user/tiny-run"],
                            hub, cwd=ROOT, TQDM_DISABLE="1")
    assert proc.returncode == 0, f"training failed\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return out, proc


def check_pushed_repo(hub, repo_id: str, final: Path, title: str | None = None) -> dict:
    """The repo holds final/ byte for byte plus README.md and generation_config.json, all in ONE commit."""
    local = {p.name: p.read_bytes() for p in final.iterdir() if p.is_file()}
    files = hub.files(repo_id)
    assert set(files) == set(local) | {"README.md", "generation_config.json", ".gitattributes"}
    for name, data in local.items():
        assert files[name] == data, name
    commits = hub.commits(repo_id)
    assert [c["title"] for c in commits][1:] == ["initial commit"]
    assert set(commits[0]["changed"]) == set(files) - {".gitattributes"}
    if title:
        assert commits[0]["title"] == title

    config = json.loads(local["config.json"])
    gen = json.loads(files["generation_config.json"])
    assert gen["use_cache"] is False
    assert {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")} == \
        {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}

    readme = files["README.md"].decode()
    meta = front_matter(readme)
    metrics = json.loads(local["metrics.json"])
    assert meta["library_name"] == "textdvae"
    assert {"text-vae", "discrete-latent", "gumbel-softmax"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    index = meta["model-index"][0]
    assert index["name"] == repo_id.split("/")[1]
    got = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert got == {k: metrics[k] for k in CARD_METRICS if k in metrics}
    assert {"elbo", "nll", "ppl", "kl", "mi"} <= set(got)
    assert "## Evaluation" in readme and "| ELBO |" in readme and "| Perplexity |" in readme
    assert "| num_latents | 4 |" in readme and "| encoder_type | gru |" in readme  # architecture table
    assert "## Training recipe" in readme and "max_steps: 30" in readme
    assert f'TextDVAE.from_pretrained("{repo_id}")' in readme
    return files


def test_training_run_pushes_at_the_end(hub, trained):
    out, proc = trained
    check_pushed_repo(hub, "user/tiny-run", out / "final")
    assert f"pushed to {hub.url}/user/tiny-run/commit/" in proc.stdout + proc.stderr


def test_push_then_load_by_repo_id(hub, trained, tmp_path):
    out, _ = trained
    final = out / "final"
    before = tree_digest(out)

    push = run_cli_with_hub(["push", final, "user/tiny", "--commit-message", "tiny model"], hub)
    assert push.returncode == 0, push.stderr
    check_pushed_repo(hub, "user/tiny", final, title="tiny model")
    assert push.stdout.strip() == f"pushed {final} to {hub.url}/user/tiny/commit/{hub.branches('user/tiny')['main']}"

    # a fresh process: load by repo id, compare with the local folder, run the card's snippet, push the object
    texts = sentences()
    metrics = json.loads((final / "metrics.json").read_text())
    load = run_with_hub(PRELUDE + f"""
import contextlib, io, re
import torch, transformers
import textdvae
from huggingface_hub import ModelCard, hf_hub_download
from textdvae import TextDVAE
REPO, LOCAL, TEXTS = "user/tiny", {str(final)!r}, {texts!r}

def digests(model):
    return {{k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in model.state_dict().items()}}

by_class = TextDVAE.from_pretrained(REPO)
by_auto = transformers.AutoModel.from_pretrained(REPO, revision="main")
local = TextDVAE.from_pretrained(LOCAL)
res = {{"auto_class": type(by_auto).__name__, "config_class": type(transformers.AutoConfig.from_pretrained(REPO)).__name__,
        "tokenizer_from": by_class.tokenizer.name_or_path, "training": [by_class.training, by_auto.training]}}
for name, model in (("class", by_class), ("auto", by_auto), ("local", local)):
    res[name] = {{"weights": digests(model), "rec": model.reconstruct(TEXTS), "codes": model.encode(TEXTS)[0].tolist()}}
gen = transformers.GenerationConfig.from_pretrained(REPO)
res["generation"] = [gen.bos_token_id, gen.eos_token_id, gen.pad_token_id, gen.use_cache]
card = ModelCard.load(REPO)
res["card"] = [card.data.library_name, {{r.metric_type: r.metric_value for r in card.data.eval_results}}]
snippet = re.search(r"```python\\n(.*?)```", open(hf_hub_download(REPO, "README.md")).read(), re.S).group(1)
with contextlib.redirect_stdout(io.StringIO()) as printed:
    exec(snippet, {{}})
res["snippet_output"] = printed.getvalue()
res["object_push"] = by_class.push_to_hub("user/from-object", private=True, revision="v1", commit_message="object push",
                                          metrics=json.loads({json.dumps(metrics)!r}))
# every command that takes MODEL accepts a repo id: `textdvae reconstruct REPO_ID ... --json`
from textdvae.cli import main
with contextlib.redirect_stdout(io.StringIO()) as cli_out:
    res["cli"] = [main(["reconstruct", REPO, *TEXTS[:2], "--json"]), cli_out.getvalue()]
emit(res)
""", hub)
    res = child_result(load)
    local_weights = tensor_digests(final / "model.safetensors")
    for name in ("class", "auto", "local"):
        assert res[name]["weights"] == local_weights, name
        assert res[name]["rec"] == res["local"]["rec"] and res[name]["codes"] == res["local"]["codes"], name
    assert all(isinstance(r, str) for r in res["local"]["rec"]) and len(res["local"]["rec"]) == len(texts)
    assert res["auto_class"] == "TextDVAE" and res["config_class"] == "TextDVAEConfig"
    assert res["tokenizer_from"] == "user/tiny" and res["training"] == [False, False]
    config = json.loads((final / "config.json").read_text())
    assert res["generation"] == [config["bos_token_id"], config["eos_token_id"], config["pad_token_id"], False]
    assert res["card"][0] == "textdvae"
    assert res["card"][1] == {k: metrics[k] for k in CARD_METRICS if k in metrics}  # huggingface_hub parses model-index
    assert "[" in res["snippet_output"]  # the card's usage snippet ran and printed its reconstructions

    # TextDVAE.push_to_hub: weights, config, tokenizer, generation config and card in one commit on branch v1
    obj_files = hub.files("user/from-object", "v1")
    assert set(obj_files) == {".gitattributes", "README.md", "config.json", "model.safetensors", "generation_config.json",
                              "metrics.json", "tokenizer.json", "tokenizer_config.json"}
    assert [c["title"] for c in hub.commits("user/from-object", "v1")] == ["object push", "initial commit"]
    assert res["object_push"] == f"{hub.url}/user/from-object/commit/{hub.branches('user/from-object')['v1']}"
    assert hub.is_private("user/from-object") and set(hub.files("user/from-object", "main")) == {".gitattributes"}
    obj_weights = tmp_path / "obj.safetensors"
    obj_weights.write_bytes(obj_files["model.safetensors"])
    assert tensor_digests(obj_weights) == local_weights
    assert obj_files["tokenizer.json"] == (final / "tokenizer.json").read_bytes()
    assert obj_files["generation_config.json"] and json.loads(obj_files["generation_config.json"])["use_cache"] is False
    obj_meta = front_matter(obj_files["README.md"].decode())
    assert {m["type"] for m in obj_meta["model-index"][0]["results"][0]["metrics"]} >= {"elbo", "nll", "ppl"}

    # `textdvae reconstruct user/tiny ... --json` (the CLI's main(), in the fresh process)
    assert res["cli"][0] == 0
    rows = json.loads(res["cli"][1])
    assert [r["reconstruction"] for r in rows] == res["local"]["rec"][:2]
    assert [r["codes"] for r in rows] == res["local"]["codes"][:2]

    assert tree_digest(out) == before, "pushing or loading modified the local run folder"


def _one_paragraph_error(stderr: str, command: str) -> str:
    text = stderr.strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    assert text.startswith(f"textdvae {command}: error: "), text
    return text


def test_push_and_load_failures(hub, trained, tmp_path):
    out, _ = trained
    final = out / "final"
    before = tree_digest(out)

    # no network: nothing listens on the port (the real command line, in its own process)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = run_cli_with_hub(["push", final, "user/offline"], dead)
    assert down.returncode == 2, down.stderr
    msg = _one_paragraph_error(down.stderr, "push")
    assert dead in msg and "network" in msg and down.stdout == ""

    # the other cases share one process that calls the CLI's main(); the token is taken from HF_TOKEN at each
    # call, else from the saved login (HF_HOME/token, what `hf auth login` writes)
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    (hf_home / "token").write_text("hf_test")
    cases = [
        ("saved_login", None, ["push", final, "user/saved-login"]),
        ("bad_token", "hf_wrong", ["push", final, "user/a"]),
        ("read_only_new", "hf_read", ["push", final, "user/a"]),
        ("read_only_existing", "hf_read", ["push", final, "user/saved-login"]),
        ("invalid_name", "hf_test", ["push", final, "not a valid/repo!!"]),
        ("missing_folder", "hf_test", ["push", tmp_path / "no-such-run" / "final", "user/a"]),
        ("missing_repo", "hf_test", ["reconstruct", "user/does-not-exist", "the cat ."]),
        ("missing_revision", "hf_test", ["encode", "user/saved-login", "the cat .", "--revision", "nope"]),
    ]
    code = PRELUDE + f"""
import contextlib, io, os
from textdvae.cli import main
res = {{}}
for name, token, argv in {[(n, t, [str(a) for a in argv]) for n, t, argv in cases]!r}:
    if token is None:
        os.environ.pop("HF_TOKEN", None)
    else:
        os.environ["HF_TOKEN"] = token
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except BaseException as e:  # an error that escaped main() would print a traceback
        rc = repr(e)
    res[name] = [rc, out.getvalue(), err.getvalue()]
emit(res)
"""
    res = child_result(run_with_hub(code, hub, token=None, hf_home=hf_home))
    rc, stdout, stderr = res.pop("saved_login")
    assert rc == 0 and stdout.startswith(f"pushed {final} to {hub.url}/user/saved-login/commit/"), (rc, stdout, stderr)
    for name, (rc, stdout, stderr) in res.items():
        assert rc == 2, (name, rc, stderr)
        command = next(argv[0] for n, _, argv in cases if n == name)
        res[name] = _one_paragraph_error(stderr, command)
    assert "HF_TOKEN" in res["bad_token"] and "hf auth login" in res["bad_token"]
    assert "write access" in res["read_only_new"] and "user/a" in res["read_only_new"]
    assert "write access" in res["read_only_existing"] and "user/saved-login" in res["read_only_existing"]
    assert "not a valid/repo!!" in res["invalid_name"] and "namespace/name" in res["invalid_name"]
    assert "no-such-run" in res["missing_folder"] and "does not exist" in res["missing_folder"]
    assert "user/does-not-exist" in res["missing_repo"] and "not found" in res["missing_repo"]
    assert "'nope' not found" in res["missing_revision"]

    # nothing was created or committed by the failed pushes, and the local run folder is unchanged byte for byte
    assert "user/a" not in hub.repo_ids() and "user/offline" not in hub.repo_ids()
    assert [c["title"] for c in hub.commits("user/saved-login")] == ["Upload textdvae model", "initial commit"]
    assert tree_digest(out) == before, "a failed push modified the local run folder"
