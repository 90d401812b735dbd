"""negatives: training pairs → FlagEmbedding-style groups {"query", "pos": [...], "neg": [...]}."""

from ragtune.console import stage
from ragtune.mining import run_negatives
from ragtune.params import load_params, section
from ragtune.paths import Paths


def main() -> None:
    with stage("negatives") as summary:
        params = load_params()
        n, model_p, bm25_p = section(params, "negatives"), section(params, "model"), section(params, "bm25")
        summary.update(run_negatives(n, model_p, bm25_p, Paths()))


if __name__ == "__main__":
    main()
