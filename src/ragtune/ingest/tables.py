"""Table sources (CSV, XLSX, JSONL): rows with their line numbers, malformed rows set apart for quarantine.

Every format gives the same :class:`Table`, so documents, queries and metadata sidecars are read one way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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
class BadRow:
    """A row that did not parse: quarantined by the caller under ``reason`` with the raw text and the problem."""

    line: int
    raw: str
    error: str
    reason: str  # malformed_json (JSONL), malformed_row / unclosed_quote (CSV)


class JsonlRows:
    """The parsed rows of a UTF-8 JSONL file, read from disk each time they are iterated: a 1.8-million-line table
    costs one line of memory, not the file three times over (bytes, text, rows). ``len`` and truth are known from
    the first pass, which :func:`read_table` makes to find the columns and the malformed lines."""

    def __init__(self, path: Path, n_rows: int):
        self.path = path
        self.n_rows = n_rows

    def __len__(self) -> int:
        return self.n_rows

    def __bool__(self) -> bool:
        return self.n_rows > 0

    def __iter__(self) -> Iterator[Row]:
        for lineno, line in _utf8_lines(self.path):
            if line.strip():
                rec = _parse_json_line(line)
                if isinstance(rec, dict):
                    yield Row(lineno, {k: _clean_cell(v) for k, v in rec.items()})


@dataclass
class Table:
    rows: list[Row] | JsonlRows
    columns: list[str]  # header (CSV/XLSX) or union of keys (JSONL)
    bad: list[BadRow]
    sheet: str | None = None  # XLSX: the sheet read
    sheets: list[str] = field(default_factory=list)  # XLSX: every sheet of the workbook, for error messages


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
    _refuse_spreadsheet_named_as_text(path, fmt)
    if fmt == "csv":
        return _read_csv(decode_file(path), path)
    streamed = _is_utf8(path)
    lines = _utf8_lines(path) if streamed else enumerate(decode_file(path).split("\n"), start=1)
    rows: list[Row] = []
    n_rows = 0
    bad: list[BadRow] = []
    keys: dict[str, None] = {}
    total = 0
    for lineno, line in lines:
        if not line.strip():
            continue
        total += 1
        rec = _parse_json_line(line)
        if isinstance(rec, BadRow):
            rec.line = lineno
            bad.append(rec)
            continue
        keys.update(dict.fromkeys(rec))
        n_rows += 1
        if not streamed:
            rows.append(Row(lineno, {k: _clean_cell(v) for k, v in rec.items()}))
    if total and len(bad) / total > max_bad_fraction:
        first = bad[0]
        raise IngestError(
            f"{path}: {len(bad)} of {total} lines are not JSON objects (first: {path}:{first.line}: {first.error}). "
            "Is this really JSONL (one JSON object per line)? Fix the file, or raise `ingest.max_bad_fraction` "
            f"(now {max_bad_fraction}) to quarantine the bad lines instead."
        )
    return Table(JsonlRows(path, n_rows) if streamed else rows, list(keys), bad)


def _parse_json_line(line: str) -> dict[str, Any] | BadRow:
    """One JSONL line as an object, or the :class:`BadRow` saying why not (its ``line`` set by the caller)."""
    try:
        rec = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        return BadRow(0, line, f"not valid JSON ({exc.msg} at column {exc.colno})", "malformed_json")
    except _DuplicateKey as exc:
        return BadRow(0, line, str(exc), "malformed_json")
    if not isinstance(rec, dict):
        return BadRow(0, line, f"expected a JSON object, got {type(rec).__name__}", "malformed_json")
    return rec


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file (a UTF-8 BOM dropped), split at ``\\n`` only, as ``str.split`` splits
    the decoded text: the same lines and numbers as the in-memory path."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            yield lineno, raw.decode("utf-8").removesuffix("\n")


def _is_utf8(path: Path) -> bool:
    """Whether the file is strict UTF-8 (optionally with a UTF-8 BOM) and has no other BOM: such a file is streamed;
    anything else (UTF-16, a legacy encoding) goes through :func:`decode_file`, whole."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            return False
        fh.seek(0)
        try:
            while block := fh.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


# first bytes of the spreadsheet files people rename or export by mistake: decoded as text they give garbage rows
_SPREADSHEET_MAGIC = {
    b"PK\x03\x04": "a ZIP package (an .xlsx, or another Office file)",
    b"\xd0\xcf\x11\xe0": "an old Excel .xls",
}


