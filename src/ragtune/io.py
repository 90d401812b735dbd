"""Deterministic JSON / JSON Lines I/O for the files passed between stages.

Every interchange file is written with sorted keys and ``ensure_ascii=False`` so that two runs over the same
inputs give byte-identical outputs (DVC then sees "unchanged" and downstream stages are skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from ragtune.errors import UserError


class JsonlError(UserError, ValueError):
    """A JSONL line could not be parsed; the message names ``file:line`` and the fix."""


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (tmp file + rename, :class:`JsonlSink`) and return how many were written."""
    with JsonlSink(path) as out:
        for rec in records:
            out.write(rec)
    return out.count


class JsonlSink:
    """A JSONL file written record by record and published only on success: ``with JsonlSink(path) as out:
    out.write(rec)`` writes ``path.tmp`` and renames it over ``path`` when the block ends without an exception; an
    exception (a check that fails after the last record) removes the tmp file and leaves ``path`` as it was.
    Streaming stages write through it, so memory holds one record, not the corpus."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.count = 0

    def __enter__(self) -> JsonlSink:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.tmp.open("w", encoding="utf-8", newline="\n")
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(dumps(record))

    def write_line(self, line: str) -> None:
        """Write a record already serialized by :func:`dumps` (by a worker process, say), without its newline."""
        self._fh.write(line)
        self._fh.write("\n")
        self.count += 1

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def iter_jsonl(path: str | Path, only: Container[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; blank lines are skipped, malformed lines raise :class:`JsonlError`.

    ``only``: the record numbers (0-based, blank lines not counted) to parse and yield; the others are skipped
    unparsed, which makes fetching a few records of a million-line file a fast read.
    """
    path = Path(path)
    with path.open(encoding="utf-8-sig") as fh:
        number = -1
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            number += 1
            if only is not None and number not in only:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}). "
                    "Each line must be one complete JSON object."
                ) from exc
            if not isinstance(rec, dict):
                raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}.")
            yield lineno, rec


def count_records(path: str | Path) -> int:
    """The records :func:`iter_jsonl` yields from ``path`` (its non-blank lines), counted without parsing them."""
    with Path(path).open(encoding="utf-8-sig") as fh:
        return sum(1 for line in fh if line.strip())


def count_lines(path: str | Path) -> int:
    """Newlines in a file, read in 1 MiB blocks: a progress bar's total for a streamed JSONL file."""
    n = 0
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
    return n


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [rec for _, rec in iter_jsonl(path)]


class EmptyInputError(UserError, ValueError):
    """A stage's input holds no records: running on it would write empty outputs and pass the problem on."""


def require_records(path: str | Path, fix: str) -> None:
    """Refuse a JSONL file with no records, reading only up to its first one; ``fix`` says which stage or params
    make them."""
    if next(iter_jsonl(path), None) is None:
        raise EmptyInputError(f"{path}: no records, so there is nothing to work on. {fix}")


def read_nonempty_jsonl(path: str | Path, fix: str) -> list[dict[str, Any]]:
    """:func:`read_jsonl`, refusing a file with no records (:func:`require_records`)."""
    records = read_jsonl(path)
    if not records:
        require_records(path, fix)
    return records


def write_json(path: str | Path, obj: Any) -> None:
    """Write a metrics/report JSON file (indented, sorted keys, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
