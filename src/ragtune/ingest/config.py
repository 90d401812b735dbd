"""The ``ingest:`` params section, validated before any file is read, and the two kinds of ingest problems.

:class:`IngestError` is a config problem the user must fix (the run stops); :class:`UnreadableFile` is one bad file
(it is quarantined and the run goes on). See the package docstring for why the two are kept apart.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import UserError
from ragtune.schema import Key, Str, check_mapping, check_section
from ragtune.text import ToneStyle

# read from document folders (readers in ragtune.ingest.walk.READERS); anything else there is quarantined, counted
FOLDER_FORMATS = ("md", "markdown", "txt", "docx", "pdf", "html", "htm", "pptx", "odt", "rtf")
TABLE_FORMATS = ("csv", "xlsx", "jsonl")
DOC_DEFAULT_COLUMNS = {"id": "id", "title": "title", "text": "text"}
QUERY_DEFAULT_COLUMNS = {"id": "id", "query": "query", "positives": "positives"}
# A source's keys; `columns` (our name → column name) and `split` (a split name) have checks of their own below.
_SOURCE_KEYS = {
    "path": Str("a folder or table, relative to ingest.root", nonempty=True),
    "columns": Key("any"),
    "metadata": Str("a metadata table of the folder's files, relative to ingest.root", null=True),
    "sheet": Str("the XLSX sheet to read (put a numeric name in quotes)", null=True),
    "title_format": Str("titles built from metadata fields, e.g. '{law_id}: {title}'", null=True),
    "split": Key("any"),
}
# Split names people write in evaluation files → ours (docs/schemas.md); compared stripped and case-insensitively.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "development": "dev",
    "test": "test", "testing": "test",
}  # fmt: skip


class IngestError(UserError, ValueError):
    """A config problem the user must fix; the message says what is wrong, where, and how to fix it."""


class UnreadableFile(Exception):
    """A single file that cannot be read (corrupt DOCX/PDF, not text): quarantined, the run goes on."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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
    root: Path = Path(".")  # `ingest.root`: links in document folders must stay inside it ...
    follow_external_links: bool = False  # ... unless `ingest.follow_external_links` is true


def normalize_split(value: Any) -> str | None:
    """``train``/``dev``/``test`` for a split name people write ("Train", "validation", "TEST"); None if unknown.

    A value outside the list is never guessed at: "public_test" or "trian" could be either side, and a test
    question silently drawn into training would leak.
    """
    if value is None:
        return None
    return SPLIT_NAMES.get(unicodedata.normalize("NFC", str(value)).strip().lower())


def allowed_splits() -> str:
    return ", ".join(SPLIT_NAMES)


def _source(raw: Any, key: str, root: Path, *, queries: bool) -> SourceConfig:
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict) or "path" not in raw:
        raise IngestError(f"params.yaml: `{key}` must be a mapping with at least `path:` (got {raw!r}).")
    problems = check_mapping(key, raw, _SOURCE_KEYS, partial=True)
    if problems:
        raise IngestError("params.yaml " + "; ".join(problems) + ".")
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
                f"{allowed_splits()}. Fix the value or remove the key (its questions are then drawn by `pairs`)."
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
    problems = check_section("ingest", section, partial=True)  # types and ranges of the keys given, before any use
    if problems:
        raise IngestError("params.yaml " + "; ".join(problems) + ".")
    root = Path(repo) / str(section.get("root", "."))
    if not root.is_dir():
        raise IngestError(
            f"params.yaml: `ingest.root` = {section.get('root')!r}: no such folder (resolved to {root}). "
            "Set it to the folder that holds your sources, relative to the repository root."
        )
    tone_style = section.get("tone_style", "old")
    docs = section.get("documents") or []
    queries = section.get("queries") or []
    if not docs:
        raise IngestError("params.yaml: `ingest.documents` is empty; list at least one folder or table.")
    follow_external_links = bool(section.get("follow_external_links", False))  # a bool: checked above
    return IngestConfig(
        documents=[_source(d, f"ingest.documents[{i}]", root, queries=False) for i, d in enumerate(docs)],
        queries=[_source(q, f"ingest.queries[{i}]", root, queries=True) for i, q in enumerate(queries)],
        tone_style=tone_style,
        min_chars=int(section.get("min_chars", 20)),
        max_bad_fraction=float(section.get("max_bad_fraction", 0.2)),
        repo=Path(repo),
        root=root,
        follow_external_links=follow_external_links,
    )
