"""The mutable state of one ingest run: the documents kept so far, the quarantine, the counters, and the
metrics they add up to.

Every source kind hands its document candidates to :meth:`IngestRun.add_document`, so normalization, the title
rules and duplicate detection are the same for a Markdown file and a CSV row.
"""

from __future__ import annotations

import collections
import os
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from ragtune.ingest.config import IngestConfig, IngestError, SourceConfig, UnreadableFile
from ragtune.ingest.fields import first_line_title, is_id_title, json_safe, parse_tags
from ragtune.ingest.readers import read_failure
from ragtune.ingest.tables import Table, read_table
from ragtune.io import JsonlSink
from ragtune.parallel import ordered_map
from ragtune.text import ToneStyle, normalize_text, normalize_text_with_flags, text_digest

T = TypeVar("T")


def _normalize_batch(job: tuple[list[str], ToneStyle]) -> list[tuple[str, bool]]:
    texts, tone_style = job
    return [normalize_text_with_flags(t, tone_style) for t in texts]


class DocumentLimitReached(Exception):
    """Raised by :meth:`IngestRun.add_document` when ``max_documents`` documents are kept (``ragtune plan``'s probe);
    :func:`ragtune.ingest.run.ingest` catches it and goes on to the queries."""


class IngestRun:
    """Mutable state of one ingest run: kept records, quarantine, counters."""

    def __init__(self, config: IngestConfig, sink: JsonlSink | None = None, max_documents: int | None = None):
        self.config = config
        # ``ragtune plan``'s probe reads the first documents only: the one that reaches the cap raises
        # DocumentLimitReached, and ``documents_limited`` then tells the query readers that their positives may lie
        # past the cut (kept unchecked instead of quarantined as unknown).
        self.max_documents = max_documents
        self.documents_limited = False
        self.repo = config.repo.resolve()
        # Kept documents go to ``sink`` as they are accepted (the stage: memory does not grow with the corpus), or
        # to ``documents`` without one (tests, out-of-domain sets).
        self.sink = sink
        self.documents: list[dict[str, Any]] = []
        self.kept = 0
        self.by_type: Counter[str] = Counter()
        self.doc_ids: dict[str, str] = {}  # doc_id → source
        # Duplicate detection keeps digests, not texts: 16 bytes a document instead of the corpus twice over.
        self.texts: dict[bytes, str] = {}  # digest of a normalized text → doc_id of the first document with it
        self.aliases: dict[str, str] = {}  # quarantined duplicate_text doc_id → kept doc_id
        self.kept_texts: dict[str, bytes] = {}  # kept doc_id → digest of its normalized text
        # a doc_id that two documents with different texts carry → where each is: labels naming it are ambiguous
        self.ambiguous_ids: dict[str, list[str]] = {}
        self.quarantined_ids: dict[str, str] = {}  # doc_id of a quarantined document → "reason (source)"
        self.quarantine: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.doc_read = 0
        self.repaired = 0
        self.query_repaired = 0
        self.unknown_positive_ids = 0
        self.ambiguous_positive_ids = 0
        self.query_ids: dict[str, str] = {}  # kept query_id → source
        self.query_ids_by_file: dict[Path, dict[str, str]] = {}  # query file → its own ids → source
        self.renamed_query_ids: list[tuple[str, str, str, str]] = []  # (id, kept as, source, first use of id)
        self.by_format: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.files_read = 0
        # entries of document folders (ingest.walk): each ends read, quarantined (kind "file") or skipped
        self.files_seen = 0
        self.folder_files_read = 0
        self._rel: dict[Path, str] = {}
        self._normalized: dict[str, tuple[str, bool]] = {}  # text → normalized form, flag: one batch (normalized_ahead)
        self.files_skipped: list[dict[str, str]] = []  # {"source", "reason"}: read elsewhere (a sidecar, a table)

    def rel(self, path: Path) -> str:
        """A path as written in output `source` fields: relative to the repository root, POSIX separators (memoized:
        a table source asks once per row, and resolving costs several system calls)."""
        if path not in self._rel:
            self._rel[path] = Path(os.path.relpath(path.resolve(), self.repo)).as_posix()
        return self._rel[path]

    def reject(self, kind: str, source: str, reason: str, record: Any) -> None:
        self.quarantine.append({"stage": "ingest", "kind": kind, "source": source, "reason": reason, "record": record})

    def reject_document(self, doc_id: str | None, source: str, reason: str, record: Any) -> None:
        """Quarantine a document and remember its id, so a question naming it is told why it is missing."""
        self.reject("document", source, reason, record)
        if doc_id is not None:
            self.quarantined_ids.setdefault(doc_id, f"{reason} ({source})")

    def norm_with_flags(self, text: str) -> tuple[str, bool]:
        """:func:`normalize_text_with_flags` in this run's tone style, from the batch computed ahead when there is
        one (:meth:`normalized_ahead`)."""
        done = self._normalized.get(text)
        return done if done is not None else normalize_text_with_flags(text, self.config.tone_style)

    def norm(self, text: str) -> str:
        """A document text normalized, a repaired mojibake counted."""
        out, repaired = self.norm_with_flags(text)
        self.repaired += repaired
        return out

    def normalized_ahead(
        self, batches: Iterable[list[T]], texts: Callable[[T], Iterable[str]], parallel: bool
    ) -> Iterator[list[T]]:
        """Each batch of ``batches``, once the normalized forms of its items' ``texts`` are at hand for
        :meth:`norm_with_flags`. With ``parallel`` a pool of worker processes normalizes batches ahead while this
        process reads, checks and writes (normalizing is per-record Python, a third of ingest's time); the forms
        are the same function's, so the output is the same bytes either way. A text missing from ``texts`` is
        normalized when it is asked for."""
        pending: collections.deque[tuple[list[T], list[str]]] = collections.deque()

        def jobs() -> Iterator[tuple[list[str], ToneStyle]]:
            for batch in batches:
                unique = list(dict.fromkeys(t for item in batch for t in texts(item) if t))
                pending.append((batch, unique))
                yield unique, self.config.tone_style

        for normalized in ordered_map(_normalize_batch, jobs(), parallel=parallel):
            batch, unique = pending.popleft()
            self._normalized = dict(zip(unique, normalized, strict=True))
            yield batch
        self._normalized = {}

    def add_document(
        self, source_config: SourceConfig, path: Path, *, doc_id: str | None, title: str | None, text: str | None,
        source: str, metadata: dict[str, Any], raw: Any = None, stem: str | None = None,
    ) -> None:  # fmt: skip
        """Normalize, validate and keep (or quarantine) one document candidate read from ``path``.

        ``source`` is the candidate's place in the output (``file`` or ``file:line``). Its format, its origin in
        ``by_source`` and its ``title_format`` come from the file and its ``source_config``, the same way for a
        folder file and a table row.

        The title is a real one (given, or the text's short first line) or ``""``, never the id or the file
        ``stem``: chunks carry their title into the embedding, and the report/search show ``title or doc_id``.
        """
        title_format = source_config.title_format
        self.doc_read += 1
        norm_text = self.norm(text or "")
        names = (doc_id, PurePosixPath(doc_id).name if doc_id else None, stem)
        norm_title = self.norm_with_flags(title)[0] if title else ""
        if not norm_title or is_id_title(norm_title, *names):
            norm_title = first_line_title(norm_text) or ""
            norm_title = "" if is_id_title(norm_title, *names) else norm_title
        meta = self.clean_metadata(metadata)
        if title_format:
            fields = {**{k: v for k, v in meta.items() if not isinstance(v, (list, dict))}, "title": norm_title}
            fields["id"] = doc_id
            try:
                norm_title = normalize_text(title_format.format_map(fields), self.config.tone_style)
            except (KeyError, IndexError, ValueError) as exc:
                raise IngestError(
                    f"{source}: title_format {title_format!r} needs field {exc}; available: {sorted(fields)}. "
                    "Fix `title_format` in params.yaml."
                ) from exc
            if not fields["title"]:  # "{law_id}, Điều {article_id}: {title}" without a title: no dangling ":"
                norm_title = norm_title.rstrip(" :;,-–—|/")
            norm_title = "" if is_id_title(norm_title, *names) else norm_title  # e.g. title_format: "{id}"
        record = {"doc_id": doc_id, "title": norm_title, "text": norm_text, "source": source, "metadata": meta}
        if not norm_text:
            self.reject_document(doc_id, source, "empty_text", raw if raw is not None else record)
            return
        if len(norm_text) < self.config.min_chars:
            self.reject_document(doc_id, source, "too_short", record)
            return
        assert doc_id is not None
        digest = text_digest(norm_text)
        if doc_id in self.doc_ids:
            if digest != self.kept_texts[doc_id]:  # the same id on two different texts: which one do labels mean?
                self.ambiguous_ids.setdefault(doc_id, [self.doc_ids[doc_id]]).append(source)
            self.reject("document", source, "duplicate_id", {**record, "duplicate_of": self.doc_ids[doc_id]})
            return
        if digest in self.texts:
            first = self.texts[digest]
            self.aliases[doc_id] = first
            self.reject("document", source, "duplicate_text", {**record, "duplicate_of": first})
            return
        self.doc_ids[doc_id] = source
        self.kept_texts[doc_id] = digest
        self.texts[digest] = doc_id
        self.kept += 1
        self.by_type[str(meta.get("document_type", "unknown"))] += 1
        if self.sink is not None:
            self.sink.write(record)
        else:
            self.documents.append(record)
        self.by_format[path.suffix.lower().lstrip(".")] += 1
        self.by_source[self.rel(source_config.path)] += 1
        if self.max_documents is not None and self.kept >= self.max_documents:
            raise DocumentLimitReached(self.kept)

    def clean_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in metadata.items():
            if value is None or value == "" or value == []:
                continue
            if key == "tags":
                out[key] = parse_tags(value)
            elif isinstance(value, str):
                out[key] = self.norm_with_flags(value)[0]
            else:
                out[key] = json_safe(value)
        return out

    def open_table(self, source: SourceConfig, kind: str) -> tuple[Table | None, str]:
        """``(table, where)`` of a table source, counted as a file read. A file that cannot be read or decoded is
        quarantined as kind ``source`` (a whole table, not one record: it is in no record balance) and gives no
        table; ``record.source_kind`` says whether it held documents or queries. ``where`` is its path as output
        ``source`` fields write it."""
        where = self.rel(source.path)
        self.files_read += 1
        try:
            table = read_table(source.path, source.sheet, self.config.max_bad_fraction)
        except UnreadableFile as exc:
            self.reject("source", where, exc.reason, {"file": where, "error": str(exc), "source_kind": kind})
            return None, where
        except OSError as exc:  # permissions, I/O: this table only, the run goes on
            reason, message = read_failure(exc)
            self.reject("source", where, reason, {"file": where, "error": f"{where}: {message}", "source_kind": kind})
            return None, where
        if not table.rows and not table.bad:
            # 0 records and exit 0 would let chunk and pairs run on a corpus that silently lacks this source
            sheet = f", sheet {table.sheet!r} (sheets: {table.sheets})" if table.sheet is not None else ""
            what = "has only a header" if table.columns else "is empty"
            raise IngestError(
                f"{where}{sheet}: the {kind} source `{source.key}` {what}, no data rows. Fill it, point "
                f"`{source.key}.sheet` at the sheet that holds the rows (XLSX), or remove the source from params.yaml."
            )
        return table, where

    def reject_bad_rows(self, table: Table, kind: str, where: str) -> int:
        """Quarantine the rows of ``table`` that did not parse (``where`` is the file); returns how many."""
        for bad in table.bad:
            self.reject(kind, f"{where}:{bad.line}", bad.reason, {"line": bad.raw, "error": bad.error})
        return len(table.bad)


