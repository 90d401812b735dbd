"""Field parsers shared by every source kind: ids, positives, tags, titles and Markdown front matter.

Sources come from people and tools that write the same value many ways (``15``, ``"15"``, ``15.0``; ``"15, 37"``,
``'["a", "b"]'``); these helpers turn each into the one form the output schema holds (docs/schemas.md).
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date, datetime
from typing import Any

import yaml

from ragtune.text import normalize_text

_FIRST_LINE_TITLE_MAX = 120


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


def text_cell(value: Any, joiner: str = "\n\n") -> tuple[str | None, str | None]:
    """``(text, problem)`` of a text/query/title cell: a string, or a list of strings joined with ``joiner``
    (paragraphs, for a text). Anything else (a dict, a nested list, a number in a text, true/false) has no text a
    user would mean: ``str()`` would keep its Python repr (``"{'vi': '…'}"``), so it is a ``problem`` instead."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return joiner.join(v.strip() for v in value if v.strip()), None
    kind = "list that is not all text" if isinstance(value, list | tuple) else type(value).__name__
    return None, f"holds a {kind} ({json.dumps(value, ensure_ascii=False, default=str)[:80]}), not text"


def title_cell(value: Any) -> tuple[str | None, str | None]:
    """Like :func:`text_cell` (parts joined with a space), but a number is a fine title ("2024", Excel's 15)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value), None
    return text_cell(value, " ")


def parse_tags(value: Any) -> list[str]:
    """Tags from a list or a ``;``/``,``-separated string (the sidecar CSVs use ``;``)."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[;,]", str(value))
    return [t for t in (normalize_text(str(i)) for i in items) if t]


def json_safe(value: Any) -> Any:
    """YAML front matter and Excel give dates; interchange files hold JSON types only."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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
    return json_safe(data), text[m.end() :], None
