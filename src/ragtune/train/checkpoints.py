"""Resuming an interrupted run, and only that: checkpoints keyed by a fingerprint of params, data and code.

DVC keeps the checkpoint folder between runs (``persist: true``). A checkpoint is resumed only when the run that
wrote it had the same fingerprint, so changing the learning rate, the data or the code starts fresh instead of
continuing a stale trajectory.

A run killed while saving leaves a half-written checkpoint: transformers writes ``checkpoint-N/`` in place, weights
first and ``trainer_state.json`` last (older versions staged it as ``tmp-checkpoint-N``). Such a folder cannot be
resumed, and resuming it would crash the trainer on a truncated ``trainer_state.json``; it is reported, removed,
and the run resumes from the last complete checkpoint instead.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.console import warn

FINGERPRINT_FILE = "ragtune_fingerprint.txt"
TRAINER_STATE = "trainer_state.json"  # transformers writes it last: its presence makes a checkpoint complete
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: the checkpoint to resume (None: step 0), and the incomplete ones found and removed."""

    checkpoint: str | None = None
    incomplete: list[str] = field(default_factory=list)  # folder names, e.g. ["checkpoint-40"]

    @property
    def step(self) -> int:
        """The optimizer step the resumed checkpoint was saved at (0 when nothing is resumed)."""
        return int(self.checkpoint.rsplit("-", 1)[-1]) if self.checkpoint else 0


def prepare_checkpoint_dir(path: str | Path, fingerprint: str, *, owner: bool = True) -> ResumePoint:
    """Return where to resume; wipe checkpoints made with different params or data, and drop incomplete ones.

    DVC keeps this folder between runs (``persist: true``). A checkpoint is only resumed if it was written for
    the same training fingerprint, so changing e.g. the learning rate starts fresh instead of continuing a stale
    trajectory. Checkpoints a killed run left half-written are named in a warning and removed (only the owner,
    rank 0, removes; other DDP ranks skip them too), so the run goes on from the last complete one.
    """
    path = Path(path)
    marker = path / FINGERPRINT_FILE
    has_checkpoints = path.exists() and any(_is_checkpoint_like(p) for p in path.iterdir())
    stale = has_checkpoints and (not marker.exists() or marker.read_text().strip() != fingerprint)
    if not owner:  # other DDP ranks only read; rank 0 owns the folder
        return ResumePoint(None if stale else _last_checkpoint(path))
    if stale:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")
    incomplete = incomplete_checkpoints(path)
    if incomplete:
        resume = _last_checkpoint(path)
        warn(
            f"{path}: {len(incomplete)} incomplete checkpoint(s) left by an interrupted run, removed: "
            + "; ".join(f"{name} ({why})" for name, why in incomplete.items())
            + (f". Resuming from {Path(resume).name}, the last complete one" if resume else ". Training from step 0")
        )
        for name in incomplete:
            entry = path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    return ResumePoint(_last_checkpoint(path), sorted(incomplete))


def incomplete_checkpoints(path: str | Path) -> dict[str, str]:
    """Checkpoint-like entries of ``path`` that cannot be resumed, by name, with the reason.

    ``checkpoint-N`` without a readable ``trainer_state.json`` (killed while saving), a staging folder
    (``tmp-checkpoint-N``), a temp file (``.tmp*``) and a ``checkpoint-*`` that is not ``checkpoint-<step>``.
    """
    path = Path(path)
    found: dict[str, str] = {}
    for entry in sorted(path.iterdir()) if path.is_dir() else ():
        if not _is_checkpoint_like(entry):
            continue
        if not _CHECKPOINT.match(entry.name) or not entry.is_dir():
            found[entry.name] = "an unfinished save's temporary entry"
        elif (why := _state_problem(entry / TRAINER_STATE)) is not None:
            found[entry.name] = why
    return found


def _is_checkpoint_like(entry: Path) -> bool:
    return entry.name.startswith(("checkpoint-", "tmp-checkpoint-", ".tmp"))


def _state_problem(state: Path) -> str | None:
    """Why ``trainer_state.json`` does not make its checkpoint resumable, or None if it does."""
    if not state.is_file():
        return f"no {TRAINER_STATE}"
    try:
        ok = isinstance(json.loads(state.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{TRAINER_STATE} unreadable: {type(exc).__name__}"
    return None if ok else f"{TRAINER_STATE} is not a JSON object"


def clear_checkpoints(path: str | Path) -> None:
    """Empty the checkpoint folder after a finished run.

    Checkpoints exist to resume an *interrupted* run; a later forced re-run must train again rather than "resume"
    at the final step and change nothing. Emptying the folder completely (marker and evaluator CSVs too) also
    leaves DVC the same empty ``persist`` output after every finished run, so switching experiments does not make
    the stage look modified.
    """
    path = Path(path)
    for child in path.iterdir() if path.exists() else ():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def untrained_outputs(live_dir: str | Path, ckpt_dir: str | Path) -> None:
    """Leave a stage's curve and checkpoint folders empty after a run that trained nothing.

    DVC requires every declared output to exist after a stage runs, and curves left from an earlier training run
    would be read as this run's.
    """
    shutil.rmtree(live_dir, ignore_errors=True)
    Path(live_dir, "plots", "metrics").mkdir(parents=True, exist_ok=True)
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    clear_checkpoints(ckpt_dir)


def _last_checkpoint(path: Path) -> str | None:
    """The complete ``checkpoint-<step>`` with the highest step, or None."""
    if not path.exists():
        return None
    steps = {
        int(m.group(1)): p
        for p in path.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and p.is_dir() and _state_problem(p / TRAINER_STATE) is None
    }
    return str(steps[max(steps)]) if steps else None


def code_hashes(module: str | Path) -> list[str]:
    """SHA-256 of ``module`` and of every ragtune module it runs, transitively: part of the resume fingerprint.

    A code change must not resume a checkpoint written by other code. The list is the one dvc.yaml's deps must
    cover (``ragtune.deps.stage_modules``, checked by tests/test_dvc_deps.py), so a change that re-runs the stage
    also starts its training fresh.
    """
    from ragtune.deps import stage_modules
    from ragtune.io import sha256_file

    return [sha256_file(module), *(sha256_file(path) for path in stage_modules(module))]