def run_metrics(run: IngestRun, queries: list[dict[str, Any]], query_read: int) -> dict[str, Any]:
    """metrics/ingest.json: what was read, kept and set aside, so a shrinking corpus shows up in `dvc metrics diff`."""
    reasons = Counter(q["reason"] for q in run.quarantine)
    # Counted from the records themselves, then checked: a record read but neither kept nor quarantined is a loss.
    # Sidecar rows are quarantined as kind `metadata`: they are no documents. A query kept with some of its
    # positives also has a record, so queries count the rows (sources) quarantined and not kept.
    doc_quarantined = sum(1 for q in run.quarantine if q["kind"] == "document")
    kept_sources = {q["source"] for q in queries}
    query_quarantined = len({q["source"] for q in run.quarantine if q["kind"] == "query"} - kept_sources)
    check_balance("documents", run.doc_read, run.kept, doc_quarantined)
    check_balance("queries", query_read, len(queries), query_quarantined)
    by_type = run.by_type
    return {
        "documents": {
            "read": run.doc_read,
            "kept": run.kept,
            "repaired_mojibake": run.repaired,
            "quarantined": doc_quarantined,
            "duplicates": reasons["duplicate_id"] + reasons["duplicate_text"],
            "by_type": dict(sorted(by_type.items())),
            "by_source": dict(run.by_source),
            "by_format": dict(sorted(run.by_format.items())),
        },
        "queries": {
            "read": query_read,
            "kept": len(queries),
            "repaired_mojibake": run.query_repaired,
            "quarantined": query_quarantined,
            "unknown_positive_ids": run.unknown_positive_ids,
            "ambiguous_positive_ids": run.ambiguous_positive_ids,
            "renamed_duplicate_ids": len(run.renamed_query_ids),
            "by_split": {s: sum(1 for q in queries if q["split"] == s) for s in ("train", "dev", "test")}
            | {"unassigned": sum(1 for q in queries if q["split"] is None)},
            "positives_per_query_mean": (
                round(statistics.fmean(len(q["positive_doc_ids"]) for q in queries), 3) if queries else 0.0
            ),
        },
        "quarantine_reasons": dict(sorted(reasons.items())),
    }


def check_balance(kind: str, read: int, kept: int, quarantined: int) -> None:
    """``read = kept + quarantined``, or ragtune lost (or double-counted) records: stop rather than write a corpus
    that is silently short."""
    if read != kept + quarantined:
        raise RuntimeError(
            f"ingest {kind}: read {read} but kept {kept} + quarantined {quarantined} = {kept + quarantined}. "
            "This is a bug in ragtune, not in your data; please report it with the ingest quarantine file."
        )