def _refuse_spreadsheet_named_as_text(path: Path, fmt: str) -> None:
    with path.open("rb") as fh:
        head = fh.read(4)
    for magic, what in _SPREADSHEET_MAGIC.items():
        if head.startswith(magic):
            raise IngestError(
                f"{path}: this .{fmt} file is {what}, not text. Export it as .{fmt} (UTF-8), or name an .xlsx "
                "file .xlsx (an old .xls: open it and save it as .xlsx)."
            )


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` keeps the last of two equal keys; the first value would vanish without a trace."""
    record = dict(pairs)
    if len(record) == len(pairs):  # no key repeats (every row of a well-formed file): nothing to count
        return record
    seen = Counter(k for k, _ in pairs)
    repeated = [k for k, n in seen.items() if n > 1]
    if repeated:
        raise _DuplicateKey(
            f"key {repeated[0]!r} appears {seen[repeated[0]]} times in one object, so all but one value would be "
            "lost; rename the repeats"
        )
    return record


def _header(names: list[str], path: Path) -> list[str]:
    """Refuse a header that repeats a column name: a row keeps one value per name, so the others would be lost."""
    counts = Counter(n for n in names if n)
    for name, n in counts.items():
        if n > 1:
            positions = [i for i, h in enumerate(names, start=1) if h == name]
            raise IngestError(
                f"{path}: column {name!r} appears {n} times in the header (columns {positions}); a row keeps one "
                f"value per column name, so the data of the others would be lost. Rename the repeats in the file "
                f"(e.g. {name}_2) and map the one you mean in the source's `columns:` in params.yaml."
            )
    return names


def _read_csv(text: str, path: Path) -> Table:
    header_line = text.split("\n", 1)[0]
    # Excel in a Vietnamese locale writes ";"-separated CSV; pick the separator the header uses most.
    delimiter = max([",", ";", "\t", "|"], key=header_line.count)
    physical = io.StringIO(text, newline="").readlines()
    rows: list[Row] = []
    bad: list[BadRow] = []
    header: list[str] | None = None
    pos = 0  # index of the physical line the current reader starts at
    while True:
        reader = csv.reader(iter(physical[pos:]), delimiter=delimiter)
        restart = None
        start = 1
        for values in reader:
            first, last = pos + start, pos + reader.line_num  # 1-based physical lines of this record
            start = reader.line_num + 1
            if header is None:
                names = [unicodedata.normalize("NFC", h).strip().lstrip("\ufeff") for h in values]
                header = _header(names, path)
                continue
            if last > first and _unclosed_quote(physical[first - 1 : last], delimiter):
                bad.append(_swallowed(physical, first, last))
                restart = first  # read the lines after the opening line again, as the rows they are
                break
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(header):
                error = f"{len(values)} fields but the header has {len(header)}"
                bad.append(BadRow(first, delimiter.join(values), error, "malformed_row"))
                continue
            rows.append(Row(first, {h: _clean_cell(v) for h, v in zip(header, values, strict=False)}))
        if restart is None:
            break
        pos = restart
    return Table(rows, header or [], bad)


def _unclosed_quote(lines: list[str], delimiter: str) -> bool:
    """Whether a record that spans lines does so because a quote never closed.

    A quoted field may hold line breaks, but a quote that really closes is followed by the delimiter or the end of
    the line. An unclosed one runs to the end of the file, or "closes" at the next quote of a later row, which is
    then followed by that row's text: the strict parser refuses both, while the lenient one reads on silently.
    """
    try:
        list(csv.reader(iter(lines), delimiter=delimiter, strict=True))
    except csv.Error:
        return True
    return False


def _swallowed(physical: list[str], first: int, last: int) -> BadRow:
    end = "the end of the file" if last == len(physical) else f"line {last}"
    return BadRow(
        first,
        physical[first - 1].rstrip("\r\n"),
        f"a quote opens on line {first} and never closes, so lines {first + 1}-{last} (up to {end}) were read "
        "into one field of this row. This row is set aside and the lines after it are read again as rows. "
        'Fix: close the quote, or double a quote inside a quoted field ("").',
        "unclosed_quote",
    )


def _read_xlsx(path: Path, sheet: str | None) -> Table:
    import openpyxl

    try:
        # not read_only: a read-only sheet does not know its merged cells (filled in below)
        workbook = openpyxl.load_workbook(path, data_only=True)
    except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException …
        raise UnreadableFile("unreadable_file", f"{path}: not a readable .xlsx ({type(exc).__name__}: {exc})") from exc
    try:
        if sheet is not None and sheet not in workbook.sheetnames:
            raise IngestError(
                f"{path}: no sheet {sheet!r} (sheets: {workbook.sheetnames}); fix `sheet:` for this source."
            )
        ws = workbook[sheet] if sheet is not None else workbook.worksheets[0]
        values = [list(row) for row in ws.iter_rows(values_only=True)]
        _fill_merged(ws, values)
        sheets = list(workbook.sheetnames)
    finally:
        workbook.close()
    if not values:
        return Table([], [], [], ws.title, sheets)
    names = [unicodedata.normalize("NFC", str(h)).strip() if h is not None else "" for h in values[0]]
    header = _header(names, path)
    rows = [
        Row(i, {h: _clean_cell(v) for h, v in zip(header, row, strict=False) if h})
        for i, row in enumerate(values[1:], start=2)
        if any(v is not None and str(v).strip() for v in row)
    ]
    return Table(rows, [h for h in header if h], [], ws.title, sheets)


def _fill_merged(ws: Any, values: list[list[Any]]) -> None:
    """Give every cell of a merged range the range's value: Excel stores it in the top-left cell only, but a user
    who merged "Nhân sự" over five rows means all five rows belong to Nhân sự."""
    for cells in ws.merged_cells.ranges:
        value = values[cells.min_row - 1][cells.min_col - 1]
        for r in range(cells.min_row, min(cells.max_row, len(values)) + 1):
            row = values[r - 1]
            for c in range(cells.min_col, cells.max_col + 1):
                if c <= len(row):
                    row[c - 1] = value


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
