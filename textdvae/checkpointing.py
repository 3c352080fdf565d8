"""Checkpoints on disk: atomic folders, reading them back, and every process's random streams.

Owns the layout of ``output_dir/checkpoints/`` and nothing about training itself, so it can be read and tested on its
own; :class:`textdvae.training.Trainer` decides *when* to save and what the counters mean.

* ``step-XXXXXXX/`` holds :data:`CHECKPOINT_FILES`: the weights (safetensors), ``state.pt`` (optimizer, LR scheduler,
  every process's RNG states; loaded with ``weights_only=True``) and ``trainer.json`` (the counters).
* ``best/`` holds the weights and ``trainer.json`` (``step``, ``elbo``) of the best validation ELBO.
* A folder is written into ``.NAME.tmp``, flushed to disk and renamed into place (:func:`replace_dir`), so a folder
  that exists is complete; :func:`clean_checkpoint_dir` removes the leftovers of a killed run and finishes a rename a
  kill interrupted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILES = ("model.safetensors", "state.pt", "trainer.json")
COUNTER_KEYS = ("step", "batches_seen", "best_elbo", "nonfinite_steps", "nonfinite_run", "log_lines", "elapsed_s",
                "running")  # what trainer.json must hold for a checkpoint to be resumable


class CheckpointUnreadable(Exception):
    """A checkpoint folder whose files are missing, truncated or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    """The checkpoint folders (step-XXXXXXX, complete by construction), newest first; temporary folders never."""
    return sorted((p for p in Path(ckpt_dir).glob("step-*") if p.is_dir()), reverse=True)


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
    tmp = folder.with_name(f".{folder.name}.tmp")
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


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step-XXXXXXX folders (best/ and tokenizer/ are not step folders)."""
    for old in sorted(Path(ckpt_dir).glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def clean_checkpoint_dir(ckpt_dir: Path) -> None:
    """Remove what a killed run left half-done (.NAME.tmp), and finish an interrupted replace_dir (.NAME.old)."""
    for tmp in Path(ckpt_dir).glob(".*.tmp"):
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
    shutil.rmtree(old, ignore_errors=True)


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines[:n]))
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
