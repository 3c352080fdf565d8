"""Issue 31: what a published model may carry, runs that cannot corrupt each other, the last unchecked inputs.

Fast checks in-process (tiny configs, as in test_faults.py); the Hub checks run one child process each against the
loopback Hub of tests/hub_server.py. What is NOT tested here: fp16 loss scaling on a GPU. The skip logic is tested
by forcing accelerate to report a skipped step on CPU, and the scaler's checkpointing with torch's CPU GradScaler.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
import yaml

from textdvae import cli
from textdvae import data as data_lib
from textdvae import recipe as recipe_lib
from textdvae.checkpointing import (RunLock, checkpoints_newest_first, clean_checkpoint_dir, prune_checkpoints,
                                    replace_dir, set_aside, temporary_name, write_json_atomic)
from textdvae.recipe import RecipeError
from textdvae.redact import is_credential_key, public_recipe, without_credentials
from textdvae.training import Trainer, TrainingError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SCHEDULED_KL  # noqa: E402
from hub_server import RESULT_MARK, HubServer, child_result, run_with_hub  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.yaml"
TINY = ["model.hidden_dim=32", "model.embed_dim=16", "model.num_latents=4", "model.num_categories=4",
        "data.max_train_samples=200", "data.max_eval_samples=20", "train.batch_size=32", "train.iw_samples=2",
        "train.log_with=[]", *SCHEDULED_KL]
SECRET = "hf_SECRETsecretSECRET"



@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 10-step run whose recipe holds a token in data.load_options and an absolute data path."""
    out = tmp_path_factory.mktemp("hardening") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        args = [f"output_dir={out}", *TINY, "train.max_steps=10", "train.save_every=5", "train.eval_every=5",
                f"data.data_files.train={ROOT / 'data' / 'train.jsonl'}", f"data.load_options={{token: {SECRET}}}"]
        assert cli.main(["train", str(RECIPE), *args]) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return out, args


# ---- what a published model may carry ---------------------------------------------------------------------------


