"""bm25: chunks → their BM25 term counts, tokenized once for pairs and negatives (data/bm25)."""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.retrieval import run_bm25


def main() -> None:
    with stage("bm25") as summary:
        paths = Paths()
        summary.update(run_bm25(section(load_params(), "bm25"), paths.chunks, paths.bm25_counts))


if __name__ == "__main__":
    main()
