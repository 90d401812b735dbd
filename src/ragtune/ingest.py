"""ingest: heterogeneous sources (folders of md/txt/docx/pdf/html, CSV/XLSX/JSONL tables) → one document and one
query schema (docs/schemas.md).

Two kinds of problems, handled differently on purpose:

* **Bad records** (a malformed JSONL line, an empty text, a duplicate id, a corrupt PDF, a label pointing at a
  document that does not exist) are data problems a corpus always has. They go to ``quarantine.jsonl`` with
  the reason and the original record, are counted in ``metrics/ingest.json``, and the run goes on: nothing
  disappears silently, and one bad file never blocks a retrain.
* **Config problems** (a source path that does not exist, a configured column that is not in the file, a
  "JSONL" file that is mostly not JSON) mean the params are wrong, and quarantining would silently drop a
  whole source. They raise :class:`IngestError` naming what, where and which params key to change.

Output order is source order, then file order (sorted paths) or row order, so the same inputs give
byte-identical files and DVC skips downstream stages.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ragtune.text import DecodeError, ToneStyle, decode_bytes, normalize_text, normalize_text_with_flags

FOLDER_FORMATS = ("md", "markdown", "txt", "docx", "pdf", "html", "htm")
TABLE_FORMATS = ("csv", "xlsx", "jsonl")
DOC_DEFAULT_COLUMNS = {"id": "id", "title": "title", "text": "text"}
QUERY_DEFAULT_COLUMNS = {"id": "id", "query": "query", "positives": "positives"}
_SOURCE_KEYS = {"path", "columns", "metadata", "sheet", "title_format", "split"}
# Split names people write in evaluation files → ours (docs/schemas.md); compared stripped and case-insensitively.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "development": "dev",
    "test": "test", "testing": "test",
}  # fmt: skip
_FIRST_LINE_TITLE_MAX = 120


class IngestError(ValueError):
    """A config problem the user must fix; the message says what is wrong, where, and how to fix it."""


class UnreadableFile(Exception):
    """A single file that cannot be read (corrupt DOCX/PDF, not text): quarantined, the run goes on."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """One entry of ``ingest.documents`` / ``ingest.queries``."""

    path: Path
    key: str  # "ingest.documents[2]", for error messages
    columns: dict[str, str] = field(default_factory=dict)
    metadata: Path | None = None
    sheet: str | None = None
    # e.g. "{law_id}, Điều {article_id}: {title}" — builds titles from metadata fields when the corpus has no
    # informative title (ALQAC articles are all titled like "Phạm vi điều chỉnh", which says nothing of the law)
    title_format: str | None = None
    # queries only: the split every question of this source belongs to (a `columns.split` cell overrides it)
    split: str | None = None

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


@dataclass(frozen=True)
class IngestConfig:
    documents: list[SourceConfig]
    queries: list[SourceConfig]
    tone_style: ToneStyle = "old"
    min_chars: int = 20
    max_bad_fraction: float = 0.2
    repo: Path = Path(".")  # output `source` fields are relative to it (docs/schemas.md)


def normalize_split(value: Any) -> str | None:
    """``train``/``dev``/``test`` for a split name people write ("Train", "validation", "TEST"); None if unknown.

    A value outside the list is never guessed at: "public_test" or "trian" could be either side, and a test
    question silently drawn into training would leak.
    """
    if value is None:
        return None
    return SPLIT_NAMES.get(unicodedata.normalize("NFC", str(value)).strip().lower())


def _allowed_splits() -> str:
    return ", ".join(SPLIT_NAMES)


def _source(raw: Any, key: str, root: Path, *, queries: bool) -> SourceConfig:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or "path" not in raw:
        raise IngestError(f"params.yaml: `{key}` must be a mapping with at least `path:` (got {raw!r}).")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise IngestError(
            f"params.yaml: `{key}` has unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}."
        )
    path = root / str(raw["path"])
    if not path.exists():
        raise IngestError(
            f"params.yaml: `{key}.path` = {raw['path']!r}: no such file or folder (resolved to {path}). "
            "Fix the path (relative to `ingest.root`) or remove the source."
        )
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise IngestError(f"params.yaml: `{key}.columns` must map our names to column names, e.g. {{text: body}}.")
    if not queries and ("split" in raw or "split" in columns):
        raise IngestError(
            f"params.yaml: `{key}` has `split`, but splits belong to questions, not documents. Move `split:` "
            "(or `columns.split`) to the query source under `ingest.queries` that holds the questions."
        )
    split = None
    if raw.get("split") is not None:
        split = normalize_split(raw["split"])
        if split is None:
            raise IngestError(
                f"params.yaml: `{key}.split` = {raw['split']!r} is not a split name; allowed (any case): "
                f"{_allowed_splits()}. Fix the value or remove the key (its questions are then drawn by `pairs`)."
            )
    if not queries and path.is_dir() and "text" in columns:
        raise IngestError(f"params.yaml: `{key}` is a folder; `columns.text` only applies to table sources.")
    if path.is_file() and path.suffix.lower().lstrip(".") not in TABLE_FORMATS:
        kinds = "queries" if queries else "documents"
        raise IngestError(
            f"params.yaml: `{key}.path` = {raw['path']!r}: {kinds} tables must be "
            f"{'/'.join('.' + f for f in TABLE_FORMATS)}; for single documents point `path` at their folder."
        )
    if queries and path.is_dir():
        raise IngestError(f"params.yaml: `{key}.path` = {raw['path']!r} is a folder; queries come from one table.")
    metadata = None
    if raw.get("metadata"):
        metadata = root / str(raw["metadata"])
        if not metadata.is_file():
            raise IngestError(
                f"params.yaml: `{key}.metadata` = {raw['metadata']!r}: no such file (resolved to {metadata}). "
                "Fix the path (relative to `ingest.root`) or remove the key (the sidecar is optional)."
            )
    title_format = raw.get("title_format")
    if title_format is not None and (not isinstance(title_format, str) or "{" not in title_format):
        raise IngestError(
            f"params.yaml: `{key}.title_format` must be a string with {{field}} placeholders, "
            f"e.g. '{{law_id}}: {{title}}' (got {title_format!r})."
        )
    return SourceConfig(
        path=path,
        key=key,
        columns=dict(columns),
        metadata=metadata,
        sheet=raw.get("sheet"),
        title_format=title_format,
        split=split,
    )


def load_config(section: dict[str, Any], repo: str | Path = ".") -> IngestConfig:
    """Validate the ``ingest:`` params section; every config mistake is reported before any file is read.

    Source paths are relative to ``ingest.root`` (itself relative to the repository root ``repo``), so one
    DVC dependency covers every input, wherever the corpus lives.
    """
    root = Path(repo) / str(section.get("root", "."))
    if not root.is_dir():
        raise IngestError(
            f"params.yaml: `ingest.root` = {section.get('root')!r}: no such folder (resolved to {root}). "
            "Set it to the folder that holds your sources, relative to the repository root."
        )
    tone_style = section.get("tone_style", "old")
    if tone_style not in ("old", "new"):
        raise IngestError(f"params.yaml: `ingest.tone_style` must be old (hòa) or new (hoà), got {tone_style!r}.")
    docs = section.get("documents") or []
    queries = section.get("queries") or []
    if not isinstance(docs, list) or not isinstance(queries, list):
        raise IngestError("params.yaml: `ingest.documents` and `ingest.queries` must be lists of sources.")
    if not docs:
        raise IngestError("params.yaml: `ingest.documents` is empty; list at least one folder or table.")
    return IngestConfig(
        documents=[_source(d, f"ingest.documents[{i}]", root, queries=False) for i, d in enumerate(docs)],
        queries=[_source(q, f"ingest.queries[{i}]", root, queries=True) for i, q in enumerate(queries)],
        tone_style=tone_style,
        min_chars=int(section.get("min_chars", 20)),
        max_bad_fraction=float(section.get("max_bad_fraction", 0.2)),
        repo=Path(repo),
    )


# --------------------------------------------------------------------------------------------------------------
# Small parsers
# --------------------------------------------------------------------------------------------------------------


def as_id(value: Any) -> str | None:
    """Ids are compared as stripped NFC strings, so JSON ``15``, CSV ``"15"`` and Excel ``15.0`` all match."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = unicodedata.normalize("NFC", str(value)).strip()
    return text or None


