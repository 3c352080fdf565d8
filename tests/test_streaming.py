"""data.streaming: the training split read as a stream, windows shuffled and length-bucketed, positions resumed."""

import json
import signal
from pathlib import Path

import datasets
import pytest

from textdvae import recipe as recipe_lib
from textdvae.checkpointing import latest_checkpoint
from textdvae.data import TrainStream
from textdvae.recipe import DataConfig
from textdvae.tokenization import build_tokenizer
from conftest import SCHEDULED_KL, textdvae_here
from test_faults import RECIPE, assert_bitwise_equal, start, training_log, wait_for, weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """250 training sentences (several epochs in a short run) and 40 for validation, as JSON lines."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = (ROOT / "data" / "train.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(lines[:250]) + "\n")
    (folder / "valid.jsonl").write_text("\n".join(lines[250:290]) + "\n")
    return folder


def stream_run(corpus):
    return [*SCHEDULED_KL, "model.hidden_dim=32", "model.embed_dim=16", "model.num_latents=4", "model.num_categories=4",
            "train.batch_size=32", "train.iw_samples=4", "model.dropout=0.1", "train.word_dropout=0.1",
            "train.max_steps=40", "train.save_every=7", "train.eval_every=10", "train.log_every=5",
            "data.streaming=true", "data.shuffle_buffer=70", f"data.data_files.train={corpus / 'train.jsonl'}",
            f"data.data_files.validation={corpus / 'valid.jsonl'}", f"data.data_files.test={corpus / 'valid.jsonl'}"]


def open_stream(corpus):
    return lambda: datasets.load_dataset("json", data_files={"train": str(corpus / "train.jsonl")},
                                         streaming=True)["train"]


def make_stream(corpus, rank=0, world=1):
    texts = [json.loads(line)["text"] for line in (corpus / "train.jsonl").read_text().splitlines()]
    tokenizer = build_tokenizer(recipe_lib.TokenizerConfig(kind="word"), texts)
    return TrainStream(open_stream(corpus), DataConfig(max_length=16, shuffle_buffer=70), tokenizer, 16, seed=3,
                       rank=rank, world=world), tokenizer


def epochs(stream, n_batches):
    """The next n batches, each with the epoch it belongs to."""
    out = []
    for _ in range(n_batches):
        batch = stream.next_batch()
        out.append((stream.epoch, [tuple(ids) for ids in batch]))
    return out


def sentences(batches, epoch):
    return sorted(ids for e, batch in batches if e == epoch for ids in batch)


def test_stream_batches_cover_each_epoch_and_resume_from_a_position(corpus):
    stream, _ = make_stream(corpus)
    batches = epochs(stream, 45)  # 250 sentences in windows of 70 (70, 70, 70, 40): 18 batches of <= 16 an epoch
    assert len(sentences(batches, 0)) == 250 and sentences(batches, 1) == sentences(batches, 0)
    assert [b for e, b in batches if e == 1] != [b for e, b in batches if e == 0]  # another epoch, another order
    assert max(len(b) for _, b in batches) == 16
    for cut in (1, 5, 15, 18, 19, 30):  # mid-window, at a window's end, at an epoch's end, in the next epoch
        first, _ = make_stream(corpus)
        epochs(first, cut)
        position = json.loads(json.dumps(first.position()))  # what the checkpoint keeps
        resumed, _ = make_stream(corpus)
        resumed.restore(position)
        assert epochs(resumed, 45 - cut) == batches[cut:], f"resumed after {cut} batches"


def test_each_process_reads_its_own_part_of_the_stream(corpus):
    whole, _ = make_stream(corpus)
    parts = [make_stream(corpus, rank=rank, world=2)[0] for rank in (0, 1)]
    first_epochs = [sentences(epochs(part, 15), 0) for part in parts]
    assert len(first_epochs[0]) == len(first_epochs[1]) == 125
    assert sorted(first_epochs[0] + first_epochs[1]) == sentences(epochs(whole, 20), 0)


def test_streaming_needs_max_steps():
    with pytest.raises(recipe_lib.RecipeError, match="train.max_steps"):
        recipe_lib.load(ROOT / RECIPE, ["data.streaming=true", "train.max_steps=null"])


def test_streamed_run_killed_and_resumed_is_bitwise_identical(corpus, tmp_path, capsys):
    reference = tmp_path / "reference"
    textdvae_here("train", RECIPE, f"output_dir={reference}", *stream_run(corpus), cache=tmp_path / "cache")
    out = tmp_path / "killed"
    proc = start("train", RECIPE, f"output_dir={out}", *stream_run(corpus))
    wait_for(lambda: latest_checkpoint(out / "checkpoints") is not None, proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "final").exists()
    killed_at = latest_checkpoint(out / "checkpoints")
    saved = json.loads((killed_at / "trainer.json").read_text())
    assert saved["stream_positions"][0]["state"] is not None
    capsys.readouterr()
    textdvae_here("train", RECIPE, f"output_dir={out}", *stream_run(corpus), "train.resume=true", cache=tmp_path / "cache")
    assert f"resumed from {killed_at}" in capsys.readouterr().out
    assert_bitwise_equal(weights(out), weights(reference))
    assert training_log(out) == training_log(reference)
    data = [json.loads((d / "metrics.json").read_text())["data"] for d in (out, reference)]
    assert data[0] == data[1] and data[0]["train_stream"]["n_sentences"] > 250  # counts resumed; epochs went round


def _torchrun(corpus, out, *extra) -> list[str]:
    import sys

    from test_distributed import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "textdvae", "train", RECIPE, f"output_dir={out}", *stream_run(corpus), "train.max_steps=24",
            "train.eval_batch_size=21", *extra]


def _torchrun_env() -> dict:
    import os

    # ACCELERATE_USE_CPU=1: 2 processes on gloo even where a GPU is present; one thread each on this small machine
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


def _run_torchrun(corpus, out, *extra):
    import subprocess

    proc = subprocess.run(_torchrun(corpus, out, *extra), cwd=ROOT, env=_torchrun_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def two_process_run(corpus, tmp_path_factory):
    """A categorical run under torchrun, 2 processes on gloo, each reading its half of the stream: the uninterrupted
    run the killed one must reproduce, and the multi-process checks of tests/test_distributed.py's categorical side."""
    out = tmp_path_factory.mktemp("two") / "reference"
    return out, _run_torchrun(corpus, out)


