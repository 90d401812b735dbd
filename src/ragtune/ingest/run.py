"""The ingest run: every document source in order, then the queries, into one :class:`IngestResult`; and
:func:`run_ingest`, the ingest stage's whole job (params section in, files and summary out).

Output order is source order, then file order (sorted paths) or row order, so the same inputs give
byte-identical files and DVC skips downstream stages.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ragtune.console import warn
from ragtune.ingest.config import (
    DOC_DEFAULT_COLUMNS,
    IngestConfig,
    IngestError,
    SourceConfig,
    UnreadableFile,
    load_config,
)
from ragtune.ingest.fields import as_id, first_line_title, text_cell, title_cell
from ragtune.ingest.queries import ingest_queries, keep_query_ids
from ragtune.ingest.readers import Extracted, read_failure
from ragtune.ingest.state import DocumentLimitReached, IngestRun, run_metrics
from ragtune.ingest.tables import Row, check_columns, read_table
from ragtune.ingest.walk import READERS, FolderEntry, claimed_paths, file_metrics, walk_folder
from ragtune.io import JsonlSink, write_json, write_jsonl
from ragtune.parallel import batched, ordered_map
from ragtune.paths import Paths

# Wraps the file iteration: the stage passes a progress bar (ragtune.console.track), tests pass nothing.
Track = Callable[[Iterable[tuple[SourceConfig, FolderEntry]], str], Iterator[tuple[SourceConfig, FolderEntry]]]


# A table source of at least this many bytes (about 20,000 documents) is normalized by a pool of worker processes
# (IngestRun.normalized_ahead); smaller ones in-process, where starting the workers would cost more than they save.
PARALLEL_MIN_BYTES = 8 << 20
NORMALIZE_BATCH = 512  # rows per task sent to a worker
# Document folders with at least this many files to read are read by a pool of worker processes, a window ahead.
PARALLEL_MIN_FILES = 64


@dataclass
class IngestResult:
    documents: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    metrics: dict[str, Any]
    files_read: int
    records_read: int
    warnings: list[str]


def list_files(source: SourceConfig, config: IngestConfig | None = None) -> list[Path]:
    """Files of a source that are read as documents, in output order (a table source is its one file)."""
    if not source.is_folder:
        return [source.path]
    config = config or IngestConfig(documents=[source], queries=[], root=source.path)
    return [e.path for e in walk_folder(source, config, claimed_paths(config)) if e.reason is None]


def _read_sidecar(run: IngestRun, source: SourceConfig) -> dict[str, dict[str, Any]]:
    """Metadata sidecar rows keyed by ``file`` (relative POSIX path); ``columns`` renames its columns."""
    assert source.metadata is not None
    try:
        table = read_table(source.metadata, max_bad_fraction=run.config.max_bad_fraction)
    except (OSError, UnreadableFile) as exc:  # the metadata of every file in the folder: an error, not a skip
        raise IngestError(
            f"{source.metadata}: the metadata sidecar of `{source.key}` cannot be read ({exc}); fix the file "
            f"(permissions, encoding) or remove `{source.key}.metadata`."
        ) from exc
    run.files_read += 1
    if "file" not in table.columns and table.rows:
        raise IngestError(
            f"{source.metadata}: the metadata sidecar needs a `file` column (path relative to {source.path}); "
            f"columns found: {sorted(table.columns)}. Fix the file or `{source.key}.metadata`."
        )
    check_columns(table, source.metadata, source.columns, set(source.columns), set(), source.key)
    rename = {column: name for name, column in source.columns.items()}
    where = run.rel(source.metadata)
    run.reject_bad_rows(table, "metadata", where)  # sidecar rows are no documents: kind `metadata`
    rows: dict[str, dict[str, Any]] = {}
    for row in table.rows:
        name = as_id(row.record.get("file"))
        if name is None:
            continue
        name = PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")
        if name in rows:  # which row's metadata is right is the user's call; the first stays, the repeat is shown
            first = f"{where}:{rows[name]['_line']}"
            run.reject(
                "metadata", f"{where}:{row.line}", "duplicate_sidecar_row", {**row.record, "duplicate_of": first}
            )
            run.warnings.append(
                f"{where}:{row.line}: a second metadata row for {name!r} (the first is {first}); the first is used. "
                "Merge the two rows into one."
            )
            continue
        rows[name] = {rename.get(k, k): v for k, v in row.record.items() if k != "file"} | {"_line": row.line}
    return rows


@dataclass
class FileRead:
    """What reading one folder file gave: its text and metadata, or why it could not be read. A value, not a raised
    exception, so that a worker process can hand it back (and the order of the files is kept)."""

    extracted: Extracted | None = None
    unreadable: tuple[str, str] | None = None  # (reason, message): the file is not a document (corrupt, not text)
    failure: tuple[str, str] | None = None  # read_failure's (reason, message): permissions, gone, an I/O error


def read_file(path: Path) -> FileRead:
    """Extract one folder file with its format's reader (pure: a worker process may run it)."""
    try:
        return FileRead(extracted=READERS[path.suffix.lower().lstrip(".")](path))
    except UnreadableFile as exc:
        return FileRead(unreadable=(exc.reason, str(exc)))
    except OSError as exc:  # permissions, a file gone since the walk, an I/O error: this file only, the run goes on
        return FileRead(failure=read_failure(exc))


