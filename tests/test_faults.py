"""Runs that survive faults, and bad input that gets a clear answer.

Faults: a run killed with SIGKILL and resumed ends bitwise identical to an uninterrupted one; Ctrl-C saves a
checkpoint and prints the command that resumes; checkpoints are atomic, pruned, and a broken newest one is skipped;
non-finite losses are skipped, counted, and a run of them stops the run with exit status 2.

Bad input: the cases of issue 7 not already covered by test_data.py, test_recipe.py and test_cli.py, through the
CLI (exit status 2, one message naming the bad value, no traceback).
"""

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textdvae import cli
from textdvae import recipe as recipe_lib
from textdvae.modeling import TextDVAE
from textdvae.checkpointing import latest_checkpoint
from textdvae.training import Trainer, TrainingError

from conftest import ROOT, TINY, cli_env, textdvae_here

RECIPE = "recipes/quickstart.yaml"
pytestmark = pytest.mark.usefixtures("datasets_cache")
# 60 steps, a checkpoint and a validation every 10: Gumbel noise, dropout and word dropout draw from the RNG; a
# warm-up, a cosine LR and the beta/tau schedules depend on the step; so any state that resume failed to restore
# shows in the final weights
FAULT_RUN = [*TINY, "model.dropout=0.1", "train.word_dropout=0.1", "train.max_steps=60", "train.save_every=10",
             "train.eval_every=10", "train.log_every=5"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "textdvae", *map(str, args)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=300):
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be interrupted\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.005)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def training_log(run_dir: Path) -> list[dict]:
    """log.jsonl without the wall-clock times and the 'resumed' marker: what must match an uninterrupted run."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records if r.get("event") != "resumed"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    textdvae_here("train", RECIPE, f"output_dir={out}", *FAULT_RUN, cache=out.parent / "reference_cache")
    return out



# ---- faults ---------------------------------------------------------------------------------------------------------


def test_resume_after_sigkill_is_bitwise_identical(reference, tmp_path, capsys):
    out = tmp_path / "killed"
    proc = start("train", RECIPE, f"output_dir={out}", *FAULT_RUN)
    wait_for(lambda: latest_checkpoint(out / "checkpoints") is not None, proc)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "final").exists()
    killed_at = latest_checkpoint(out / "checkpoints")
    # a later checkpoint the kill left half-written: resume must never read it (and removes it)
    half = out / "checkpoints" / ".step-0000059.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    capsys.readouterr()
    textdvae_here("train", RECIPE, f"output_dir={out}", *FAULT_RUN, "train.resume=true", cache=tmp_path / "cache")
    assert f"resumed from {killed_at}" in capsys.readouterr().out and not half.exists()
    assert_bitwise_equal(weights(out), weights(reference))
    # the log continues where the checkpoint was: every training and validation record as in the uninterrupted run
    assert training_log(out) == training_log(reference)
    final_elbo = [json.loads((d / "metrics.json").read_text())["elbo"] for d in (out, reference)]
    assert final_elbo[0] == final_elbo[1]


def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(reference, tmp_path, one_thread):
    out = tmp_path / "interrupted"
    proc = start("train", RECIPE, f"output_dir={out}", *FAULT_RUN)
    log = out / "log.jsonl"
    wait_for(lambda: log.is_file() and log.read_text().strip(), proc)  # the first log line: training is under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr  # 128 + SIGINT, the shell's convention
    assert "Traceback" not in stderr
    found = re.search(r"interrupted at step (\d+) of 60; checkpoint saved in (\S+)\. Resume with: (.+)$", stderr, re.M)
    assert found, stderr
    step, checkpoint, command = int(found[1]), Path(found[2]), found[3]
    assert 5 <= step < 60 and checkpoint == out / "checkpoints" / f"step-{step:07d}" and checkpoint.is_dir()
    assert command == f"textdvae train {out / 'config.yaml'} train.resume=true"
    assert not (out / "final").exists()
    # the printed command, as printed, finishes the run, and it ends as if never interrupted
    argv = shlex.split(command)
    assert argv[:2] == ["textdvae", "train"] and cli.main(argv[1:]) == 0
    assert_bitwise_equal(weights(out), weights(reference))
    assert training_log(out) == training_log(reference)


def test_checkpoints_are_pruned_and_a_broken_newest_one_is_skipped(tmp_path, one_thread, capsys):
    out = tmp_path / "run"
    args = [f"output_dir={out}", *TINY, "train.max_steps=20", "train.save_every=5", "train.eval_every=5",
            "train.keep_checkpoints=2"]
    assert cli.main(["train", RECIPE, *args]) == 0
    ckpt = out / "checkpoints"
    # the newest keep_checkpoints (the last step included), the best one, the run's tokenizer; nothing half-done
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "step-0000015", "step-0000020", "tokenizer"]
    assert (ckpt / "best" / "model.safetensors").is_file()

    def resumed_trainer():
        trainer = Trainer(recipe_lib.load(ROOT / RECIPE, [*args, "train.resume=true"]))
        trainer.setup()
        return trainer

    # a truncated state file in the newest checkpoint: resume warns, naming it, and falls back to the one before
    state = ckpt / "step-0000020" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert resumed_trainer().step == 15
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-0000020" in err and "state.pt is truncated or corrupt" in err
    # once an older one loaded, the broken one is set aside: never picked again, kept for a look
    assert "set aside unreadable checkpoint" in err
    assert (ckpt / "step-0000020.unreadable").is_dir() and not (ckpt / "step-0000020").exists()
    # a missing file in the only other one: nothing loads -> a clear error listing it and the one set aside
    (ckpt / "step-0000015" / "trainer.json").unlink()
    with pytest.raises(TrainingError, match=r"(?s)no checkpoint .* can be read .*step-0000015: trainer.json missing.*"
                                            r"set aside earlier: step-0000020.unreadable"):
        resumed_trainer()
    assert (ckpt / "step-0000015").is_dir()  # when none loads, none is set aside: the user decides
    # a new run into a folder with checkpoints is refused rather than mixed with them
    with pytest.raises(TrainingError, match="train.resume=true, or choose a new output_dir"):
        Trainer(recipe_lib.load(ROOT / RECIPE, args)).setup()


def test_nonfinite_losses_are_skipped_counted_and_a_run_of_them_stops(tmp_path, one_thread, monkeypatch, capsys):
    forward, calls = TextDVAE.forward, []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:  # validation passes are not counted
            calls.append(1)
            if len(calls) in (3, 4) or len(calls) >= 12:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TextDVAE, "forward", poisoned)
    out = tmp_path / "nan"
    rc = cli.main(["train", RECIPE, f"output_dir={out}", *TINY, "train.max_steps=30", "train.save_every=5",
                   "train.eval_every=5", "train.log_every=1", "train.max_nonfinite_steps=4"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    # batches 3 and 4 skipped; batches 5..11 are steps 3..9; batches 12..15 are 4 non-finite losses in a row
    assert "4 non-finite loss values in a row at step 9 (train.max_nonfinite_steps=4)" in err
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-0000005'}" in err
    assert latest_checkpoint(out / "checkpoints").name == "step-0000005" and not (out / "final").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in log if r.get("nonfinite_loss")]
    assert [r["step"] for r in skipped] == [2, 2, 9, 9, 9, 9] and skipped[-1]["nonfinite_steps"] == 6
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 10))  # a skipped batch is not a step
    assert steps[1]["nonfinite_steps"] == 0 and steps[2]["nonfinite_steps"] == 2
    # the scheduler did not move on skipped batches: warm-up LR = lr * (step + 1) / warmup_steps at every step
    assert all(r["lr"] == pytest.approx(0.003 * (r["step"] + 1) / 100) for r in steps)


# ---- bad input ------------------------------------------------------------------------------------------------------


def user_error(capsys, *argv) -> str:
    """Run the CLI in-process; it must exit with 2 and one message on stderr, no traceback."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    marker = f"textdvae {argv[0]}: error: "
    assert "Traceback" not in err and marker in err, err
    return err[err.index(marker):]  # (datasets may draw progress bars on stderr before it)


