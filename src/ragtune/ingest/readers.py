"""Document readers, one per folder format: each returns the text (headings kept as ``## `` lines for the chunker),
a title when the file has one, and front-matter metadata.

A file whose content cannot be read raises :class:`UnreadableFile`, so the run quarantines it and goes on; an
``OSError`` (permissions, I/O) passes through for the run to quarantine as a file. The heavy parsers (python-docx,
pypdf, BeautifulSoup) are imported inside their reader, so a corpus without PDFs never loads pypdf. The table of
readers by extension is ``ragtune.ingest.walk.READERS`` (with the office formats of ``ragtune.ingest.office``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.ingest.config import UnreadableFile
from ragtune.ingest.fields import split_front_matter
from ragtune.text import DecodeError, decode_bytes

_MD_H1 = re.compile(r"^#[ \t]+(\S.*?)[ \t#]*$", re.MULTILINE)


@dataclass
class Extracted:
    text: str
    title: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None


def decode_file(path: Path) -> str:
    """The text of a file in whatever encoding it came in; a file that is not text is quarantined, not fatal."""
    try:
        return decode_bytes(path.read_bytes())[0]
    except DecodeError as exc:
        raise UnreadableFile("decode_error", f"{path}: {exc}") from exc


_OLD_BINARY = {"docx": ".doc (Word 97-2003)", "pptx": ".ppt (PowerPoint 97-2003)", "odt": ".doc"}
_SAVE_FROM = {"docx": "Word or LibreOffice", "pptx": "PowerPoint or LibreOffice", "odt": "LibreOffice"}


def package_problem(path: Path, fmt: str, exc: Exception) -> str:
    """Why a .docx/.pptx/.odt (a ZIP package) did not open, in words a user can act on.

    python-docx says "Package not found at '…'" for a file that exists but is not a ZIP package, which reads as
    "file missing". The usual causes are an old binary Office file renamed to the new extension, or a file cut
    short by a copy or a download; the fix is the same: open it in an office program and save it as .{fmt}.
    """
    import zipfile

    with path.open("rb") as f:
        head = f.read(8)
    fix = f"open it in {_SAVE_FROM[fmt]} and save it as .{fmt}, or remove it from the folder"
    detail = f"({type(exc).__name__}: {exc})"
    if head.startswith(b"\xd0\xcf\x11\xe0"):  # OLE2 compound file: Word/Excel/PowerPoint 97-2003
        return f"{path}: not a valid .{fmt}: it is an old binary {_OLD_BINARY[fmt]} file renamed to .{fmt}; {fix}."
    if not zipfile.is_zipfile(path):
        return (
            f"{path}: not a valid .{fmt} (a .{fmt} is a ZIP package and this file is not one): probably an old "
            f"binary file renamed to .{fmt}, or a damaged or truncated file {detail}; {fix}."
        )
    return f"{path}: a damaged .{fmt} (the ZIP package opens but its content does not) {detail}; {fix}."


PERM_FIX = "give the user running ingest read permission, or remove it from the folder"


def read_failure(exc: OSError) -> tuple[str, str]:
    """``(reason, message)`` for a file that exists but cannot be read: quarantined, the run goes on."""
    if isinstance(exc, PermissionError):
        return "permission_denied", f"cannot open it ({exc.strerror or exc}); {PERM_FIX}"
    return "read_error", (
        f"cannot read it ({exc.strerror or exc}): it changed or vanished while ingest ran, or the disk or network "
        "share failed; fix it and rerun"
    )


def read_markdown(path: Path) -> Extracted:
    meta, body, problem = split_front_matter(decode_file(path))
    h1 = _MD_H1.search(body)
    title = meta.pop("title", None) or (h1.group(1) if h1 else None)
    return Extracted(body, str(title) if title else None, meta, problem)


def read_txt(path: Path) -> Extracted:
    text = decode_file(path)
    return Extracted(text, None)


def read_docx(path: Path) -> Extracted:
    """Paragraphs, headings (as ``## ``), list items (as ``- ``) and tables (cells joined with `` | ``), in order."""
    import docx
    from docx.table import Table as DocxTable
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(str(path))
    except OSError:
        raise  # the file cannot be read at all (permissions, I/O): the run quarantines it as a file
    except Exception as exc:  # python-docx raises PackageNotFoundError, zipfile/lxml/KeyError errors for corrupt files
        raise UnreadableFile("unreadable_file", package_problem(path, "docx", exc)) from exc
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
    except OSError:
        raise  # the file cannot be read at all (permissions, I/O): the run quarantines it as a file
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

    soup = BeautifulSoup(decode_file(path), "html.parser")
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
