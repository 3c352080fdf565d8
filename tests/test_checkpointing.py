"""The checkpoint library on its own: atomic folders, reading them back, repairing what a kill left, RNG streams."""

import json
import os
import random

import numpy as np
import pytest
import torch

from textdvae.checkpointing import (CHECKPOINT_FILES, CheckpointUnreadable, best_checkpoint, checkpoint_name,
                                    checkpoints_newest_first, clean_checkpoint_dir, latest_checkpoint,
                                    prune_checkpoints, read_checkpoint, recorded_best_elbo, replace_dir, rng_state,
                                    set_rng_state, truncate_lines, write_checkpoint, write_json_atomic)

COUNTERS = {"step": 7, "batches_seen": 9, "best_elbo": -12.5, "nonfinite_steps": 2, "nonfinite_run": 0,
            "log_lines": 3, "elapsed_s": 1.25, "running": {"loss": 4.0, "n": 2}}


def draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def written(folder, step=7):
    """A checkpoint as the Trainer writes one: weights, optimizer/scheduler/RNG state, counters."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": step}, "rng": [rng_state()]}
    write_checkpoint(folder, model.state_dict(), {**COUNTERS, "step": step}, state)
    return model, optimizer


def test_write_read_round_trip_restores_weights_state_counters_and_random_streams(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    folder = tmp_path / checkpoint_name(7)
    model, optimizer = written(folder)
    after_save = draws()  # what the run drew next
    assert folder.name == "step-0000007" and sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)
    assert not list(tmp_path.glob(".*"))  # the temporary folder was renamed into place

    weights, state, counters = read_checkpoint(folder)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    saved_exp_avg = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], saved_exp_avg)
    assert state["scheduler"] == {"last_epoch": 7} and counters == COUNTERS
    set_rng_state(state["rng"][0])  # torch, python and numpy continue exactly where the save left them
    assert draws() == after_save


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:40]),
     "model.safetensors is truncated or corrupt"),
    (lambda f: (f / "state.pt").write_bytes((f / "state.pt").read_bytes()[:100]), "state.pt is truncated or corrupt"),
    (lambda f: (f / "trainer.json").write_text('{"step": 7, "batches_'), "trainer.json is truncated or corrupt"),
    (lambda f: (f / "trainer.json").write_text(json.dumps({"step": 7})), "trainer.json is truncated or corrupt"),
    (lambda f: (f / "state.pt").unlink(), "state.pt missing"),
], ids=["truncated-weights", "truncated-state", "truncated-json", "counters-missing", "file-missing"])
def test_a_damaged_checkpoint_is_unreadable_and_says_which_file(tmp_path, damage, message):
    folder = tmp_path / "step-0000007"
    written(folder)
    damage(folder)
    with pytest.raises(CheckpointUnreadable, match=message):
        read_checkpoint(folder)


def test_clean_checkpoint_dir_repairs_a_rename_interrupted_by_a_kill(tmp_path):
    ckpt = tmp_path / "checkpoints"
    write_checkpoint(ckpt / "best", {"w": torch.zeros(2)}, {"step": 5, "elbo": -20.0})
    # a newer best is ready in .best.tmp; replace_dir moved the old one to .best.old, and the kill came before the
    # second rename: no best/ at all, a complete .best.old, a .best.tmp that may be half-written
    write_checkpoint(tmp_path / "newer", {"w": torch.ones(2)}, {"step": 10, "elbo": -15.0})
    os.replace(tmp_path / "newer", ckpt / ".best.tmp")
    os.replace(ckpt / "best", ckpt / ".best.old")
    (ckpt / ".step-0000010.tmp").mkdir()  # a checkpoint the kill left half-written
    assert best_checkpoint(ckpt) is None

    clean_checkpoint_dir(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["best"]
    assert best_checkpoint(ckpt) == ckpt / "best" and recorded_best_elbo(ckpt) == -20.0  # the old, complete one

    # killed after the second rename: both exist, the new one wins and the leftover goes
    (ckpt / ".best.old").mkdir()
    clean_checkpoint_dir(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["best"] and recorded_best_elbo(ckpt) == -20.0


def test_replace_dir_swaps_a_folder_whole(tmp_path):
    target, tmp = tmp_path / "final", tmp_path / ".final.tmp"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    replace_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_checkpoints_are_listed_newest_first_and_pruned_to_the_newest(tmp_path):
    for step in (5, 20, 10, 15):
        (tmp_path / checkpoint_name(step)).mkdir()
    (tmp_path / ".step-0000025.tmp").mkdir()  # never a checkpoint
    (tmp_path / "best").mkdir()
    (tmp_path / "tokenizer").mkdir()
    assert [p.name for p in checkpoints_newest_first(tmp_path)] == [
        "step-0000020", "step-0000015", "step-0000010", "step-0000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000020"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step-0000025.tmp", "best", "step-0000015", "step-0000020",
                                                          "tokenizer"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_truncate_lines_keeps_the_first_n_and_ends_each_with_a_newline(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("a\nb\nc\nd\n")
    truncate_lines(log, 2)
    assert log.read_text() == "a\nb\n"
    log.write_text("a\nb\nhalf a li")  # the last line of a killed writer
    truncate_lines(log, 5)
    assert log.read_text() == "a\nb\nhalf a li\n"
    truncate_lines(log, 0)
    assert log.read_text() == ""
    truncate_lines(tmp_path / "none.jsonl", 3)
    assert not (tmp_path / "none.jsonl").exists()


def test_write_json_atomic_replaces_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("{broken")
    write_json_atomic(path, {"elbo": -1.5})
    assert json.loads(path.read_text()) == {"elbo": -1.5} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