def local_data(train, validation=None) -> list[str]:
    files = {"train": str(train)} | ({"validation": str(validation)} if validation else {})
    return ["data.path=text", f"data.data_files={json.dumps(files)}"]


def test_blank_lines_truncation_and_replaced_bytes_are_counted_in_metrics(tmp_path, one_thread):
    words = "the cat chased the fox the dogs will not greet the old queen".split()
    lines = [" ".join(words[i % 5: i % 5 + 4]) for i in range(60)]
    lines[7] = ""
    lines[8] = "   \t "
    lines[20] = " ".join(words * 3)  # 39 words: longer than data.max_length=12
    lines[21] = " ".join(words)  # 13 words + EOS = 14 tokens
    train = tmp_path / "train.txt"
    train.write_bytes("\n".join(lines).encode() + b"\ncaf\xe9 au lait\n")
    valid = tmp_path / "valid.txt"
    valid.write_text("the cat chased the fox\n\n" + "\n".join(lines[:10]) + "\n")
    out = tmp_path / "run"
    assert cli.main(["train", RECIPE, f"output_dir={out}", *local_data(train, valid), "data.encoding_errors=replace",
                     "data.max_length=12", *TINY, "train.max_steps=2", "train.batch_size=16"]) == 0
    stats = json.loads((out / "metrics.json").read_text())["data"]
    assert stats["train"]["n_skipped_blank"] == 2 and stats["train"]["n_sentences"] == 59
    assert stats["train"]["n_truncated"] == 2  # 39 and 13 words do not fit 11 tokens + EOS
    assert stats["eval"]["n_skipped_blank"] == 3 and stats["eval"]["n_sentences"] == 9
    assert "\ufffd" in (out / "checkpoints" / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8")


def test_bad_data_files_through_the_cli(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = user_error(capsys, "train", RECIPE, f"output_dir={tmp_path / 'a'}", *local_data(empty))
    assert f"data file '{empty}' (split 'train') is empty" in err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"fine\nalso fine\ncaf\xe9 au lait\n")
    err = user_error(capsys, "train", RECIPE, f"output_dir={tmp_path / 'b'}", *local_data(latin1))
    assert f"'{latin1}', line 3: byte 0xe9 is not valid UTF-8" in err and "data.encoding_errors=replace" in err
    records = tmp_path / "records.jsonl"
    records.write_text('{"sentence": "a b", "label": 1}\n')
    err = user_error(capsys, "train", RECIPE, f"output_dir={tmp_path / 'c'}", "data.path=json",
                     f"data.data_files={{train: {records}}}")
    assert "data.text_column='text' is not a column" in err and "(columns: sentence, label)" in err


@pytest.mark.parametrize("override,message", [
    ("train.tau_start=0", "train.tau_start and train.tau_min must be > 0, got 0.0 and 0.5"),
    ("train.tau_min=-0.5", "train.tau_start and train.tau_min must be > 0, got 1.0 and -0.5"),
    ("train.lr=-0.001", "train.lr must be > 0, got -0.001"),
    ("train.batch_size=-8", "train.batch_size must be an integer >= 1, got -8"),
    ("model.num_latents=-1", "num_latents"),
    ("train.free_bits=-1", "train.free_bits must be >= 0"),
])
def test_impossible_values_through_the_cli(override, message, capsys):
    assert message in user_error(capsys, "train", RECIPE, override)


def test_recipe_that_is_not_a_mapping_through_the_cli(tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- model\n- train\n")
    assert "must be a YAML mapping of sections" in user_error(capsys, "train", bad)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small untrained model with its tokenizer, as a training run's final/ holds them."""
    from textdvae import TextDVAEConfig
    from textdvae.recipe import TokenizerConfig
    from textdvae.tokenization import build_tokenizer

    tok = build_tokenizer(TokenizerConfig(kind="word"), ["the cat chased the fox .", "a dog sleeps ."])
    config = TextDVAEConfig(vocab_size=len(tok), embed_dim=8, hidden_dim=16, num_latents=3, num_categories=4,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            unk_token_id=tok.unk_token_id)
    out = tmp_path_factory.mktemp("model")
    TextDVAE(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def broken_copy(model_dir: Path, tmp_path: Path, damage) -> Path:
    import shutil
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    damage(copy / "model.safetensors")
    return copy


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated or corrupt"),
    (lambda p: p.write_bytes(b"\xff" * 64 + p.read_bytes()[64:]), "truncated or corrupt"),
    (lambda p: p.unlink(), "could not load model"),
], ids=["truncated", "garbage-header", "missing-weights"])
def test_broken_model_folder_is_a_clear_error(model_dir, tmp_path, capsys, damage, message):
    broken = broken_copy(model_dir, tmp_path, damage)
    err = user_error(capsys, "reconstruct", broken, "the cat chased the fox .")
    assert message in err and str(broken) in err


def test_missing_model_folder_for_reconstruct(tmp_path, capsys):
    err = user_error(capsys, "reconstruct", tmp_path / "no_such_model", "the cat")
    assert "not found" in err and "no_such_model" in err


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_empty_text_is_refused_and_a_very_long_one_truncated(model_dir, capsys, command):
    assert "text 1 is empty" in user_error(capsys, command, model_dir, "")
    assert "text 2 is empty" in user_error(capsys, command, model_dir, "the cat", "   ")
    long_text = " ".join(["the cat chased the fox ."] * 400)  # 2400 words, past any position limit
    capsys.readouterr()
    assert cli.main([command, str(model_dir), "--json", long_text]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and len(rows[0]["codes"]) == 3
