"""ingest: params `ingest:` sources → data/interim/{documents,queries,quarantine}.jsonl + metrics/ingest.json."""

from ragtune.console import stage, track
from ragtune.ingest import run_ingest
from ragtune.params import load_params, section
from ragtune.paths import Paths


def main() -> None:
    with stage("ingest") as summary:
        summary.update(run_ingest(section(load_params(), "ingest"), Paths(), track=track))


if __name__ == "__main__":
    main()