def parse_positives(value: Any, known: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Relevant document ids from a list, ``"15, 37"``, ``"15;37"``, ``"[15, 37]"`` or ``'["a", "b"]'``.

    A string that is itself a known id is not split: ALQAC ids contain commas ("Luật Phòng, chống ma túy@32").
    Order is kept and repeats are dropped.
    """
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if as_id(stripped) in known:
            items: list[Any] = [stripped]
        elif stripped.startswith("["):
            try:
                parsed = json.loads(stripped)
                items = parsed if isinstance(parsed, list) else [parsed]
            except json.JSONDecodeError:
                items = re.split(r"[,;]", stripped.strip("[]"))
        else:
            items = re.split(r"[,;]", stripped)
        items = [i.strip().strip("\"'") if isinstance(i, str) else i for i in items]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    out: list[str] = []
    for item in items:
        doc_id = as_id(item)
        if doc_id and doc_id not in out:
            out.append(doc_id)
    return out


def parse_tags(value: Any) -> list[str]:
    """Tags from a list or a ``;``/``,``-separated string (the sidecar CSVs use ``;``)."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[;,]", str(value))
    return [t for t in (normalize_text(str(i)) for i in items) if t]


def _json_safe(value: Any) -> Any:
    """YAML front matter and Excel give dates; interchange files hold JSON types only."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def first_line_title(text: str) -> str | None:
    """A short first line followed by a blank line is a title ("Phạm vi điều chỉnh\\n\\nLuật này …")."""
    head, sep, _ = text.partition("\n\n")
    head = head.strip().lstrip("#").strip()
    if sep and head and "\n" not in head and len(head) <= _FIRST_LINE_TITLE_MAX:
        return head
    return None


def is_id_title(title: str, *names: str | None) -> bool:
    """Whether ``title`` is only a name of the record (its id, the id's last path part, the file stem).

    Such a "title" says nothing about the text, and the chunker prepends titles to every chunk: a table with only
    id and text columns made every chunk embed as "1\n<text>", "d_topic_3100\n<text>", teaching the model to
    match identifiers. Compared stripped and case-insensitively ("POL-001" is the id "pol-001").
    """
    key = title.strip().casefold()
    return any(key == name.strip().casefold() for name in names if name)


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_MD_H1 = re.compile(r"^#[ \t]+(\S.*?)[ \t#]*$", re.MULTILINE)


def split_front_matter(text: str) -> tuple[dict[str, Any], str, str | None]:
    """``(front matter, body, problem)``; front matter that is not a YAML mapping stays in the body."""
    m = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not m:
        return {}, text, None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        return {}, text, f"front matter is not valid YAML ({str(exc).splitlines()[0]}); kept as text"
    if not isinstance(data, dict):
        return {}, text, "front matter is not a key: value mapping; kept as text"
    return _json_safe(data), text[m.end() :], None


# --------------------------------------------------------------------------------------------------------------
# File readers: each returns (text, title or None); formats keep headings as "## " lines for the chunker
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Extracted:
    text: str
    title: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None


def _decode_file(path: Path) -> str:
    try:
        return decode_bytes(path.read_bytes())[0]
    except DecodeError as exc:
        raise UnreadableFile("decode_error", f"{path}: {exc}") from exc


def read_markdown(path: Path) -> Extracted:
    meta, body, problem = split_front_matter(_decode_file(path))
    h1 = _MD_H1.search(body)
    title = meta.pop("title", None) or (h1.group(1) if h1 else None)
    return Extracted(body, str(title) if title else None, meta, problem)


def read_txt(path: Path) -> Extracted:
    text = _decode_file(path)
    return Extracted(text, None)


def read_docx(path: Path) -> Extracted:
    """Paragraphs, headings (as ``## ``), list items (as ``- ``) and tables (cells joined with `` | ``), in order."""
    import docx
    from docx.table import Table as DocxTable
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises zipfile/lxml/KeyError errors for corrupt files
        raise UnreadableFile("unreadable_file", f"{path}: not a readable .docx ({type(exc).__name__}: {exc})") from exc
    blocks: list[str] = []
    style_title: str | None = None
    first_heading: str | None = None
    for child in document.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(child, document)
            text = para.text.strip()
            if not text:
                continue
            style = (para.style.name if para.style is not None else "") or ""
            if style == "Title":
                style_title = style_title or text
                blocks.append(f"# {text}")
            elif style.startswith("Heading"):
                first_heading = first_heading or text
                blocks.append(f"## {text}")
            elif style.startswith("List") or child.find(".//{*}numPr") is not None:
                blocks.append(f"- {text}")
            else:
                blocks.append(text)
        elif tag == "tbl":
            rows = []
            for row in DocxTable(child, document).rows:
                cells: list[str] = []
                seen: set[int] = set()
                for cell in row.cells:  # merged cells repeat the same underlying element
                    if id(cell._tc) in seen:
                        continue
                    seen.add(id(cell._tc))
                    cells.append(" ".join(cell.text.split()))
                if any(cells):
                    rows.append(" | ".join(cells))
            if rows:
                blocks.append("\n".join(rows))
    core_title = (document.core_properties.title or "").strip() or None
    return Extracted("\n\n".join(blocks), core_title or style_title or first_heading)


_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])-\n(?=[^\W\d_A-ZÀ-Ỹ])")
_LIST_ITEM = re.compile(r"^([-•*–+]\s|\d+[.)]\s|[a-zđ][.)]\s)")
_NUMBERED_HEADING = re.compile(r"^(\d+(\.\d+)*\.?|[IVXLC]+\.|(Chương|CHƯƠNG|Mục|MỤC|Phần|PHẦN|Điều|ĐIỀU)\s+\S+)\s+\S")
_TERMINAL = (".", "!", "?", ":", ";", "…", '"', "”", ")")