def test_credentials_and_local_paths_are_dropped_from_a_public_recipe(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    raw = {"output_dir": str(run_dir),
           "data": {"data_files": {"train": str(run_dir / "data" / "t.txt"), "test": "/srv/corpus/test.txt",
                                   "validation": ["~/v.txt", "relative/v.txt"]},
                    "load_options": {"token": SECRET, "storage_options": {"key": "AKIA", "secret": "s3cr3t",
                                                                         "client_kwargs": {"Password": "pw"}},
                                     "urls": ["https://user:pa55@example.com/a.txt"]}},
           "tokenizer": {"kind": "word", "name_or_path": None},
           "model": {"pad_token_id": 0, "bos_token_id": 1}}
    public = public_recipe(raw, run_dir)
    text = yaml.safe_dump(public)
    for leaked in (SECRET, "AKIA", "s3cr3t", "pw", "pa55", "user:", "/srv", str(tmp_path), "~"):
        assert leaked not in text, leaked
    assert public["output_dir"] == "x"
    assert public["data"]["data_files"] == {"train": "data/t.txt", "test": "test.txt",
                                            "validation": ["v.txt", "relative/v.txt"]}
    assert public["data"]["load_options"] == {"storage_options": {"client_kwargs": {}},
                                              "urls": ["https://example.com/a.txt"]}
    assert public["model"] == raw["model"] and public["tokenizer"] == raw["tokenizer"]  # token ids are no tokens
    assert raw["data"]["load_options"]["token"] == SECRET  # the caller's recipe is left alone
    trackers = without_credentials(raw)  # what experiment trackers get: no credentials, local paths kept
    assert SECRET not in str(trackers) and trackers["data"]["data_files"]["test"] == "/srv/corpus/test.txt"
    assert [k for k in ("api_key", "AWS_SECRET_ACCESS_KEY", "hf_token", "credentials", "pad_token_id", "tokenizer",
                        "keep_checkpoints", "max_tokens") if is_credential_key(k)] == \
        ["api_key", "AWS_SECRET_ACCESS_KEY", "hf_token", "credentials"]


def test_the_card_and_final_recipe_carry_no_credentials(run):
    from textdvae.hub import make_model_card

    out, _ = run
    local = yaml.safe_load((out / "config.yaml").read_text())
    assert local["data"]["load_options"]["token"] == SECRET  # the local recipe resumes the run: kept as given
    final_recipe = (out / "final" / "recipe.yaml").read_text()
    assert SECRET not in final_recipe and str(ROOT) not in final_recipe and "train.jsonl" in final_recipe
    card = make_model_card(out / "final", recipe=local)
    assert SECRET not in card and str(ROOT) not in card and "train.jsonl" in card


def test_loading_runs_no_repository_code_and_reads_safetensors_only(run, monkeypatch):
    import transformers

    from textdvae.modeling import TextDVAE

    seen = {}
    tok_load, model_load = transformers.AutoTokenizer.from_pretrained, TextDVAE.from_pretrained.__func__

    def record_tokenizer(*args, **kwargs):
        seen["tokenizer"] = kwargs
        return tok_load(*args, **kwargs)

    def record_model(cls, *args, **kwargs):
        seen["model"] = kwargs
        return model_load(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record_tokenizer)
    monkeypatch.setattr(TextDVAE, "from_pretrained", classmethod(record_model))
    cli.load_model(str(run[0] / "final"))
    assert seen["tokenizer"]["trust_remote_code"] is False
    assert seen["model"]["trust_remote_code"] is False and seen["model"]["use_safetensors"] is True


def test_a_tokenizer_that_does_not_fit_its_model_is_refused(run, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(run[0] / "final", folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i in range(5):
        vocab[f"extra{i}"] = len(vocab)
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["encode", str(folder), "the cat"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not fit the model" in err
    assert f"{config['vocab_size'] + 5} tokens, config.json vocab_size={config['vocab_size']}" in err
    assert "eos_token_id is 2 in the tokenizer, 3 in config.json" in err


def test_extra_metric_needs_an_explicit_flag(run, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(run[0] / "final"), "--extra-metric", "bleu"]) == 2
    err = capsys.readouterr().err
    assert "runs it on this machine" in err and "--allow-metric-code" in err


def test_torch_floor_is_the_first_safe_weights_only_release():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6"' in text


# ---- runs that cannot corrupt each other ------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tmp_path, one_thread, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from textdvae.checkpointing import RunLock; "
         f"RunLock.acquire({str(out)!r}); print('held', flush=True); time.sleep(60)"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(data_lib, "prepare_data", lambda *a, **k: pytest.fail("data loaded before the lock"))
        with pytest.raises(TrainingError, match=rf"in use by pid {holder.pid} on host"):
            Trainer(recipe_lib.load(RECIPE, [f"output_dir={out}", *TINY]))
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock.acquire(out)  # the kernel dropped the killed holder's lock: no stale lock file blocks
    assert f"pid {os.getpid()}" in (out / ".lock").read_text()
    lock.release()


def test_temporary_folders_are_unique_to_the_process(tmp_path):
    assert temporary_name(tmp_path / "step-0000005").name == f".step-0000005.tmp-{os.getpid()}"
    leftover = tmp_path / ".step-0000005.tmp-99999"
    leftover.mkdir()
    clean_checkpoint_dir(tmp_path)  # a killed run's leftovers, whatever process wrote them
    assert not leftover.exists()


def test_resume_refuses_a_recipe_that_changes_the_run(run, tmp_path, one_thread):
    out, args = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    args = [a.replace(str(out), str(copy)) for a in args]
    stored = json.loads((copy / "checkpoints" / "step-0000010" / "trainer.json").read_text())["recipe"]
    assert stored["train"]["batch_size"] == 32 and stored["data"]["max_train_samples"] == 200
    config_before = (copy / "config.yaml").read_bytes()
    changed = [*args, "train.resume=true", "train.batch_size=16", "data.max_train_samples=100"]
    with pytest.raises(TrainingError, match=r"train.batch_size: 32 -> 16.*data.max_train_samples: 200 -> 100.*"
                                            r"train.resume_allow_changes=\[train.batch_size, data.max_train_samples\]"):
        Trainer(recipe_lib.load(RECIPE, changed)).train()
    assert (copy / "config.yaml").read_bytes() == config_before  # written only after a checkpoint loaded
    # the same recipe with train.resume=true is no change; an allowed change resumes
    allowed = [*args, "train.resume=true", "train.max_steps=12", "train.resume_allow_changes=[train.max_steps]"]
    trainer = Trainer(recipe_lib.load(RECIPE, allowed))
    trainer.train()
    assert trainer.step == 12 and yaml.safe_load((copy / "config.yaml").read_text())["train"]["max_steps"] == 12
    with pytest.raises(RecipeError, match="train.resume_allow_changes names 'train.iw_samples'"):
        recipe_lib.load(RECIPE, [*args, "train.resume_allow_changes=[train.iw_samples]"])


def test_resume_says_when_an_older_batch_order_ends_the_epoch(run, tmp_path, one_thread, caplog):
    """A checkpoint from a version whose batch order differs (no "batch_plan" in trainer.json: version 1) resumed
    mid-epoch trains on, and says that the rest of that epoch is not the original run's; this version's own
    checkpoint resumes without the note."""
    out, args = run
    for name, strip in (("old", True), ("same", False)):
        copy = tmp_path / name
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
        state = copy / "checkpoints" / "step-0000010" / "trainer.json"
        trainer_json = json.loads(state.read_text())
        assert trainer_json["batch_plan"] == data_lib.BATCH_PLAN_VERSION
        if strip:
            del trainer_json["batch_plan"]
            state.write_text(json.dumps(trainer_json))
        resumed = [a.replace(str(out), str(copy)) for a in args] + [
            "train.resume=true", "train.max_steps=12", "train.resume_allow_changes=[train.max_steps]"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="textdvae"):
            trainer = Trainer(recipe_lib.load(RECIPE, resumed))
            trainer.train()
        assert trainer.step == 12 and 10 % trainer.batches_per_epoch  # the checkpoint was mid-epoch
        noted = [r.getMessage() for r in caplog.records if "batch order (version 1)" in r.getMessage()]
        assert len(noted) == (1 if strip else 0)
        if strip:
            assert f"the rest of epoch {10 // trainer.batches_per_epoch} is batched" in noted[0]


def test_a_step_the_loss_scaler_skips_moves_no_counter(tmp_path, one_thread, monkeypatch):
    """accelerate reports a skipped fp16 step through optimizer_step_was_skipped; forced here on CPU."""
    from accelerate import Accelerator

    calls = []

    def skipped(self):
        calls.append(1)
        return len(calls) in (2, 3)

    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(skipped))
    out = tmp_path / "fp16"
    trainer = Trainer(recipe_lib.load(RECIPE, [f"output_dir={out}", *TINY, "train.max_steps=5", "train.log_every=1",
                                               "train.eval_every=100", "train.save_every=100"]))
    trainer.train()
    assert trainer.step == 5 and trainer.batches_seen == 7 and trainer.scaler_skips == 2
    assert trainer.scheduler.last_epoch == 5  # the LR schedule moved once per real step
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("scaler_skipped")] == [1, 1]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    # the warm-up LR and beta follow the step, not the batches: lr = lr * (step + 1) / warmup_steps
    assert all(r["lr"] == pytest.approx(0.003 * (r["step"] + 1) / 100) for r in steps)
    assert all(r["beta"] == pytest.approx((r["step"] - 1) / 1000) for r in steps)


def test_the_loss_scalers_state_rides_in_the_checkpoint(tmp_path, one_thread):
    out = tmp_path / "scaler"
    args = [f"output_dir={out}", *TINY, "train.max_steps=3", "train.save_every=100", "train.eval_every=100"]
    trainer = Trainer(recipe_lib.load(RECIPE, args))
    trainer.setup()
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    trainer.save_checkpoint()
    trainer.release()
    resumed = Trainer(recipe_lib.load(RECIPE, [*args, "train.resume=true"]))
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    resumed.setup()
    assert resumed.accelerator.scaler.get_scale() == 512.0
    resumed.release()


def test_pruning_orders_by_step_number_and_keeps_the_one_just_written(tmp_path):
    for step in (9_999_998, 9_999_999, 10_000_000):
        (tmp_path / f"step-{step:07d}").mkdir()
    (tmp_path / "step-0000005.unreadable").mkdir()
    assert [p.name for p in checkpoints_newest_first(tmp_path)] == ["step-10000000", "step-9999999", "step-9999998"]
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000005.unreadable", "step-10000000", "step-9999999"]
    written = tmp_path / "step-0000020"  # an older run left higher step numbers: the new checkpoint stays
    written.mkdir()
    prune_checkpoints(tmp_path, keep=1, written=written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000005.unreadable", "step-0000020", "step-10000000"]
    assert set_aside(written).name == "step-0000020.unreadable" and not written.exists()


def test_renames_and_json_files_reach_the_disk(tmp_path, monkeypatch):
    import stat

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tmp = tmp_path / ".x.tmp"
    tmp.mkdir()
    replace_dir(tmp, tmp_path / "x")
    assert synced == ["dir"]
    synced.clear()
    write_json_atomic(tmp_path / "metrics.json", {"elbo": -1.0})
    assert synced == ["file", "dir"] and json.loads((tmp_path / "metrics.json").read_text()) == {"elbo": -1.0}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- inputs still accepted that should not be -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["lr", "weight_decay", "beta_max", "free_bits", "tau_decay", "grad_clip", "epochs",
                                 "tau_start", "beta_ratio", "word_dropout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-.inf"])
def test_non_finite_numbers_are_refused(key, value):
    with pytest.raises(RecipeError, match=rf"train.{key} must be a finite number"):
        recipe_lib.load(RECIPE, [f"train.{key}={value}"])


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_the_rng_range_is_refused(seed):
    with pytest.raises(RecipeError, match=r"train.seed must be in \[0, 2\*\*32\)"):
        recipe_lib.load(RECIPE, [f"train.seed={seed}"])


def test_max_length_beyond_a_transformers_positions_is_refused():
    with pytest.raises(RecipeError, match="data.max_length=300 tokens exceeds model.max_position_embeddings=256"):
        recipe_lib.load(RECIPE, ["model.encoder_type=transformer", "data.max_length=300", "model.num_heads=4"])
    recipe_lib.load(RECIPE, ["data.max_length=300"])  # a GRU has no position limit


@pytest.mark.parametrize("repo_id", ["not a repo", "user/name/extra", "a--b/c", "noslash"])
def test_bad_hub_repo_ids_are_refused_at_recipe_load(repo_id):
    with pytest.raises(RecipeError, match="hub.repo_id="):
        recipe_lib.load(RECIPE, [f"hub.repo_id={repo_id}"])


def test_output_dir_that_is_a_file_is_refused_before_the_data(tmp_path, monkeypatch, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    monkeypatch.setattr(data_lib, "prepare_data", lambda *a, **k: pytest.fail("data loaded first"))
    capsys.readouterr()
    assert cli.main(["train", str(RECIPE), f"output_dir={path}", *TINY]) == 2
    assert f"output_dir={str(path)!r} is an existing file" in capsys.readouterr().err


def test_tilde_is_expanded_in_recipe_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = recipe_lib.load(RECIPE, ["output_dir=~/runs/x", "data.data_files.train=~/corpus/train.txt",
                                      "tokenizer.kind=pretrained", "tokenizer.name_or_path=~/tok"])
    assert recipe.output_dir == str(tmp_path / "runs" / "x")
    assert recipe.data.data_files["train"] == str(tmp_path / "corpus" / "train.txt")
    assert recipe.tokenizer.name_or_path == str(tmp_path / "tok")
    assert recipe.raw["output_dir"] == recipe.output_dir


def test_tilde_is_expanded_in_model_paths(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(run[0] / "final", tmp_path / "model")
    capsys.readouterr()
    assert cli.main(["encode", "~/model", "the cat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["text"] == "the cat"


def test_one_enormous_line_is_cut_before_tokenizing():
    class Recorder:
        eos_token_id = 2

        def __call__(self, texts, **kwargs):
            self.lengths = [len(t) for t in texts]
            return {"input_ids": [[5] * 3 for _ in texts]}

    tok = Recorder()
    data_lib.encode(tok, ["word " * 1_000_000, "short"], max_length=16)
    assert tok.lengths == [16 * data_lib.MAX_CHARS_PER_TOKEN, 5]


def test_one_enormous_line_is_cut_in_the_api(run):
    from textdvae.explore import max_tokens, tokenize

    model, _ = cli.load_model(str(run[0] / "final"))
    seen = []
    real = model.tokenizer

    def recording(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return real(texts, **kwargs)

    model.tokenizer = recording
    tokenize(model, ["the cat " * 500_000])
    assert seen == [max_tokens(model) * data_lib.MAX_CHARS_PER_TOKEN]


def test_trained_tokenizers_normalise_to_nfc_and_a_bom_is_stripped(tmp_path):
    from textdvae.recipe import TokenizerConfig
    from textdvae.tokenization import build_tokenizer

    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    for kind, size in (("word", 100), ("bpe", 400)):
        tok = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=size), [f"{composed} au lait"] * 5)
        assert tok(decomposed, add_special_tokens=False)["input_ids"] == \
            tok(composed, add_special_tokens=False)["input_ids"], kind
    train = tmp_path / "train.txt"
    train.write_bytes("\ufeffthe first line\nthe second\n".encode("utf-8"))
    texts, _ = data_lib.load_texts(recipe_lib.DataConfig(path="text", data_files={"train": str(train)}))
    assert texts["train"] == ["the first line", "the second"]


# ---- the Hub ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    with HubServer({"hf_test": "write", "hf_read": "read"}) as server:
        yield server


def test_a_bad_token_stops_training_before_it_starts(hub, tmp_path):
    """The command line's main in one child wired to the loopback Hub, once per bad token (read from HF_TOKEN at
    each call): exit 2 with the reason, no traceback, nothing trained."""
    cases = {"hf_wrong": "invalid token", "hf_read": "token is read-only"}
    code = f"""
import contextlib, io, json, os
from textdvae.cli import main
out = {{}}
for token in {list(cases)!r}:
    os.environ["HF_TOKEN"] = token
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", {str(RECIPE)!r}, "output_dir=" + {str(tmp_path)!r} + "/" + token, *{TINY!r},
                   "hub.repo_id=user/never"])
    out[token] = [rc, err.getvalue()]
print({RESULT_MARK!r} + json.dumps(out), flush=True)
"""
    result = child_result(run_with_hub(code, hub, cwd=ROOT))
    for token, message in cases.items():
        rc, stderr = result[token]
        assert rc == 2 and message in stderr and "Traceback" not in stderr, (token, stderr)
        out = tmp_path / token
        assert not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()  # nothing trained


def test_push_sends_only_a_models_files_and_cleans_up_after_a_failure(hub, run, tmp_path):
    final = tmp_path / "run" / "final"
    shutil.copytree(run[0] / "final", final)
    (final / "notes.txt").write_text("private notes")
    (final / "plot.png").write_bytes(b"png")
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    # a parent that is no training run: its config.yaml and metrics.json are not borrowed
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"unrelated": {"token": SECRET}}))
    (final / "recipe.yaml").write_text(yaml.safe_dump({"output_dir": "/home/me/run", "data": {"load_options": {
        "storage_options": {"secret": SECRET}}}}))
    code = f"""
import json, os
from pathlib import Path
from textdvae.hub import HubError, push_to_hub
out = {{}}
final = Path({str(final)!r})
out["url"] = push_to_hub(final, "user/allow-list")
out["included"] = push_to_hub(final, "user/included", include=["*.txt"])
os.symlink({str(outside)!r}, final / "vocab.json")
try:
    push_to_hub(final, "user/linked")
except HubError as e:
    out["symlink"] = str(e)
os.unlink(final / "vocab.json")
try:
    push_to_hub(final, "user/half", revision="refs/pr/7")
except HubError as e:
    out["failed"] = str(e)
print({RESULT_MARK!r} + json.dumps(out), flush=True)
"""
    result = child_result(run_with_hub(code, hub, cwd=ROOT))
    files = hub.files("user/allow-list")
    assert "notes.txt" not in files and "plot.png" not in files
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "README.md"} <= set(files)
    for name in ("recipe.yaml", "README.md"):
        assert SECRET.encode() not in files[name] and b"/home/me" not in files[name], name
    assert "notes.txt" in hub.files("user/included")
    assert "is a symlink to" in result["symlink"] and "outside the folder" in result["symlink"]
    assert "user/linked" not in hub.repo_ids()
    assert "failed" in result and "user/half" not in hub.repo_ids()  # the repo this push created is gone again


