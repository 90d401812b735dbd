"""The folder walk: every entry of a document folder, each with what ingest does with it, so that nothing in a
folder is passed over without a count.

An entry is read as a document (its extension has a reader in :data:`READERS`), skipped because it is read
elsewhere (a metadata sidecar, another configured source), or quarantined with a reason (kind ``file``): an
unsupported format, no extension, a hidden name, a link that dangles, loops or leads outside ``ingest.root``, a
FIFO or socket, a folder that cannot be listed. A folder that is not walked into (hidden, unreadable, a link out
of the root) is one entry. :func:`file_metrics` adds the entries up from their records, so
``seen = read + quarantined + skipped`` is a check that can fail, not an identity.

Links are followed only where they stay inside ``ingest.root`` (or the source folder itself, when params point
it elsewhere): ``docs/passwd.txt → /etc/passwd`` must not become a document. ``ingest.follow_external_links:
true`` lifts that for corpora assembled from links.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ragtune.ingest.config import TABLE_FORMATS, IngestConfig, SourceConfig
from ragtune.ingest.office import read_odt, read_pptx, read_rtf
from ragtune.ingest.readers import PERM_FIX, Extracted, read_docx, read_html, read_markdown, read_pdf, read_txt
from ragtune.ingest.state import IngestRun

READERS: dict[str, Callable[[Path], Extracted]] = {
    "md": read_markdown,
    "markdown": read_markdown,
    "txt": read_txt,
    "docx": read_docx,
    "pdf": read_pdf,
    "html": read_html,
    "htm": read_html,
    "pptx": read_pptx,
    "odt": read_odt,
    "rtf": read_rtf,
}
SKIP_REASONS = ("sidecar", "other_source")  # read elsewhere: counted as skipped, not quarantined

_READ = "/".join(f".{fmt}" for fmt in READERS)
_TABLE_HINT = (
    "tables are sources of their own: list it under `ingest.documents` with `columns:` (or as the folder's "
    "`metadata:` sidecar)"
)
_UNSUPPORTED_HINTS = {
    "doc": "an old binary Word file (no pure-Python reader exists): open it in Word or LibreOffice, save as .docx",
    "ppt": "an old binary PowerPoint file: open it in PowerPoint or LibreOffice and save it as .pptx",
    "xls": f"an old binary Excel file: save it as .xlsx; {_TABLE_HINT}",
    "json": "JSON is not read: write it as JSONL (one object per line) and list it under `ingest.documents` with "
    "`columns:`",
    **{fmt: _TABLE_HINT for fmt in (*TABLE_FORMATS, "tsv")},
}


@dataclass(frozen=True)
class FolderEntry:
    """One entry of a document folder (or a table source, with ``reason`` None) and what ingest does with it."""

    path: Path  # as found in the folder: a link is not resolved
    rel: str  # POSIX path relative to the source folder: output order and the default doc_id
    reason: str | None = None  # None: read it as a document; else why not
    message: str = ""  # what it is and how to fix it, for the quarantine record

    @property
    def skipped(self) -> bool:
        return self.reason in SKIP_REASONS


def walk_folder(source: SourceConfig, config: IngestConfig, claimed: dict[Path, str]) -> list[FolderEntry]:
    """Every entry of ``source``'s folder, recursively, sorted by relative POSIX path (the output order).

    ``claimed`` maps resolved paths that other params entries read (sidecars, table and query files, other
    document folders) to the skip reason. Nothing is opened here: a FIFO would block a read.
    """
    root = config.root.resolve()
    top = source.path.resolve()
    entries: list[FolderEntry] = []

    def visit(directory: Path, rel: PurePosixPath, ancestors: frozenset[Path]) -> None:
        try:
            with os.scandir(directory) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            entries.append(FolderEntry(directory, rel.as_posix(), "unreadable_dir", _unreadable_dir(exc)))
            return
        for child in children:
            path, child_rel = Path(child.path), rel / child.name
            entry, walk_into = _classify(path, child_rel.as_posix(), root, top, config, claimed, ancestors)
            if walk_into is not None:
                visit(path, child_rel, ancestors | {walk_into})
            elif entry is not None:
                entries.append(entry)

    visit(source.path, PurePosixPath(), frozenset({top}))
    return sorted(entries, key=lambda e: e.rel)


def _classify(
    path: Path, rel: str, root: Path, top: Path, config: IngestConfig, claimed: dict[Path, str],
    ancestors: frozenset[Path],
) -> tuple[FolderEntry | None, Path | None]:  # fmt: skip
    """``(entry, None)`` for a file-like entry, ``(None, resolved folder)`` for a folder to walk into."""
    real = Path(os.path.realpath(path))  # never raises, also for a dangling link or a loop
    if real in claimed and real != top:
        return FolderEntry(path, rel, claimed[real], f"read as {claimed[real].replace('_', ' ')}"), None
    if path.name.startswith("."):
        return FolderEntry(path, rel, "hidden", _HIDDEN), None
    is_link = path.is_symlink()
    try:
        info = os.stat(path)  # follows links
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return FolderEntry(path, rel, "symlink_loop", f"a symbolic link loop; {_LINK_FIX}"), None
        if is_link:
            return FolderEntry(path, rel, "dangling_symlink", _dangling(path)), None
        return FolderEntry(path, rel, "unreadable_file", f"cannot stat it ({exc.strerror}); {PERM_FIX}"), None
    if is_link and not config.follow_external_links and not (real.is_relative_to(root) or real.is_relative_to(top)):
        message = (
            f"a symbolic link to {real}, outside `ingest.root` ({root}); links out of the corpus are refused so "
            "that no file from elsewhere on the machine becomes a document. Copy what you mean into the folder, "
            "or set `ingest.follow_external_links: true`"
        )
        return FolderEntry(path, rel, "outside_root_link", message), None
    if stat.S_ISDIR(info.st_mode):
        if real in ancestors:
            return FolderEntry(path, rel, "symlink_loop", f"a link to its own ancestor {real}; {_LINK_FIX}"), None
        return None, real
    if not stat.S_ISREG(info.st_mode):
        return FolderEntry(path, rel, "not_a_regular_file", f"a {_kind(info.st_mode)}, not a file; remove it"), None
    ext = PurePosixPath(path.name).suffix.lower().lstrip(".")
    if not ext:
        return FolderEntry(path, rel, "no_extension", _NO_EXTENSION), None
    if ext not in READERS:
        hint = _UNSUPPORTED_HINTS.get(ext, f"ingest reads {_READ}; convert it to one of them or remove it")
        return FolderEntry(path, rel, f"unsupported_format:.{ext}", hint), None
    return FolderEntry(path, rel), None


_HIDDEN = (
    "hidden (its name starts with '.'): editor, system and version-control files live there; rename it without "
    "the dot to ingest it"
)
_NO_EXTENSION = f"no extension: ingest picks the reader by extension; rename it (e.g. add .txt), ingest reads {_READ}"
_LINK_FIX = "fix or remove the link"


def _dangling(path: Path) -> str:
    return f"a symbolic link to {os.readlink(path)}, which does not exist; {_LINK_FIX}"


def _unreadable_dir(exc: OSError) -> str:
    return (
        f"cannot list this folder ({exc.strerror or exc}); give the user running ingest read and execute "
        "permission on it (chmod a+rx), or remove it"
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def claimed_paths(config: IngestConfig) -> dict[Path, str]:
    """Resolved paths that params read as something other than a folder document: sidecars, tables, folders."""
    claimed: dict[Path, str] = {}
    for source in [*config.documents, *config.queries]:
        claimed.setdefault(source.path.resolve(), "other_source")
        if source.metadata is not None:
            claimed[source.metadata.resolve()] = "sidecar"
    return claimed


def file_metrics(run: IngestRun) -> dict[str, Any]:
    """``metrics/ingest.json`` → ``files``: every entry of every document folder, by outcome, from its record.

    ``seen`` counts the walk's entries; ``read`` the files handed to a reader (their documents are balanced under
    ``documents``); ``quarantined`` the quarantine records of kind ``file``; ``skipped`` the skip records.
    ``unaccounted`` is ``seen`` minus the three, and must be 0.
    """
    quarantined = Counter(q["reason"] for q in run.quarantine if q["kind"] == "file")
    skipped = Counter(s["reason"] for s in run.files_skipped)
    n_quarantined, n_skipped = sum(quarantined.values()), sum(skipped.values())
    return {
        "seen": run.files_seen,
        "read": run.folder_files_read,
        "quarantined": n_quarantined,
        "skipped": n_skipped,
        "unaccounted": run.files_seen - run.folder_files_read - n_quarantined - n_skipped,
        "quarantine_reasons": dict(sorted(quarantined.items())),
        "skip_reasons": dict(sorted(skipped.items())),
    }