def test_torchrun_two_processes_categorical(two_process_run, tmp_path, monkeypatch):
    """Both processes took part and their weights stayed equal; validation and test metrics count every sentence once
    although the processes hold different numbers of rows (40 sentences in batches of 21: 11 + 10, then 10 + 9)."""
    import torch

    from textdvae import cli

    out, proc = two_process_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_processes"] == 2 and m["replicas_in_sync"] is True and m["n_sentences"] == 40
    # what does not depend on the codes each process sampled (exact likelihood, MI and AU of the posteriors, greedy
    # reconstructions) is what one process computes on the same final model
    monkeypatch.chdir(ROOT)
    single = tmp_path / "single.json"
    assert cli.main(["eval", str(out / "final"), "--recipe", str(out / "config.yaml"), "--split", "test",
                     "--batch-size", "21", "--iw-samples", "4", "--json", str(single), "--plot", ""]) == 0
    one = json.loads(single.read_text())
    for key in ("nll_exact", "mi", "au", "code_perplexity", "rec_token_acc", "rec_bleu"):
        assert m[key] == pytest.approx(one[key], rel=1e-5, abs=1e-5), key  # float sums in another order
    assert abs(m["elbo"] - one["elbo"]) < 0.05 * abs(one["elbo"])  # one sampled code per sentence: close, not equal
    # code usage gathered over both processes' posteriors: 4 latents x 4 categories, each row a distribution
    assert len(m["code_usage"]) == 4 and all(sum(row) == pytest.approx(1.0) for row in m["code_usage"])
    # logging and the final report happen once, in the main process
    assert [r["step"] for r in training_log(out) if "loss" in r] == [5, 10, 15, 20, 24]
    assert (proc.stdout + proc.stderr).count("metrics on test") == 1
    # each process's random streams are in the checkpoint, so a resumed 2-process run goes on as it would have
    state = torch.load(out / "checkpoints" / "step-0000021" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_two_processes_streamed_killed_and_resumed_is_bitwise_identical(corpus, two_process_run, tmp_path):
    """torchrun, 2 processes on gloo, each reading its half of the stream: SIGKILL to the whole launch, resume."""
    import os
    import subprocess

    reference, _ = two_process_run
    out = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(corpus, out), cwd=ROOT, env=_torchrun_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: latest_checkpoint(out / "checkpoints") is not None, proc)
    # the launcher and both workers (torchrun starts them in their own process groups), without cleanup
    tree = [proc.pid] + [int(pid) for pid in _descendants(proc.pid)]
    for pid in reversed(tree):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists()
    killed_at = latest_checkpoint(out / "checkpoints")
    saved = json.loads((killed_at / "trainer.json").read_text())
    assert len(saved["stream_positions"]) == 2 and saved["stream_positions"][0] != saved["stream_positions"][1]
    resumed = _run_torchrun(corpus, out, "train.resume=true")
    assert f"resumed from {killed_at}" in resumed.stdout + resumed.stderr
    assert_bitwise_equal(weights(out), weights(reference))
    # every record, the training records' running means included: each process restores its own partial sums
    # (trainer.json "running_per_process"), which the log line averages over processes
    assert training_log(out) == training_log(reference)
    assert any("split" in r for r in training_log(out))


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children before grandchildren (read from /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]
