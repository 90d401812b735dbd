"""The chunks the pairs stage reads: those of the documents its questions name, not 1.8 million chunk texts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.io import iter_jsonl


@dataclass
class ChunkSlice:
    """Some chunks of a corpus in corpus order, with their positions in it, and a way to stream every chunk's text.

    Aligning a question to a passage needs the chunks of its relevant documents and, for BM25's idf and mean length,
    one pass over the rest; holding every chunk record (7 GB at a million chunks) needs neither.
    """

    records: list[dict[str, Any]]  # the kept chunks, in corpus order
    positions: list[int]  # their positions in the corpus
    n_chunks: int  # chunks in the whole corpus
    texts: Callable[[], Iterable[str]]  # every chunk's text in corpus order, read again at each call

    @classmethod
    def whole(cls, chunks: Sequence[dict[str, Any]]) -> ChunkSlice:
        """Every chunk of an in-memory list (the self-supervised pairs need them all)."""
        return cls(list(chunks), list(range(len(chunks))), len(chunks), lambda: (c["text"] for c in chunks))

    @classmethod
    def read(cls, path: Path, keep: Callable[[dict[str, Any]], bool]) -> ChunkSlice:
        """The chunks of JSONL file ``path`` for which ``keep`` is true, in one streamed pass."""
        records, positions, n = [], [], 0
        for n, (_, chunk) in enumerate(iter_jsonl(path), start=1):
            if keep(chunk):
                records.append(chunk)
                positions.append(n - 1)
        return cls(records, positions, n, lambda: _texts(path))

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {c["chunk_id"]: c for c in self.records}


def _texts(path: Path) -> Iterator[str]:
    for _, chunk in iter_jsonl(path):
        yield chunk["text"]
