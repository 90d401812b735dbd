"""An append-only JSONL cache of LLM answers, so re-running (or adding documents) only asks, and pays, for what is new.

Each answer is appended and flushed as it arrives: a run killed after an hour keeps the hour's answers. The raw
answer text is stored, not the filtered questions, so changing a filter never re-asks the LLM.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from ragtune.errors import UserError
from ragtune.io import dumps


class CacheError(UserError):
    """A cache line other than the last is broken: something else wrote the file."""


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(chunk_text: str, prompt_sha: str, model: str, params: dict[str, Any]) -> str:
    """sha256 of everything that changes the answer: the chunk text, the prompt, the model and the sampling params.

    The chunk's text (not its id) is hashed, so re-chunking that keeps a chunk's text keeps its answer, and an
    edited chunk is asked again.
    """
    payload = dumps({"chunk": text_sha(chunk_text), "prompt": prompt_sha, "model": model, "params": params})
    return text_sha(payload)


class AnswerCache:
    """``{key: record}`` loaded from ``path`` at start, appended to as answers arrive; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped_partial_line = False
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        """Read every complete line; a truncated last line (a kill mid-write) is cut off so the next append is clean.

        Without the cut, the next answer would be appended to the broken line's end and both would be lost.
        """
        data = self.path.read_bytes()
        body, newline, tail = data.rpartition(b"\n")
        for number, raw in enumerate(body.split(b"\n") if newline else [], start=1):
            if raw.strip():
                record = self._parse(raw)
                if record is None:
                    raise CacheError(
                        f"{self.path}:{number}: broken cache line; only a last line cut by a kill is expected. "
                        f"Delete {self.path} to re-ask every answer, or remove that line"
                    )
                self.records[record["key"]] = record
        if not tail.strip():
            return
        record = self._parse(tail)
        with self.path.open("r+b") as handle:
            if record is None:  # cut mid-write: forget it, it is asked again
                self.dropped_partial_line = True
                handle.truncate(len(body) + len(newline))
            else:  # complete but for its newline: keep it, and end the line so the next append starts a new one
                self.records[record["key"]] = record
                handle.seek(0, 2)
                handle.write(b"\n")

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None
        return record if isinstance(record, dict) and "key" in record else None

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def put(self, record: dict[str, Any]) -> None:
        """Append one answer record (it carries its ``key``) and flush, so a kill right after loses nothing."""
        line = dumps(record) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
            self.records[record["key"]] = record