def _is_pdf_heading(line: str, prev: str | None) -> bool:
    """A short line with no sentence punctuation that is numbered ("2. Dòng thời gian") or all capitals."""
    if len(line) > 80 or line.endswith((".", ",", ";", ":")) or " | " in line:
        return False
    if prev is not None and prev and not prev.endswith(_TERMINAL) and prev[-1:].isalnum() and len(prev) > 60:
        return False  # the previous line wraps into this one
    letters = [c for c in line if c.isalpha()]
    all_caps = len(letters) >= 4 and all(c.isupper() for c in letters)
    return bool(_NUMBERED_HEADING.match(line)) or all_caps


def reflow_pdf_text(raw: str) -> str:
    """Turn PDF text lines back into paragraphs.

    PDF text has a hard newline at every visual line end, which would make every line a separate "sentence"
    unit for the chunker and split words hyphenated at the margin. Lines are joined when the break is a wrap
    (next line starts lower case, or the line is near full width and does not end a sentence); headings,
    list items and table rows stay on their own lines.
    """
    raw = _HYPHEN_BREAK.sub("", raw.replace("\r\n", "\n"))
    lines = [" ".join(line.split()) for line in raw.split("\n")]
    widths = sorted(len(line) for line in lines if line)
    if not widths:
        return ""
    full = widths[int(0.9 * (len(widths) - 1))]
    out: list[str] = []
    prev: str | None = None
    for line in lines:
        if not line:
            if out and out[-1] != "":
                out.append("")
            prev = None
            continue
        if _is_pdf_heading(line, prev):
            heading = line if _NUMBERED_HEADING.match(line) and line.split()[0] in _LEGAL_WORDS else f"## {line}"
            out.extend(["", heading, ""])
            prev = None
            continue
        joinable = (
            prev is not None
            and out
            and out[-1] != ""
            and not _LIST_ITEM.match(line)
            and " | " not in line
            and " | " not in prev
            and (line[0].islower() or (not prev.endswith(_TERMINAL) and len(prev) >= 0.75 * full))
        )
        if joinable:
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
        prev = line
    return "\n".join(out)


