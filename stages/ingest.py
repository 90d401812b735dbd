"""ingest: params `ingest:` sources → data/interim/{documents,queries,quarantine}.jsonl + metrics/ingest.json."""

import sys

from ragtune.console import console, stage, track, warn
from ragtune.ingest import IngestError, ingest, load_config
from ragtune.io import write_json, write_jsonl
from ragtune.params import ParamsError, load_params, section


def main() -> int:
    try:
        with stage("ingest") as summary:
            config = load_config(section(load_params(), "ingest"))
            result = ingest(config, track=track)
            write_jsonl("data/interim/documents.jsonl", result.documents)
            write_jsonl("data/interim/queries.jsonl", result.queries)
            write_jsonl("data/interim/quarantine.jsonl", result.quarantine)
            write_json("metrics/ingest.json", result.metrics)
            for message in result.warnings:
                warn(message)
            if result.quarantine:
                reasons = ", ".join(f"{r} {n}" for r, n in result.metrics["quarantine_reasons"].items())
                warn(f"{len(result.quarantine)} quarantined ({reasons}); see data/interim/quarantine.jsonl")
            summary["read"] = f"{result.files_read} files / {result.records_read} records"
            summary["wrote"] = (
                f"{len(result.documents)} documents, {len(result.queries)} queries, "
                f"{len(result.quarantine)} quarantined"
            )
    except (IngestError, ParamsError) as exc:
        # A config problem: the message already says what, where and how to fix; a traceback would bury it.
        console.print(f"[bold red]ingest failed:[/] {exc}", markup=True, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
