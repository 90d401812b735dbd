"""Labeled questions: one table per ``ingest.queries`` source, their positives checked against the documents kept,
and their ids made unique across files.
"""

from __future__ import annotations

from typing import Any

from ragtune.ingest.config import (
    QUERY_DEFAULT_COLUMNS,
    IngestError,
    SourceConfig,
    allowed_splits,
    normalize_split,
)
from ragtune.ingest.fields import as_id, parse_positives
from ragtune.ingest.state import IngestRun
from ragtune.ingest.tables import check_columns
from ragtune.text import normalize_text_with_flags


def ingest_queries(run: IngestRun, source: SourceConfig) -> tuple[list[dict[str, Any]], int]:
    """Queries of one table; returns ``(queries, records read)``. Positives are checked against kept documents."""
    path = source.path
    table, src = run.open_table(source, "query")
    if table is None:
        return [], 1
    columns = {**QUERY_DEFAULT_COLUMNS, **source.columns}
    check_columns(table, path, columns, set(source.columns), {"query", "positives"}, source.key)
    mapped = {column: name for name, column in columns.items()}
    has_id = columns["id"] in table.columns
    split_column = source.columns.get("split")
    if split_column is None and "split" in table.columns and table.rows:
        # Explicit only: a column that happens to be called "split" may mean something else (a data split of the
        # tool that made the file); guessing wrong would move questions between train and test.
        run.warnings.append(
            f"{src}: column 'split' is not used to assign splits (kept in metadata); to use it, set "
            f"`{source.key}.columns.split: split` in params.yaml."
        )
    run.reject_bad_rows(table, "query", src)
    out: list[dict[str, Any]] = []
    known = frozenset(run.doc_ids)
    for row in table.rows:
        where = f"{src}:{row.line}"
        rec = row.record
        split = source.split
        if split_column is not None and rec.get(split_column) is not None:
            split = normalize_split(rec[split_column])
            if split is None:
                raise IngestError(
                    f"{where}: split {rec[split_column]!r} (column {split_column!r}) is not a split name; allowed "
                    f"(any case): {allowed_splits()}. Fix the cell, leave it empty to use the source's `split:` "
                    f"(or let `pairs` draw it), or map another column in `{source.key}.columns.split`."
                )
        query_id = as_id(rec.get(columns["id"])) if has_id else f"{path.stem}:{row.line}"
        if query_id is None:
            run.reject("query", where, "missing_column", {**rec, "missing": columns["id"]})
            continue
        text, repaired = normalize_text_with_flags(str(rec.get(columns["query"]) or ""), run.config.tone_style)
        run.query_repaired += repaired
        if not text:
            run.reject("query", where, "empty_query", rec)
            continue
        positives = parse_positives(rec.get(columns["positives"]), known | frozenset(run.aliases))
        positives = list(dict.fromkeys(run.aliases.get(p, p) for p in positives))
        metadata = run.clean_metadata(
            {
                mapped.get(k, k): v
                for k, v in rec.items()
                if mapped.get(k) not in ("id", "query", "positives") and k != split_column
            }
        )
        query = {"query_id": query_id, "query": text, "positive_doc_ids": positives, "source": where,
                 "metadata": metadata, "split": split}  # fmt: skip
        if not positives:
            run.reject("query", where, "no_positives", rec)
            continue
        unknown = [p for p in positives if p not in known]
        if unknown:
            kept = [p for p in positives if p in known]
            run.reject("query", where, "unknown_positive", {**rec, "unknown_positive_ids": unknown})
            run.unknown_positive_ids += len(unknown)
            if not kept:
                continue
            query["positive_doc_ids"] = kept
        out.append(query)
    return out, len(table.rows) + len(table.bad)


def keep_query_ids(run: IngestRun, source: SourceConfig, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The queries of one source whose ids are unique, renaming ids that another query file already used.

    A train file and a test file both numbering their questions 1..N is the normal case, not an error:
    quarantining the second file's ids would silently lose most of a test set. So an id seen in a *different*
    file is kept as ``<file stem>/<id>``; a repeat *within* one file (or of a qualified id) is still a
    ``duplicate_query_id``. The same file listed twice counts as one file.
    """
    own = run.query_ids_by_file.setdefault(source.path.resolve(), {})
    kept: list[dict[str, Any]] = []
    for q in batch:
        query_id = q["query_id"]
        if query_id in own:
            run.reject("query", q["source"], "duplicate_query_id", {**q, "duplicate_of": own[query_id]})
            continue
        own[query_id] = q["source"]
        if query_id in run.query_ids:
            qualified = f"{source.path.stem}/{query_id}"
            if qualified in run.query_ids:
                run.reject("query", q["source"], "duplicate_query_id", {**q, "duplicate_of": run.query_ids[qualified]})
                continue
            run.renamed_query_ids.append((query_id, qualified, q["source"], run.query_ids[query_id]))
            q = {**q, "query_id": qualified}
        run.query_ids[q["query_id"]] = q["source"]
        kept.append(q)
    return kept