def _read_ahead(files: list[tuple[SourceConfig, FolderEntry]]) -> Iterator[FileRead | None]:
    """:func:`read_file` of each folder file to be read, ``None`` for the other entries, in ``files`` order. From
    :data:`PARALLEL_MIN_FILES` such files a pool of worker processes reads ahead (PDF and office extraction is
    per-file Python); the results are the reader's either way, so the output is the same bytes."""
    to_read = [source.is_folder and entry.reason is None for source, entry in files]
    wanted = [entry.path for (_, entry), read in zip(files, to_read, strict=True) if read]
    reads = ordered_map(read_file, wanted, parallel=len(wanted) >= PARALLEL_MIN_FILES)
    for read in to_read:
        yield next(reads) if read else None


def _ingest_file(
    run: IngestRun, source: SourceConfig, path: Path, sidecar: dict[str, dict[str, Any]], read: FileRead
) -> None:
    fmt = path.suffix.lower().lstrip(".")
    rel = unicodedata.normalize("NFC", path.relative_to(source.path).as_posix())
    src = run.rel(path)
    if read.unreadable is not None:
        reason, message = read.unreadable
        run.files_read += 1
        run.folder_files_read += 1
        run.doc_read += 1
        run.reject("document", src, reason, {"file": src, "error": message})
        sidecar.pop(rel, None)
        return
    if read.failure is not None:
        reason, message = read.failure
        run.reject("file", src, reason, {"file": src, "error": f"{src}: {message}"})
        sidecar.pop(rel, None)
        return
    extracted = read.extracted
    assert extracted is not None
    run.files_read += 1
    run.folder_files_read += 1
    if extracted.warning:
        run.warnings.append(f"{src}: {extracted.warning}")
    side = dict(sidecar.pop(rel, {}))
    side.pop("_line", None)
    meta = {**extracted.meta, **side}  # the sidecar wins over front matter
    doc_id = as_id(meta.pop("id", None)) or unicodedata.normalize("NFC", str(PurePosixPath(rel).with_suffix("")))
    title = meta.pop("title", None) or extracted.title
    if title is None and fmt == "txt":
        title = first_line_title(extracted.text)
    # no file-stem fallback for the title: the stem is usually the id (add_document)
    title = str(title) if title else None
    run.add_document(
        source, path, doc_id=doc_id, title=title, text=extracted.text, source=src, metadata=meta, stem=path.stem
    )


