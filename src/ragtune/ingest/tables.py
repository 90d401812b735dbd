"""Table sources (CSV, XLSX, JSONL): rows with their line numbers, malformed rows set apart for quarantine.

Every format gives the same :class:`Table`, so documents, queries and metadata sidecars are read one way.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.ingest.config import IngestError, UnreadableFile
from ragtune.ingest.fields import json_safe
from ragtune.ingest.readers import decode_file


@dataclass
class Row:
    line: int
    record: dict[str, Any]


@dataclass
class Table:
    rows: list[Row]
    columns: list[str]  # header (CSV/XLSX) or union of keys (JSONL)
    bad: list[tuple[int, str, str]]  # (line, raw text, what is wrong)
    bad_reason: str = "malformed_json"  # quarantine reason for `bad`: malformed_json (JSONL) / malformed_row (CSV)


def _clean_cell(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return json_safe(value)


def read_table(path: Path, sheet: str | None = None, max_bad_fraction: float = 0.2) -> Table:
    """Read a CSV/XLSX/JSONL table; malformed rows are returned in ``bad`` (quarantined by the caller).

    JSONL is read leniently here (unlike :func:`ragtune.io.iter_jsonl`, which stops at the first bad line)
    because source files come from people, not from our own stages. A file that is mostly not JSON is a
    config error, not a data problem.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "xlsx":
        return _read_xlsx(path, sheet)
    text = decode_file(path)
    if fmt == "csv":
        return _read_csv(text)
    rows: list[Row] = []
    bad: list[tuple[int, str, str]] = []
    keys: dict[str, None] = {}
    total = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        total += 1
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((lineno, line, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(rec, dict):
            bad.append((lineno, line, f"expected a JSON object, got {type(rec).__name__}"))
            continue
        keys.update(dict.fromkeys(rec))
        rows.append(Row(lineno, {k: _clean_cell(v) for k, v in rec.items()}))
    if total and len(bad) / total > max_bad_fraction:
        first_line, _, first_error = bad[0]
        raise IngestError(
            f"{path}: {len(bad)} of {total} lines are not JSON objects (first: {path}:{first_line}: {first_error}). "
            "Is this really JSONL (one JSON object per line)? Fix the file, or raise `ingest.max_bad_fraction` "
            f"(now {max_bad_fraction}) to quarantine the bad lines instead."
        )
    return Table(rows, list(keys), bad, "malformed_json")


def _read_csv(text: str) -> Table:
    header_line = text.split("\n", 1)[0]
    # Excel in a Vietnamese locale writes ";"-separated CSV; pick the separator the header uses most.
    delimiter = max([",", ";", "\t", "|"], key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[Row] = []
    bad: list[tuple[int, str, str]] = []
    header: list[str] | None = None
    start = 1
    for values in reader:
        line, start = start, reader.line_num + 1
        if header is None:
            header = [unicodedata.normalize("NFC", h).strip().lstrip("\ufeff") for h in values]
            continue
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            bad.append((line, delimiter.join(values), f"{len(values)} fields but the header has {len(header)}"))
            continue
        rows.append(Row(line, {h: _clean_cell(v) for h, v in zip(header, values, strict=False)}))
    return Table(rows, header or [], bad, "malformed_row")


def _read_xlsx(path: Path, sheet: str | None) -> Table:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException …
        raise UnreadableFile("unreadable_file", f"{path}: not a readable .xlsx ({type(exc).__name__}: {exc})") from exc
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise IngestError(
                f"{path}: no sheet {sheet!r} (sheets: {workbook.sheetnames}); fix `sheet:` for this source."
            )
        ws = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        values = list(ws.iter_rows(values_only=True))
    finally:
        workbook.close()
    if not values:
        return Table([], [], [])
    header = [unicodedata.normalize("NFC", str(h)).strip() if h is not None else "" for h in values[0]]
    rows = [
        Row(i, {h: _clean_cell(v) for h, v in zip(header, row, strict=False) if h})
        for i, row in enumerate(values[1:], start=2)
        if any(v is not None and str(v).strip() for v in row)
    ]
    return Table(rows, [h for h in header if h], [])


def check_columns(
    table: Table, path: Path, columns: dict[str, str], explicit: set[str], required: set[str], key: str
) -> None:
    """Fail fast when a configured column is in no row: that is a params typo, not a data problem."""
    present = set(table.columns)
    if not table.rows:
        return
    for name, column in columns.items():
        if column not in present and (name in explicit or name in required):
            raise IngestError(
                f"{path}: column {column!r} (for `{name}`) is not in the file. Columns found: "
                f"{sorted(present)}. Fix `{key}.columns.{name}` in params.yaml."
            )