_LEGAL_WORDS = {"Chương", "CHƯƠNG", "Mục", "MỤC", "Phần", "PHẦN", "Điều", "ĐIỀU"}


def read_pdf(path: Path) -> Extracted:
    import pypdf

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed-xref chatter; real failures raise below
    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            reader.decrypt("")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or None
    except Exception as exc:  # pypdf raises PdfReadError, but also KeyError/ValueError on broken structures
        raise UnreadableFile("unreadable_file", f"{path}: not a readable PDF ({type(exc).__name__}: {exc})") from exc
    text = reflow_pdf_text("\n\n".join(pages))
    warning = None if text.strip() else "no text layer (scanned PDF?); OCR it before ingesting"
    return Extracted(text, str(meta_title).strip() or None if meta_title else None, warning=warning)


_HTML_DROP = ("script", "style", "nav", "footer", "header", "noscript", "template", "svg", "iframe", "form")
_HTML_BLOCKS = (
    "p", "div", "section", "article", "main", "aside", "blockquote", "pre", "table", "ul", "ol", "dl", "dt", "dd",
    "figure", "figcaption", "address", "h5", "h6", "hr",
)  # fmt: skip


def read_html(path: Path) -> Extracted:
    """Visible text with structure: h1–h4 → ``## ``, list items → ``- ``, table rows → cells joined by `` | ``.

    Page chrome is dropped (script/style/nav/header/footer, breadcrumb and cookie banners, and everything
    outside ``<main>`` when the page has one): repeated on every page, it would make all pages look alike.
    """
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(_decode_file(path), "html.parser")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else None
    root = soup.find("main") or soup.find("body") or soup
    for tag in root.find_all([*_HTML_DROP, _is_chrome]):
        tag.decompose()
    for node in root.find_all(string=True):
        if type(node) is not NavigableString:  # comments, doctype, CDATA, processing instructions
            node.extract()
        elif node.find_parent("pre") is None:  # source whitespace is insignificant outside <pre>
            node.replace_with(NavigableString(re.sub(r"\s+", " ", str(node))))
    for table in root.find_all("table"):
        rows = [
            " | ".join(" ".join(c.get_text(" ").split()) for c in tr.find_all(["td", "th"]))
            for tr in table.find_all("tr")
        ]
        table.replace_with(NavigableString("\n\n" + "\n".join(r for r in rows if r.strip(" |")) + "\n\n"))
    h1 = None
    for h in root.find_all(["h1", "h2", "h3", "h4"]):
        text = " ".join(h.get_text(" ").split())
        if h.name == "h1" and h1 is None:
            h1 = text
        h.replace_with(NavigableString(f"\n\n## {text}\n\n" if text else ""))
    for li in root.find_all("li"):
        for block in li.find_all(["p", "div"]):  # "<li><p>…</p></li>" is still one list line
            block.unwrap()
        li.insert_before(NavigableString("\n- "))
    for br in root.find_all("br"):
        br.replace_with(NavigableString("\n"))
    for block in root.find_all(_HTML_BLOCKS):
        block.insert_before(NavigableString("\n\n"))
        block.insert_after(NavigableString("\n\n"))
    return Extracted(root.get_text(), h1 or title)