def _ingest_table(run: IngestRun, source: SourceConfig) -> None:
    path = source.path
    table, src = run.open_table(source, "document")
    if table is None:  # quarantined whole, as kind `source`: none of its records was read
        return
    columns = {**DOC_DEFAULT_COLUMNS, **source.columns}
    check_columns(table, path, columns, set(source.columns), {"text"}, source.key)
    mapped = {column: name for name, column in columns.items()}
    has_id = columns["id"] in table.columns
    run.doc_read += run.reject_bad_rows(table, "document", src)

    def texts(row: Row) -> list[str]:  # what add_document will normalize: the text, the title, string metadata
        rec = row.record
        return [text_cell(rec.get(columns["text"]))[0] or "", title_cell(rec.get(columns["title"]))[0] or ""] + [
            v for v in rec.values() if isinstance(v, str)
        ]

    def add_row(row: Row) -> None:
        where = f"{src}:{row.line}"
        rec = row.record
        if rec.get(columns["text"]) is None and columns["text"] not in rec:
            run.doc_read += 1
            run.reject("document", where, "missing_column", {**rec, "missing": columns["text"]})
            return
        doc_id = as_id(rec.get(columns["id"])) if has_id else f"{path.stem}:{row.line}"
        if doc_id is None:
            run.doc_read += 1
            run.reject("document", where, "missing_column", {**rec, "missing": columns["id"]})
            return
        text, problem = text_cell(rec.get(columns["text"]))
        title, title_problem = title_cell(rec.get(columns["title"]))
        if problem or title_problem:
            run.doc_read += 1
            reason, column = ("text", columns["text"]) if problem else ("title", columns["title"])
            error = f"column {column!r} {problem or title_problem}; expected text (a list of strings is joined)"
            run.reject_document(doc_id, where, f"{reason}_not_a_string", {**rec, "error": error})
            return
        metadata = {mapped.get(k, k): v for k, v in rec.items() if mapped.get(k) not in ("id", "title", "text")}
        run.add_document(source, path, doc_id=doc_id, title=title, text=text, source=where, metadata=metadata, raw=rec)

    parallel = path.stat().st_size >= PARALLEL_MIN_BYTES
    for batch in run.normalized_ahead(batched(table.rows, NORMALIZE_BATCH), texts, parallel):
        for row in batch:
            add_row(row)


def plan(config: IngestConfig) -> list[tuple[SourceConfig, FolderEntry]]:
    """Every entry of every document folder (see :mod:`ragtune.ingest.walk`) and every table source, in output
    order; entries with a ``reason`` are quarantined or skipped, not read."""
    claimed = claimed_paths(config)
    return [
        (source, entry)
        for source in config.documents
        for entry in (walk_folder(source, config, claimed) if source.is_folder else [FolderEntry(source.path, "")])
    ]


def _set_aside(run: IngestRun, entry: FolderEntry, sidecar: dict[str, dict[str, Any]]) -> None:
    """Count a folder entry that is not read: skipped when read elsewhere, else a quarantine record of kind file
    (its sidecar row goes with it: the file is there, so `missing_file` would mislead)."""
    src = (PurePosixPath(run.rel(entry.path.parent)) / entry.path.name).as_posix()  # a link's own path, unresolved
    if entry.skipped:
        run.files_skipped.append({"source": src, "reason": str(entry.reason)})
        return
    run.reject("file", src, str(entry.reason), {"file": src, "error": f"{src}: {entry.message}"})
    sidecar.pop(unicodedata.normalize("NFC", entry.rel), None)


