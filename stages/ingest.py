"""ingest: params `ingest:` sources → data/interim/{documents,queries,quarantine}.jsonl + metrics/ingest.json."""

import sys

from ragtune.console import console, stage, track
from ragtune.ingest import IngestError, run_ingest
from ragtune.params import ParamsError, load_params, section
from ragtune.paths import Paths


def main() -> int:
    try:
        with stage("ingest") as summary:
            summary.update(run_ingest(section(load_params(), "ingest"), Paths(), track=track))
    except (IngestError, ParamsError) as exc:
        # A config problem: the message already says what, where and how to fix; a traceback would bury it.
        console.print(f"[bold red]ingest failed:[/] {exc}", markup=True, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
