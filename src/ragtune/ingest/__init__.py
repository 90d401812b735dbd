"""ingest: heterogeneous sources (folders of md/txt/docx/pdf/html/pptx/odt/rtf, CSV/XLSX/JSONL tables) → one
document and one query schema (docs/schemas.md).

Two kinds of problems, handled differently on purpose:

* **Bad records** (a malformed JSONL line, an empty text, a duplicate id, a corrupt PDF, a label pointing at a
  document that does not exist) are data problems a corpus always has. They go to ``quarantine.jsonl`` with
  the reason and the original record, are counted in ``metrics/ingest.json``, and the run goes on: nothing
  disappears silently, and one bad file never blocks a retrain.
* **Config problems** (a source path that does not exist, a configured column that is not in the file, a
  "JSONL" file that is mostly not JSON) mean the params are wrong, and quarantining would silently drop a
  whole source. They raise :class:`IngestError` naming what, where and which params key to change.

The package is cut by concept: ``config`` (the params section), ``fields`` (ids, positives, titles, front
matter), ``readers`` (md/txt/docx/pdf/html), ``office`` (pptx/odt/rtf), ``walk`` (every entry of a document folder:
read, skipped or quarantined), ``tables`` (csv/xlsx/jsonl), ``state`` (what one run keeps and
quarantines), ``queries`` (labeled questions) and ``run`` (the loop and the stage's :func:`run_ingest`).
"""

from ragtune.ingest.config import (
    DOC_DEFAULT_COLUMNS,
    FOLDER_FORMATS,
    QUERY_DEFAULT_COLUMNS,
    SPLIT_NAMES,
    TABLE_FORMATS,
    IngestConfig,
    IngestError,
    SourceConfig,
    UnreadableFile,
    load_config,
    normalize_split,
)
from ragtune.ingest.fields import (
    as_id,
    first_line_title,
    is_id_title,
    parse_positives,
    parse_tags,
    split_front_matter,
)
from ragtune.ingest.office import read_odt, read_pptx, read_rtf
from ragtune.ingest.readers import (
    Extracted,
    read_docx,
    read_html,
    read_markdown,
    read_pdf,
    read_txt,
    reflow_pdf_text,
)
from ragtune.ingest.run import IngestResult, ingest, list_files, plan, run_ingest
from ragtune.ingest.tables import Row, Table, check_columns, read_table
from ragtune.ingest.walk import READERS, FolderEntry, walk_folder

__all__ = [
    "DOC_DEFAULT_COLUMNS",
    "FOLDER_FORMATS",
    "QUERY_DEFAULT_COLUMNS",
    "READERS",
    "SPLIT_NAMES",
    "TABLE_FORMATS",
    "Extracted",
    "FolderEntry",
    "IngestConfig",
    "IngestError",
    "IngestResult",
    "Row",
    "SourceConfig",
    "Table",
    "UnreadableFile",
    "as_id",
    "check_columns",
    "first_line_title",
    "ingest",
    "is_id_title",
    "list_files",
    "load_config",
    "normalize_split",
    "parse_positives",
    "parse_tags",
    "plan",
    "read_docx",
    "read_html",
    "read_markdown",
    "read_odt",
    "read_pdf",
    "read_pptx",
    "read_rtf",
    "read_table",
    "read_txt",
    "reflow_pdf_text",
    "run_ingest",
    "split_front_matter",
    "walk_folder",
]