def ingest(
    config: IngestConfig, track: Track | None = None, sink: JsonlSink | None = None, max_documents: int | None = None
) -> IngestResult:
    """Read every source and return documents, queries, quarantine and metrics.

    ``track`` wraps the file iteration (the stage passes a rich progress bar; tests pass nothing). With ``sink``
    kept documents are written to it as they are read, and ``documents`` comes back empty: the stage's memory then
    holds ids and digests, not the corpus. Without it nothing is written.

    ``max_documents`` (``ragtune plan``'s probe, never the stage): stop reading documents once that many are kept,
    then read the queries, whose positives are then kept unchecked (they may name documents past the cut).
    """
    run = IngestRun(config, sink, max_documents)
    files = plan(config)
    # Sidecars first: a config error in any of them should stop the run before minutes of PDF parsing.
    sidecars = {s.key: _read_sidecar(run, s) for s in config.documents if s.is_folder and s.metadata}
    iterator = track(files, "ingest files") if track is not None else iter(files)
    try:
        for (source, entry), read in zip(iterator, _read_ahead(files), strict=True):
            if not source.is_folder:
                _ingest_table(run, source)
                continue
            run.files_seen += 1
            if read is not None:
                _ingest_file(run, source, entry.path, sidecars.get(source.key, {}), read)
            else:
                _set_aside(run, entry, sidecars.get(source.key, {}))
    except DocumentLimitReached:
        run.documents_limited = True
        sidecars = {}  # the rows of files not reached are not missing: their files were never looked at
    for source in config.documents:
        for name, row in sidecars.get(source.key, {}).items():  # rows whose file is not there: report, not drop
            assert source.metadata is not None
            run.reject("metadata", f"{run.rel(source.metadata)}:{row['_line']}", "missing_file",
                       {"file": name, **{k: v for k, v in row.items() if k != "_line"}})  # fmt: skip
    queries: list[dict[str, Any]] = []
    query_read = 0
    for source in config.queries:
        batch, n = ingest_queries(run, source)
        query_read += n
        queries.extend(keep_query_ids(run, source, batch))
    if run.renamed_query_ids:
        n, (old, new, where, first) = len(run.renamed_query_ids), run.renamed_query_ids[0]
        run.warnings.append(
            f"{n} query id(s) were already used by another query file and were kept under '<file stem>/<id>', "
            f"e.g. {where}: id {old!r} (first used at {first}) → {new!r}. Nothing was dropped; give the files "
            "distinct ids to keep your own."
        )
    metrics = run_metrics(run, queries, query_read) | {"files": file_metrics(run)}
    return IngestResult(
        documents=run.documents,
        queries=queries,
        quarantine=run.quarantine,
        metrics=metrics,
        files_read=run.files_read,
        records_read=run.doc_read + query_read,
        warnings=run.warnings,
    )


def run_ingest(section: dict[str, Any], paths: Paths, track: Track | None = None) -> dict[str, str]:
    """The ingest stage: read the ``ingest:`` params section, ingest every source relative to ``paths.root``, write
    documents, queries, quarantine and ``metrics/ingest.json``, warn about what was set aside, and return the
    stage summary ``{"read", "wrote"}``.

    A config problem raises :class:`IngestError` before anything is written.
    """
    config = load_config(section, paths.root)
    with JsonlSink(paths.documents) as sink:
        result = ingest(config, track=track, sink=sink)
    write_jsonl(paths.queries, result.queries)
    write_jsonl(paths.ingest_quarantine, result.quarantine)
    write_json(paths.metrics("ingest"), result.metrics)
    for message in result.warnings:
        warn(message)
    reasons = ", ".join(f"{r} {n}" for r, n in result.metrics["quarantine_reasons"].items())
    if result.quarantine:
        warn(f"{len(result.quarantine)} quarantined ({reasons}); see {paths.ingest_quarantine}")
    # Written first, so the quarantine that explains it is on disk; the error stops chunk and pairs from running.
    for kind, key, records, sources in (
        ("document", "documents", sink.count, config.documents),
        ("query", "queries", len(result.queries), config.queries),
    ):
        if sources and not records:
            raise IngestError(
                f"ingest kept no {kind}: {result.metrics[key]['read']} read, all quarantined "
                f"({reasons or 'nothing read'}); see {paths.ingest_quarantine}. Fix the sources under "
                f"`ingest.{key}` in params.yaml (or the files they name)."
            )
    return {
        "read": f"{result.files_read} files / {result.records_read} records",
        "wrote": (f"{sink.count} documents, {len(result.queries)} queries, {len(result.quarantine)} quarantined"),
    }