def test_push_borrows_the_parent_recipe_only_from_a_training_run(run, tmp_path):
    from textdvae.hub import _find_extras

    final = tmp_path / "notarun" / "final"
    shutil.copytree(run[0] / "final", final)
    (final / "recipe.yaml").unlink()
    (final / "metrics.json").unlink()
    (final.parent / "config.yaml").write_text(yaml.safe_dump({"output_dir": "x", "model": {}}))
    (final.parent / "metrics.json").write_text("{}")
    metrics, recipe, extras = _find_extras(final)
    assert metrics is None and recipe is None and extras == {}
    (final.parent / "log.jsonl").write_text("")  # now it is one: config.yaml reads as a recipe, and a log
    metrics, recipe, extras = _find_extras(final)
    assert recipe == {"output_dir": "x", "model": {}} and set(extras) == {"recipe.yaml", "metrics.json"}


def test_eval_of_a_runs_final_folder_reads_the_runs_own_recipe(run, one_thread, capsys):
    """final/recipe.yaml has its absolute data paths cut to file names; eval reads ../config.yaml instead."""
    capsys.readouterr()
    assert cli.main(["eval", str(run[0] / "final"), "data.max_eval_samples=10", "--split", "train",
                     "--iw-samples", "2", "--plot", ""]) == 0, capsys.readouterr().err
    assert "elbo" in capsys.readouterr().out.lower()
