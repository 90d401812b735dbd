"""Re-indexing a vector store: every chunk with the fine-tuned embedder's vector, in a file the store loads.

After ``train_embedder`` produces a new model (new params, new data, or a base model of another dimension), every
vector an application's store holds belongs to the old model's space: queries embedded by the new model would be
compared with them without any error, only poor results. The index stage has already embedded the corpus with the
new model (``models/index``), so ``ragtune reindex --out vectors.parquet`` writes those vectors with what a store
keeps beside them (chunk id, document id, title, section, text, metadata, access level), and a manifest next to
the file: the embedder's fingerprint and dimension, its prompts, the row count. An application can compare that
fingerprint with the one ``ragtune serve`` reports (``GET /v1/models``) before swapping collections.

``--chunks FILE`` embeds other chunks instead (a store with its own chunking): a JSONL file with ``chunk_id`` and
``text`` per line (other fields are carried through), embedded with the passage prompt the index used, so the
vectors match what ``/v1/embeddings`` returns for ``input_type: passage``.

Both ends check the model: the index's vectors are exported only when the index's recorded fingerprint matches
``models/embedder`` (:func:`ragtune.search.check_index_embedder`). Output is written in batches (the vectors are
memory-mapped), so a corpus of millions of chunks needs memory for one batch, not the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import UserError
from ragtune.io import iter_jsonl, write_json
from ragtune.search import SearchSetupError, check_index_embedder

FORMATS = ("parquet", "jsonl")
BATCH = 8192  # rows per write: bounded memory at any corpus size


class ReindexError(UserError, ValueError):
    """An output path, format or chunks file that cannot be used; the message says where and how to fix it."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_vectors` wrote."""

    out: Path
    manifest: Path
    rows: int
    dim: int
    fingerprint: str


def output_format(out: Path, fmt: str | None) -> str:
    """``fmt`` if given, else from the suffix (``.parquet`` / ``.jsonl``)."""
    fmt = fmt or {".parquet": "parquet", ".jsonl": "jsonl"}.get(out.suffix.lower())
    if fmt not in FORMATS:
        raise ReindexError(
            f"--out {out}: cannot tell the format from the suffix {out.suffix!r}; name the file *.parquet or *.jsonl, "
            "or pass --format parquet|jsonl"
        )
    return fmt


def _index_rows(index_dir: Path, manifest: dict[str, Any]) -> Iterator[tuple[list[dict[str, Any]], np.ndarray]]:
    """The index's rows with their vectors, in batches; the access rank becomes its level's name."""
    levels = manifest["access"]["levels"]
    vectors = np.load(index_dir / "embeddings.npy", mmap_mode="r")
    rows: list[dict[str, Any]] = []
    start = 0
    for _, rec in iter_jsonl(index_dir / "chunks.jsonl"):
        rank = rec.pop("access_rank")
        rows.append(rec | {"access_level": levels[rank]})
        if len(rows) == BATCH:
            yield rows, np.asarray(vectors[start : start + len(rows)], dtype=np.float32)
            start, rows = start + len(rows), []
    if rows:
        yield rows, np.asarray(vectors[start : start + len(rows)], dtype=np.float32)
    if start + len(rows) != vectors.shape[0]:
        raise SearchSetupError(
            f"{index_dir}: chunks.jsonl and embeddings.npy hold different row counts: run `dvc repro index`"
        )


def _chunk_rows(path: Path) -> Iterator[list[dict[str, Any]]]:
    """A user's chunks file in batches, each line checked: a ``chunk_id`` (string or integer) and a non-empty
    ``text``; a repeated id would overwrite a vector in the store, so it is an error too."""
    seen: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for lineno, rec in iter_jsonl(path):
        cid, text = rec.get("chunk_id"), rec.get("text")
        if isinstance(cid, bool) or not isinstance(cid, (str, int)) or not str(cid).strip():
            raise ReindexError(f"{path}:{lineno}: no chunk_id; give each line a string or integer chunk_id")
        if not isinstance(text, str) or not text.strip():
            raise ReindexError(f"{path}:{lineno}: chunk {cid!r} has no text; give each line a non-empty string text")
        cid = str(cid)
        if cid in seen:
            raise ReindexError(f"{path}:{lineno}: chunk_id {cid!r} repeats line {seen[cid]}; chunk ids must be unique")
        seen[cid] = lineno
        rows.append(rec | {"chunk_id": cid})
        if len(rows) == BATCH:
            yield rows
            rows = []
    if rows:
        yield rows
    if not seen:
        raise ReindexError(f"{path}: no chunks; each line must be a JSON object with chunk_id and text")


