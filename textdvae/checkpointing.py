"""Checkpoints on disk: atomic folders, reading them back, and every process's random streams.

Owns the layout of ``output_dir/checkpoints/`` and nothing about training itself, so it can be read and tested on its
own; :class:`textdvae.training.Trainer` decides *when* to save and what the counters mean.

* ``step-XXXXXXX/`` holds :data:`CHECKPOINT_FILES`: the weights (safetensors), ``state.pt`` (optimizer, LR scheduler,
  every process's RNG states; loaded with ``weights_only=True``) and ``trainer.json`` (the counters).
* ``best/`` holds the weights and ``trainer.json`` (``step``, ``elbo``) of the best validation ELBO.
* A folder is written into ``.NAME.tmp-PID``, flushed to disk and renamed into place (:func:`replace_dir`), and the
  parent folder is flushed after the rename, so a folder that exists is complete even after a power cut;
  :func:`clean_checkpoint_dir` removes the leftovers of a killed run and finishes a rename a kill interrupted.
* A checkpoint that cannot be read is set aside as ``step-XXXXXXX.unreadable`` (:func:`set_aside`), so it is never
  picked again and never counted among the kept ones; pruning orders by step number, never by folder name.
* :class:`RunLock`: one run per output folder, an ``fcntl.flock`` on ``output_dir/.lock`` held for the whole run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILES = ("model.safetensors", "state.pt", "trainer.json")
COUNTER_KEYS = ("step", "batches_seen", "best_elbo", "nonfinite_steps", "nonfinite_run", "log_lines", "elapsed_s",
                "running")  # what trainer.json must hold for a checkpoint to be resumable


_STEP_FOLDER = re.compile(r"step-(\d+)")


class CheckpointUnreadable(Exception):
    """A checkpoint folder whose files are missing, truncated or corrupt."""


class RunLocked(RuntimeError):
    """Another process holds the output folder's lock; the message names it."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder's name (step-0000120 -> 120), None for any other name."""
    match = _STEP_FOLDER.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    """The checkpoint folders (step-N, complete by construction), by step number, newest first. Temporary and
    set-aside folders never: past 10**7 steps names stop sorting as numbers do."""
    found = [p for p in Path(ckpt_dir).glob("step-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = checkpoints_newest_first(ckpt_dir)
    return found[0] if found else None


def best_checkpoint(ckpt_dir: Path) -> Path | None:
    path = Path(ckpt_dir) / "best"
    return path if (path / "model.safetensors").is_file() else None


def recorded_best_elbo(ckpt_dir: Path) -> float | None:
    """The validation ELBO recorded in checkpoints/best, or None when there is none or it cannot be read."""
    best = best_checkpoint(ckpt_dir)
    if best is None:
        return None
    try:
        return json.loads((best / "trainer.json").read_text())["elbo"]
    except (OSError, ValueError, KeyError):
        return None


def write_checkpoint(folder: Path, weights: dict[str, torch.Tensor], counters: dict, state: dict | None = None) -> None:
    """Write ``folder`` atomically: model.safetensors, state.pt (when ``state`` is given) and trainer.json go into
    ``.NAME.tmp``, are flushed to disk, and the folder is renamed into place."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = temporary_name(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "model.safetensors")
    if state is not None:
        torch.save(state, tmp / "state.pt")
    (tmp / "trainer.json").write_text(json.dumps(counters))
    _fsync_dir_files(tmp)
    replace_dir(tmp, folder)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, optimizer/scheduler/RNG state, counters) of a checkpoint; CheckpointUnreadable says what is wrong."""
    path = Path(path)
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointUnreadable(f"{', '.join(missing)} missing")
    try:
        weights = load_weights(path / "model.safetensors")
    except Exception as err:  # safetensors' own error types for truncated or corrupt files
        raise CheckpointUnreadable(f"model.safetensors is truncated or corrupt: {err}") from None
    try:
        state = torch.load(path / "state.pt", weights_only=True)  # our own file; weights_only never runs code
        if not {"optimizer", "scheduler", "rng"} <= set(state):
            raise ValueError(f"keys {sorted(state)}")
    except Exception as err:
        raise CheckpointUnreadable(f"state.pt is truncated or corrupt: {err}") from None
    try:
        trainer = json.loads((path / "trainer.json").read_text())
        for key in COUNTER_KEYS:
            trainer[key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointUnreadable(f"trainer.json is truncated or corrupt: {err!r}") from None
    return weights, state, trainer


def prune_checkpoints(ckpt_dir: Path, keep: int, written: Path | None = None) -> None:
    """Delete all but the newest ``keep`` step folders, by step number (best/ and tokenizer/ are not step folders).
    ``written``, the checkpoint just saved, is never deleted, even when an older run left higher step numbers."""
    kept = checkpoints_newest_first(ckpt_dir)[:keep]
    for old in checkpoints_newest_first(ckpt_dir):
        if old not in kept and (written is None or old.resolve() != Path(written).resolve()):
            shutil.rmtree(old, ignore_errors=True)


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to ``NAME.unreadable`` (kept for inspection, never picked or pruned again)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.unreadable")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def temporary_name(target: Path) -> Path:
    """``.NAME.tmp-PID``: where a folder is written before it is renamed into place; unique to this process."""
    return Path(target).with_name(f".{Path(target).name}.tmp-{os.getpid()}")


def clean_checkpoint_dir(ckpt_dir: Path) -> None:
    """Remove what a killed run left half-done (.NAME.tmp*), and finish an interrupted replace_dir (.NAME.old).
    Call it only while holding the run's lock: another live run's temporary folders would go too."""
    for tmp in Path(ckpt_dir).glob(".*.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in Path(ckpt_dir).glob(".*.old"):
        target = old.with_name(old.name[1:-len(".old")])
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:  # killed between the two renames of replace_dir: the old folder is the complete one
            os.replace(old, target)


def rng_state() -> dict[str, Any]:
    """This process's random streams: torch CPU, CUDA (when present), python `random` and numpy's global one."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place: the old one is renamed away first, then the new one renamed in
    (clean_checkpoint_dir repairs a kill between the two renames)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)  # the renames themselves reach the disk, not only the files
    shutil.rmtree(old, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the names created, renamed or removed in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(folder: Path) -> None:
    """Flush a folder's files to disk before it is renamed into place, so a power cut cannot leave the name
    pointing at empty files."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def truncate_lines(path: Path, n: int) -> None:
    """Keep the first n lines of a text file (atomically); a missing file stays missing."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) <= n and all(line.endswith("\n") for line in lines):
        return
    write_text_atomic(path, "".join(line if line.endswith("\n") else line + "\n" for line in lines[:n]))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that a kill or power cut leaves the old file or the new one, never a mix."""
    path = Path(path)
    tmp = temporary_name(path)
    with tmp.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


class RunLock:
    """One run per output folder: an exclusive ``fcntl.flock`` on ``output_dir/.lock``, which holds the holder's
    pid and host. The kernel drops the lock when the process dies, so a killed run never leaves a stale one."""

    _held: dict[Path, "RunLock"] = {}  # folder -> the lock this process holds (a second Trainer in it reuses it)

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._file = None

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        import fcntl

        key = Path(folder).resolve()
        if key in cls._held:
            return cls._held[key]
        lock = cls(folder)
        lock._file = open(lock.path, "a+")
        try:
            fcntl.flock(lock._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock._file.seek(0)
            holder = lock._file.read().strip() or "another process"
            lock._file.close()
            raise RunLocked(f"{folder} is in use by {holder} (its lock file {lock.path} is held); wait for that run "
                            "to end or stop it, or choose another output_dir") from None
        lock._file.seek(0)
        lock._file.truncate()
        lock._file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        lock._file.flush()
        cls._held[key] = lock
        return lock

    def release(self) -> None:
        import fcntl

        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        self._held.pop(self.path.parent.resolve(), None)
