"""Readers for the other office formats a company folder holds: PowerPoint (.pptx), OpenDocument text (.odt) and
RTF, each through a well-kept pure-Python library (python-pptx, odfpy, striprtf) imported inside its reader.

They give the same :class:`Extracted` as the other readers: headings as ``## `` lines for the chunker, list items
as ``- ``, table rows as cells joined by `` | ``. A file the library cannot open raises :class:`UnreadableFile`
with what it probably is and how to fix it (see :func:`package_problem`). Old binary .doc/.ppt have no
pure-Python reader: the folder walk quarantines them with the fix (save as .docx/.pptx).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.ingest.config import UnreadableFile
from ragtune.ingest.readers import Extracted, decode_file, package_problem


def read_pptx(path: Path) -> Extracted:
    """Slide texts in slide order: each slide's title as a ``## `` heading, then its other text boxes and tables
    in the slide's shape order (group shapes included). Speaker notes are left out: they are the presenter's,
    not the document's. The title is the file's core title, else the first slide's title."""
    import pptx

    try:
        presentation = pptx.Presentation(str(path))
    except OSError:
        raise
    except Exception as exc:  # python-pptx raises PackageNotFoundError, zipfile and lxml errors for corrupt files
        raise UnreadableFile("unreadable_file", package_problem(path, "pptx", exc)) from exc
    blocks: list[str] = []
    first_title: str | None = None
    for slide in presentation.slides:
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        if title:
            first_title = first_title or title
            blocks.append(f"## {title}")
        for shape in slide.shapes:
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            blocks.extend(_shape_blocks(shape))
    core_title = (presentation.core_properties.title or "").strip() or None
    return Extracted("\n\n".join(blocks), core_title or first_title)


def _shape_blocks(shape: Any) -> list[str]:
    """Text of one slide shape: paragraphs of a text box (indented ones as list items), rows of a table."""
    from pptx.shapes.group import GroupShape

    if isinstance(shape, GroupShape):  # its members, in order
        return [block for member in shape.shapes for block in _shape_blocks(member)]
    if getattr(shape, "has_table", False) and shape.has_table:
        rows = [" | ".join(" ".join(cell.text.split()) for cell in row.cells) for row in shape.table.rows]
        rows = [row for row in rows if row.strip(" |")]
        return ["\n".join(rows)] if rows else []
    if not getattr(shape, "has_text_frame", False) or not shape.has_text_frame:
        return []
    lines = []
    for para in shape.text_frame.paragraphs:
        text = " ".join("".join(run.text for run in para.runs).split()) or " ".join(para.text.split())
        if text:
            lines.append(f"- {text}" if para.level > 0 else text)
    return ["\n".join(lines)] if lines else []


def read_odt(path: Path) -> Extracted:
    """Headings (``text:h``) as ``## ``, paragraphs, list items as ``- `` and table rows, in document order
    (sections and frames are walked into). The title is the file's ``dc:title``, else its first heading."""
    from odf import dc, teletype
    from odf.opendocument import load

    try:
        document = load(str(path))
    except OSError:
        raise
    except Exception as exc:  # odfpy raises zipfile/KeyError/xml errors for corrupt files
        raise UnreadableFile("unreadable_file", package_problem(path, "odt", exc)) from exc
    blocks: list[str] = []
    headings: list[str] = []

    def visit(node: Any, in_list: bool = False) -> None:
        for child in node.childNodes:
            name = child.qname[1] if getattr(child, "qname", None) else ""
            if name in ("h", "p"):
                text = " ".join(teletype.extractText(child).split())
                if not text:
                    continue
                if name == "h":
                    headings.append(text)
                    blocks.append(f"## {text}")
                else:
                    blocks.append(f"- {text}" if in_list else text)
            elif name == "table":
                rows = [
                    " | ".join(" ".join(teletype.extractText(cell).split()) for cell in row.childNodes)
                    for row in _odt_rows(child)
                ]
                rows = [row for row in rows if row.strip(" |")]
                if rows:
                    blocks.append("\n".join(rows))
            elif name in ("list", "list-item", "list-header"):
                visit(child, in_list=True)
            elif name in ("section", "frame", "text-box", "div", "index-body", "table-of-content"):
                visit(child, in_list)

    visit(document.text)
    titles = document.meta.getElementsByType(dc.Title) if document.meta is not None else []
    meta_title = " ".join(teletype.extractText(titles[0]).split()) if titles else ""
    return Extracted("\n\n".join(blocks), meta_title or (headings[0] if headings else None))


def _odt_rows(table: Any) -> list[Any]:
    """The ``table:table-row`` elements of a table, also those inside header-row and row-group elements."""
    rows: list[Any] = []
    for child in table.childNodes:
        name = child.qname[1] if getattr(child, "qname", None) else ""
        if name == "table-row":
            rows.append(child)
        elif name in ("table-header-rows", "table-rows", "table-row-group"):
            rows.extend(_odt_rows(child))
    return rows


def read_rtf(path: Path) -> Extracted:
    """Plain text of an RTF file (striprtf decodes the code page the file declares, e.g. ``\\ansicpg1258``).

    Each paragraph (``\\par``) becomes a block of its own, as in the other readers. RTF carries no reliable heading
    markup, so the text has none; the title comes from its short first line.
    """
    from striprtf.striprtf import rtf_to_text

    raw = decode_file(path)
    if not raw.lstrip("\ufeff \t\r\n").startswith("{\\rtf"):
        raise UnreadableFile(
            "unreadable_file",
            f"{path}: not an RTF file (it does not start with '{{\\rtf'); if it is plain text, rename it to .txt.",
        )
    try:
        text = rtf_to_text(raw)
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise UnreadableFile(
            "decode_error", f"{path}: the RTF text cannot be decoded ({exc}); re-save it as .docx or UTF-8 .txt."
        ) from exc
    paragraphs = (" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n"))
    return Extracted("\n\n".join(p for p in paragraphs if p), None)  # paragraphs apart, as the other readers