def _is_chrome(tag: Any) -> bool:
    marks = " ".join([*(tag.get("class") or []), tag.get("id") or ""]).lower()
    return any(word in marks for word in ("breadcrumb", "cookie"))


READERS: dict[str, Callable[[Path], Extracted]] = {
    "md": read_markdown,
    "markdown": read_markdown,
    "txt": read_txt,
    "docx": read_docx,
    "pdf": read_pdf,
    "html": read_html,
    "htm": read_html,
}


# --------------------------------------------------------------------------------------------------------------
# Tables: rows with their line numbers
# --------------------------------------------------------------------------------------------------------------


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
    return _json_safe(value)


def read_table(path: Path, sheet: str | None = None, max_bad_fraction: float = 0.2) -> Table:
    """Read a CSV/XLSX/JSONL table; malformed rows are returned in ``bad`` (quarantined by the caller).

    JSONL is read leniently here (unlike :func:`ragtune.io.iter_jsonl`, which stops at the first bad line)
    because source files come from people, not from our own stages. A file that is mostly not JSON is a
    config error, not a data problem.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "xlsx":
        return _read_xlsx(path, sheet)
    try:
        text = decode_bytes(path.read_bytes())[0]
    except DecodeError as exc:
        raise UnreadableFile("decode_error", f"{path}: {exc}") from exc
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


# --------------------------------------------------------------------------------------------------------------
# The ingest run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    documents: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    quarantine: list[dict[str, Any]]
    metrics: dict[str, Any]
    files_read: int
    records_read: int
    warnings: list[str]


class _Run:
    """Mutable state of one ingest run: kept records, quarantine, counters."""

    def __init__(self, config: IngestConfig):
        self.config = config
        self.repo = config.repo.resolve()
        self.documents: list[dict[str, Any]] = []
        self.doc_ids: dict[str, str] = {}  # doc_id → source
        self.texts: dict[str, str] = {}  # normalized text → doc_id of the first document with it
        self.aliases: dict[str, str] = {}  # quarantined duplicate_text doc_id → kept doc_id
        self.quarantine: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.doc_read = 0
        self.repaired = 0
        self.query_repaired = 0
        self.unknown_positive_ids = 0
        self.query_ids: dict[str, str] = {}  # kept query_id → source
        self.query_ids_by_file: dict[Path, dict[str, str]] = {}  # query file → its own ids → source
        self.renamed_query_ids: list[tuple[str, str, str, str]] = []  # (id, kept as, source, first use of id)
        self.by_format: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()
        self.files_read = 0

    def rel(self, path: Path) -> str:
        """A path as written in output `source` fields: relative to the repository root, POSIX separators."""
        return Path(os.path.relpath(path.resolve(), self.repo)).as_posix()

    def reject(self, kind: str, source: str, reason: str, record: Any) -> None:
        self.quarantine.append({"stage": "ingest", "kind": kind, "source": source, "reason": reason, "record": record})

    def norm(self, text: str) -> str:
        out, repaired = normalize_text_with_flags(text, self.config.tone_style)
        self.repaired += repaired
        return out

    def add_document(
        self, *, doc_id: str | None, title: str | None, text: str | None, source: str, metadata: dict[str, Any],
        origin: str, fmt: str, raw: Any, title_format: str | None = None, stem: str | None = None,
    ) -> None:  # fmt: skip
        """Normalize, validate and keep (or quarantine) one document candidate.

        The title is a real one (given, or the text's short first line) or ``""``, never the id or the file
        ``stem``: chunks carry their title into the embedding, and the report/search show ``title or doc_id``.
        """
        self.doc_read += 1
        norm_text = self.norm(text or "")
        names = (doc_id, PurePosixPath(doc_id).name if doc_id else None, stem)
        norm_title = normalize_text(title, self.config.tone_style) if title else ""
        if not norm_title or is_id_title(norm_title, *names):
            norm_title = first_line_title(norm_text) or ""
            norm_title = "" if is_id_title(norm_title, *names) else norm_title
        meta = self._metadata(metadata)
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
            self.reject("document", source, "empty_text", raw if raw is not None else record)
            return
        if len(norm_text) < self.config.min_chars:
            self.reject("document", source, "too_short", record)
            return
        assert doc_id is not None
        if doc_id in self.doc_ids:
            self.reject("document", source, "duplicate_id", {**record, "duplicate_of": self.doc_ids[doc_id]})
            return
        if norm_text in self.texts:
            first = self.texts[norm_text]
            self.aliases[doc_id] = first
            self.reject("document", source, "duplicate_text", {**record, "duplicate_of": first})
            return
        self.doc_ids[doc_id] = source
        self.texts[norm_text] = doc_id
        self.documents.append(record)
        self.by_format[fmt] += 1
        self.by_source[origin] += 1

    def _metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in metadata.items():
            if value is None or value == "" or value == []:
                continue
            if key == "tags":
                out[key] = parse_tags(value)
            elif isinstance(value, str):
                out[key] = normalize_text(value, self.config.tone_style)
            else:
                out[key] = _json_safe(value)
        return out


def list_files(source: SourceConfig) -> list[Path]:
    """Files of a folder source, recursive, sorted by POSIX relative path; hidden folders/files skipped."""
    if not source.is_folder:
        return [source.path]
    files = [
        p
        for p in source.path.rglob("*")
        if p.is_file()
        and p.suffix.lower().lstrip(".") in FOLDER_FORMATS
        and not any(part.startswith(".") for part in p.relative_to(source.path).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(source.path).as_posix())


def _read_sidecar(run: _Run, source: SourceConfig) -> dict[str, dict[str, Any]]:
    """Metadata sidecar rows keyed by ``file`` (relative POSIX path); ``columns`` renames its columns."""
    assert source.metadata is not None
    table = read_table(source.metadata, max_bad_fraction=run.config.max_bad_fraction)
    run.files_read += 1
    if "file" not in table.columns and table.rows:
        raise IngestError(
            f"{source.metadata}: the metadata sidecar needs a `file` column (path relative to {source.path}); "
            f"columns found: {sorted(table.columns)}. Fix the file or `{source.key}.metadata`."
        )
    check_columns(table, source.metadata, source.columns, set(source.columns), set(), source.key)
    rename = {column: name for name, column in source.columns.items()}
    for line, raw, error in table.bad:
        run.reject("document", f"{run.rel(source.metadata)}:{line}", table.bad_reason, {"line": raw, "error": error})
    rows: dict[str, dict[str, Any]] = {}
    for row in table.rows:
        name = as_id(row.record.get("file"))
        if name is None:
            continue
        name = PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")
        rows[name] = {rename.get(k, k): v for k, v in row.record.items() if k != "file"} | {"_line": row.line}
    return rows


def _ingest_file(run: _Run, source: SourceConfig, path: Path, sidecar: dict[str, dict[str, Any]]) -> None:
    fmt = path.suffix.lower().lstrip(".")
    rel = unicodedata.normalize("NFC", path.relative_to(source.path).as_posix())
    src = run.rel(path)
    origin = run.rel(source.path)
    run.files_read += 1
    try:
        extracted = READERS[fmt](path)
    except UnreadableFile as exc:
        run.doc_read += 1
        run.reject("document", src, exc.reason, {"file": src, "error": str(exc)})
        sidecar.pop(rel, None)
        return
    if extracted.warning:
        run.warnings.append(f"{src}: {extracted.warning}")
    side = dict(sidecar.pop(rel, {}))
    side.pop("_line", None)
    meta = {**extracted.meta, **side}  # the sidecar wins over front matter
    doc_id = as_id(meta.pop("id", None)) or unicodedata.normalize("NFC", str(PurePosixPath(rel).with_suffix("")))
    title = meta.pop("title", None) or extracted.title
    if title is None and fmt == "txt":
        title = first_line_title(extracted.text)
    run.add_document(
        doc_id=doc_id,
        title=str(title) if title else None,  # no file-stem fallback: the stem is usually the id (add_document)
        text=extracted.text,
        source=src,
        metadata=meta,
        origin=origin,
        fmt=fmt,
        raw=None,
        title_format=source.title_format,
        stem=path.stem,
    )


def _ingest_table(run: _Run, source: SourceConfig) -> None:
    path = source.path
    src = run.rel(path)
    fmt = path.suffix.lower().lstrip(".")
    run.files_read += 1
    try:
        table = read_table(path, source.sheet, run.config.max_bad_fraction)
    except UnreadableFile as exc:
        run.doc_read += 1
        run.reject("document", src, exc.reason, {"file": src, "error": str(exc)})
        return
    columns = {**DOC_DEFAULT_COLUMNS, **source.columns}
    check_columns(table, path, columns, set(source.columns), {"text"}, source.key)
    mapped = {column: name for name, column in columns.items()}
    has_id = columns["id"] in table.columns
    for line, raw, error in table.bad:
        run.doc_read += 1
        run.reject("document", f"{src}:{line}", table.bad_reason, {"line": raw, "error": error})
    for row in table.rows:
        where = f"{src}:{row.line}"
        rec = row.record
        if rec.get(columns["text"]) is None and columns["text"] not in rec:
            run.doc_read += 1
            run.reject("document", where, "missing_column", {**rec, "missing": columns["text"]})
            continue
        doc_id = as_id(rec.get(columns["id"])) if has_id else f"{path.stem}:{row.line}"
        if doc_id is None:
            run.doc_read += 1
            run.reject("document", where, "missing_column", {**rec, "missing": columns["id"]})
            continue
        text = rec.get(columns["text"])
        title = rec.get(columns["title"])
        metadata = {mapped.get(k, k): v for k, v in rec.items() if mapped.get(k) not in ("id", "title", "text")}
        run.add_document(
            doc_id=doc_id,
            title=str(title) if title is not None else None,
            text=str(text) if text is not None else None,
            source=where,
            metadata=metadata,
            origin=src,
            fmt=fmt,
            raw=rec,
            title_format=source.title_format,
        )


def _ingest_queries(run: _Run, source: SourceConfig) -> tuple[list[dict[str, Any]], int]:
    """Queries of one table; returns ``(queries, records read)``. Positives are checked against kept documents."""
    path = source.path
    src = run.rel(path)
    run.files_read += 1
    try:
        table = read_table(path, source.sheet, run.config.max_bad_fraction)
    except UnreadableFile as exc:
        run.reject("query", src, exc.reason, {"file": src, "error": str(exc)})
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
    for line, raw, error in table.bad:
        run.reject("query", f"{src}:{line}", table.bad_reason, {"line": raw, "error": error})
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
                    f"(any case): {_allowed_splits()}. Fix the cell, leave it empty to use the source's `split:` "
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
        metadata = run._metadata(
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


def _keep_query_ids(run: _Run, source: SourceConfig, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def plan(config: IngestConfig) -> list[tuple[SourceConfig, Path]]:
    """Every document file to read, in output order (one entry per table source)."""
    return [(source, path) for source in config.documents for path in list_files(source)]


def ingest(
    config: IngestConfig,
    track: Callable[[Iterable[tuple[SourceConfig, Path]], str], Iterator[tuple[SourceConfig, Path]]] | None = None,
) -> IngestResult:
    """Read every source and return documents, queries, quarantine and metrics (nothing is written here).

    ``track`` wraps the file iteration (the stage passes a rich progress bar; tests pass nothing).
    """
    run = _Run(config)
    files = plan(config)
    # Sidecars first: a config error in any of them should stop the run before minutes of PDF parsing.
    sidecars = {s.key: _read_sidecar(run, s) for s in config.documents if s.is_folder and s.metadata}
    iterator = track(files, "ingest files") if track is not None else iter(files)
    for source, path in iterator:
        if source.is_folder:
            _ingest_file(run, source, path, sidecars.get(source.key, {}))
        else:
            _ingest_table(run, source)
    for source in config.documents:
        for name, row in sidecars.get(source.key, {}).items():  # rows whose file is not there: report, not drop
            assert source.metadata is not None
            run.reject("document", f"{run.rel(source.metadata)}:{row['_line']}", "missing_file",
                       {"file": name, **{k: v for k, v in row.items() if k != "_line"}})  # fmt: skip
    queries: list[dict[str, Any]] = []
    query_read = 0
    for source in config.queries:
        batch, n = _ingest_queries(run, source)
        query_read += n
        queries.extend(_keep_query_ids(run, source, batch))
    if run.renamed_query_ids:
        n, (old, new, where, first) = len(run.renamed_query_ids), run.renamed_query_ids[0]
        run.warnings.append(
            f"{n} query id(s) were already used by another query file and were kept under '<file stem>/<id>', "
            f"e.g. {where}: id {old!r} (first used at {first}) → {new!r}. Nothing was dropped; give the files "
            "distinct ids to keep your own."
        )
    metrics = _metrics(run, queries, query_read)
    return IngestResult(
        documents=run.documents,
        queries=queries,
        quarantine=run.quarantine,
        metrics=metrics,
        files_read=run.files_read,
        records_read=run.doc_read + query_read,
        warnings=run.warnings,
    )


def _metrics(run: _Run, queries: list[dict[str, Any]], query_read: int) -> dict[str, Any]:
    reasons = Counter(q["reason"] for q in run.quarantine)
    doc_q = [q for q in run.quarantine if q["kind"] == "document"]
    by_type = Counter(str(d["metadata"].get("document_type", "unknown")) for d in run.documents)
    return {
        "documents": {
            "read": run.doc_read,
            "kept": len(run.documents),
            "repaired_mojibake": run.repaired,
            "quarantined": sum(1 for q in doc_q if q["reason"] != "missing_file"),
            "duplicates": reasons["duplicate_id"] + reasons["duplicate_text"],
            "by_type": dict(sorted(by_type.items())),
            "by_source": dict(run.by_source),
            "by_format": dict(sorted(run.by_format.items())),
        },
        "queries": {
            "read": query_read,
            "kept": len(queries),
            "repaired_mojibake": run.query_repaired,
            # a query kept with some of its positives also has a quarantine entry; count rejected queries only
            "quarantined": query_read - len(queries),
            "unknown_positive_ids": run.unknown_positive_ids,
            "renamed_duplicate_ids": len(run.renamed_query_ids),
            "by_split": {s: sum(1 for q in queries if q["split"] == s) for s in ("train", "dev", "test")}
            | {"unassigned": sum(1 for q in queries if q["split"] is None)},
            "positives_per_query_mean": (
                round(statistics.fmean(len(q["positive_doc_ids"]) for q in queries), 3) if queries else 0.0
            ),
        },
        "quarantine_reasons": dict(sorted(reasons.items())),
    }
