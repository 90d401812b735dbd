"""Labeled questions: one table per ``ingest.queries`` source, their positives checked against the documents kept,
and their ids made unique across files.
"""

from __future__ import annotations

import re
from typing import Any

from ragtune.ingest.config import (
    QUERY_DEFAULT_COLUMNS,
    IngestError,
    SourceConfig,
    allowed_splits,
    normalize_split,
)
from ragtune.ingest.fields import as_id, parse_positives, text_cell
from ragtune.ingest.state import IngestRun
from ragtune.ingest.tables import check_columns
from ragtune.text import normalize_text_with_flags


def ingest_queries(run: IngestRun, source: SourceConfig) -> tuple[list[dict[str, Any]], int]:
    """Queries of one table; returns ``(queries, records read)``. Positives are checked against kept documents."""
    path = source.path
    table, src = run.open_table(source, "query")
    if table is None:
        return [], 0  # quarantined whole, as kind `source`: none of its questions was read
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
    nameable = known | frozenset(run.aliases)  # once per file: per question it cost O(documents) each time
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
        cell, problem = text_cell(rec.get(columns["query"]), " ")
        if problem:
            error = f"column {columns['query']!r} {problem}; expected the question as text"
            run.reject("query", where, "query_not_a_string", {**rec, "error": error})
            continue
        text, repaired = normalize_text_with_flags(cell or "", run.config.tone_style)
        run.query_repaired += repaired
        if not text:
            run.reject("query", where, "empty_query", rec)
            continue
        named = parse_positives(rec.get(columns["positives"]), nameable)
        positives = list(dict.fromkeys(run.aliases.get(p, p) for p in named))
        # an id reached through a duplicate_text alias names that exact text, so it is never ambiguous
        ambiguous = [p for p in named if p in run.ambiguous_ids and p not in {run.aliases.get(n) for n in named}]
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
        kept = _known_positives(run, where, rec, positives, ambiguous, known)
        if not kept:
            continue
        query["positive_doc_ids"] = kept
        out.append(query)
    return out, len(table.rows) + len(table.bad)


def _known_positives(
    run: IngestRun, where: str, rec: dict[str, Any], positives: list[str], ambiguous: list[str], known: frozenset[str]
) -> list[str]:
    """The positives that name one kept document; the others are quarantined with what the user can do about them.

    An id that two different documents carried (one kept, one quarantined as ``duplicate_id``) is set aside as
    ``ambiguous_positive``: the label may mean either, and a wrong positive teaches the model the wrong pair and
    scores the evaluation against the wrong document, which is worse than one label fewer until the ids are fixed.
    """
    if ambiguous:
        hint = "; ".join(
            f"document id `{p}` is carried by {' and '.join(run.ambiguous_ids[p])} with different texts (the first "
            "is kept): give each document its own id and label the question with the one it means"
            for p in ambiguous
        )
        run.reject("query", where, "ambiguous_positive", {**rec, "ambiguous_positive_ids": ambiguous, "hint": hint})
        run.ambiguous_positive_ids += len(ambiguous)
    unknown = [p for p in positives if p not in known]
    if run.documents_limited:  # a probe stopped reading documents early: the rest may well hold these ids
        return [p for p in positives if p not in ambiguous]
    if unknown:
        hints = [_unknown_hint(run, p, known) for p in unknown]
        record = {**rec, "unknown_positive_ids": unknown}
        if any(hints):
            record["hint"] = "; ".join(h for h in hints if h)
        # every missing id is a document ingest set aside: say that, not "unknown"
        quarantined = all(p in run.quarantined_ids for p in unknown)
        run.reject("query", where, "quarantined_positive" if quarantined else "unknown_positive", record)
        run.unknown_positive_ids += len(unknown)
    return [p for p in positives if p in known and p not in ambiguous]


def _unknown_hint(run: IngestRun, doc_id: str, known: frozenset[str]) -> str | None:
    """Why a positive names no kept document, when ingest can tell: the document was quarantined, or the cell
    held several ids with a separator :func:`parse_positives` does not split on (ids may contain spaces)."""
    if doc_id in run.quarantined_ids:
        return f"document `{doc_id}` was quarantined: {run.quarantined_ids[doc_id]}"
    parts = [p for p in re.split(r"[\s|/+]+", doc_id) if p]
    if len(parts) > 1:
        found = [p for p in parts if p in known]
        also = f" ({', '.join(found)} {'is a' if len(found) == 1 else 'are'} known document id{'s'[: len(found) > 1]})"
        return (
            f"{doc_id!r} was read as one id: separate several ids with ',' or ';', or write a JSON list "
            f'like ["{parts[0]}", "{parts[1]}"]' + (also if found else "")
        )
    return None


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