class _Writer:
    """Parquet (vector as a fixed-size float32 list; metadata as a JSON string, since its keys vary per corpus) or
    JSONL (one object per chunk, vector as a list of floats); written to a temporary file and renamed at the end."""

    def __init__(self, out: Path, fmt: str, dim: int) -> None:
        self.out, self.fmt, self.dim = out, fmt, dim
        self.tmp = out.with_name(out.name + ".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self.schema = pa.schema(
                [
                    ("chunk_id", pa.string()),
                    ("doc_id", pa.string()),
                    ("title", pa.string()),
                    ("section", pa.string()),
                    ("text", pa.string()),
                    ("metadata", pa.string()),
                    ("access_level", pa.string()),
                    ("vector", pa.list_(pa.float32(), dim)),
                ]
            )
            self.pq = pq.ParquetWriter(self.tmp, self.schema)
        else:
            self.fh = self.tmp.open("w", encoding="utf-8", newline="\n")

    def write(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        self.rows += len(rows)
        if self.fmt == "parquet":
            import pyarrow as pa

            def col(key: str) -> list[str | None]:
                return [None if r.get(key) is None else str(r[key]) for r in rows]

            meta = [json.dumps(r.get("metadata") or {}, ensure_ascii=False, sort_keys=True) for r in rows]
            flat = pa.array(vectors.reshape(-1), type=pa.float32())
            columns = [col(k) for k in ("chunk_id", "doc_id", "title", "section", "text")]
            columns += [meta, col("access_level"), pa.FixedSizeListArray.from_arrays(flat, self.dim)]
            self.pq.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            return
        for r, v in zip(rows, vectors, strict=True):
            self.fh.write(json.dumps(r | {"vector": v.tolist()}, ensure_ascii=False, sort_keys=True) + "\n")

    def close(self, *, keep: bool = True) -> None:
        """Finish the file; ``keep=False`` (a failure midway) removes it, so no half-written store file remains."""
        if self.fmt == "parquet":
            self.pq.close()
        else:
            self.fh.close()
        if keep:
            self.tmp.replace(self.out)
        else:
            self.tmp.unlink(missing_ok=True)


def export_vectors(
    index_dir: str | Path, out: str | Path, *, fmt: str | None = None, chunks_file: str | Path | None = None
) -> Exported:
    """Write ``out`` (and ``<out stem>.manifest.json`` beside it) from the index at ``index_dir``, or from
    ``chunks_file`` embedded by the index's embedder with its passage prompt (module docstring)."""
    index_dir, out = Path(index_dir), Path(out)
    fmt = output_format(out, fmt)
    manifest_path = index_dir / "manifest.json"
    if not manifest_path.exists():
        raise SearchSetupError(f"no index at {index_dir}/: run `dvc repro index` (or the whole pipeline) first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    embedder_dir = check_index_embedder(index_dir, manifest)
    if chunks_file is None:
        dim = int(manifest["dim"])
        batches: Iterator[tuple[list[dict[str, Any]], np.ndarray]] = _index_rows(index_dir, manifest)
        source = str(index_dir)
    else:
        if not Path(chunks_file).is_file():
            raise ReindexError(
                f"--chunks {chunks_file}: no such file; give a JSONL file with chunk_id and text per line"
            )
        from ragtune.retrieval import load_dense

        embedder = load_dense({"passage_prompt": manifest.get("passage_prompt")}, name=str(embedder_dir))
        embedder.encoder.use_cache = False  # a one-off pass: an on-disk cache would only grow
        dim = int(embedder.model.get_embedding_dimension())
        batches = (
            (rows, embedder.encode_passages([r["text"] for r in rows])) for rows in _chunk_rows(Path(chunks_file))
        )
        source = str(chunks_file)
    writer = _Writer(out, fmt, dim)
    try:
        for rows, vectors in batches:
            writer.write(rows, vectors)
    except BaseException:
        writer.close(keep=False)
        raise
    writer.close()
    fingerprint = manifest["embedder_fingerprint"]
    side = out.with_name(out.stem + ".manifest.json")
    write_json(
        side,
        {
            "file": out.name,
            "format": fmt,
            "rows": writer.rows,
            "dim": dim,
            "normalized": True,  # unit vectors: dot product = cosine
            "embedder": str(embedder_dir),
            "embedder_fingerprint": fingerprint,
            "query_prompt": manifest.get("query_prompt", ""),
            "passage_prompt": manifest.get("passage_prompt", ""),
            "source": source,
        },
    )
    return Exported(out, side, writer.rows, dim, fingerprint)
