"""pairs: labeled queries → train/dev/test split (fixed by ingest, else seeded) with aligned positive chunks; plus
self-supervised and LLM-generated pairs (pairs.generated), and, with no labeled dev/test, a synthetic held-out split.
Nothing is written until the leak check has passed."""

from ragtune.console import stage
from ragtune.pairs.run import run_pairs
from ragtune.params import load_params, section
from ragtune.paths import Paths


def main() -> None:
    with stage("pairs") as summary:
        params = load_params()
        summary.update(run_pairs(section(params, "pairs"), section(params, "model"), section(params, "bm25"), Paths()))


if __name__ == "__main__":
    main()
