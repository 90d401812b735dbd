"""Which model a run used, exactly: a fingerprint of what a folder computes, and where it came from.

A Hub id names a moving target (its main branch), so metrics and model cards record the commit the snapshot came
from (``model.revision`` pins it for the next run); a local folder or the offline build has no commit and is named
by the sha256 of its weights, tokenizer and config instead.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from ragtune.models.errors import ModelResolutionError
from ragtune.models.resolve import BUILD_MARKER, resolve_model

# Files that determine what a model computes; READMEs, lock files and hidden dirs are deliberately left out
# so that re-saving a model card does not invalidate every embedding cache keyed on the fingerprint.
_FINGERPRINT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken"}
_FINGERPRINT_SKIP = {BUILD_MARKER, "README.md"}


def snapshot_commit(path: str | Path) -> str | None:
    """``.../models--org--name/snapshots/<commit>`` → ``<commit>``: the HF cache names each snapshot by its commit."""
    path = Path(path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.name
    return None


def model_source(name: str, path: str | Path, *, revision: str | None = None) -> dict[str, Any]:
    """Where ``name`` (resolved to ``path``) came from, for metrics and model cards.

    ``commit`` is the Hub commit of an HF snapshot, ``"offline-build"`` for the offline builder's folder, or
    ``"local"`` for any other folder; ``fingerprint`` (:func:`model_fingerprint`) tells two local folders apart.
    ``revision`` is what ``model.revision`` asked for (None: the Hub's main branch).
    """
    commit = snapshot_commit(path)
    if commit is None:
        commit = "offline-build" if (Path(path) / BUILD_MARKER).exists() else "local"
    revision = str(revision).strip() if revision is not None else ""
    return {"name": name, "revision": revision or None, "commit": commit, "fingerprint": model_fingerprint(path)}


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weight, tokenizer and config files of a model folder (or a name, resolved first).

    Used as a cache key for embeddings/indexes: two folders with the same weights and tokenizer get the same id
    wherever they live, and any change to what the model computes changes it.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        root = Path(resolve_model(str(path)))
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in _FINGERPRINT_SUFFIXES
        and p.name not in _FINGERPRINT_SKIP
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ModelResolutionError(f"{root}: no weight/tokenizer/config files to fingerprint.")
    digest = hashlib.sha256()
    for file in files:
        rel = file.relative_to(root).as_posix().encode("utf-8")
        digest.update(struct.pack("<Q", len(rel)) + rel)
        digest.update(struct.pack("<Q", file.stat().st_size))
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
