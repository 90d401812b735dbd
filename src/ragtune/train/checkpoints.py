"""Resuming an interrupted run, and only that: checkpoints keyed by a fingerprint of params, data and code.

DVC keeps the checkpoint folder between runs (``persist: true``). A checkpoint is resumed only when the run that
wrote it had the same fingerprint, so changing the learning rate, the data or the code starts fresh instead of
continuing a stale trajectory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FINGERPRINT_FILE = "ragtune_fingerprint.txt"


def prepare_checkpoint_dir(path: str | Path, fingerprint: str, *, owner: bool = True) -> str | None:
    """Return the checkpoint to resume from, or None; wipe checkpoints made with different params or data.

    DVC keeps this folder between runs (``persist: true``). A checkpoint is only resumed if it was written for
    the same training fingerprint, so changing e.g. the learning rate starts fresh instead of continuing a stale
    trajectory.
    """
    path = Path(path)
    marker = path / FINGERPRINT_FILE
    has_checkpoints = path.exists() and any(path.glob("checkpoint-*"))
    stale = has_checkpoints and (not marker.exists() or marker.read_text().strip() != fingerprint)
    if not owner:  # other DDP ranks only read; rank 0 owns the folder
        return None if stale else _last_checkpoint(path)
    if stale:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")
    return _last_checkpoint(path)


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
    if not path.exists():
        return None
    ckpts = sorted(
        (p for p in path.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(ckpts[-1]) if ckpts else None


def code_hashes(module: str | Path) -> list[str]:
    """SHA-256 of ``module`` and of every ragtune module it runs, transitively: part of the resume fingerprint.

    A code change must not resume a checkpoint written by other code. The list is the one dvc.yaml's deps must
    cover (``ragtune.deps.stage_modules``, checked by tests/test_dvc_deps.py), so a change that re-runs the stage
    also starts its training fresh.
    """
    from ragtune.deps import stage_modules
    from ragtune.io import sha256_file

    return [sha256_file(module), *(sha256_file(path) for path in stage_modules(module))]
