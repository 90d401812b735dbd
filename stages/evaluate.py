"""evaluate: rank held-out queries with every system; choose the served pipeline on dev evidence; write the report."""

from ragtune.console import stage
from ragtune.evaluation.run import run_evaluate
from ragtune.params import load_params, section
from ragtune.paths import Paths


def main() -> None:
    with stage("evaluate") as summary:
        params = load_params()
        summary.update(
            run_evaluate(
                section(params, "model"),
                section(params, "bm25"),
                section(params, "chunk"),
                section(params, "ingest"),
                section(params, "evaluate"),
                Paths(),
            )
        )


if __name__ == "__main__":
    main()
