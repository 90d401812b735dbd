"""index: embed every chunk with the fine-tuned embedder → models/index/ (what `ragtune search` loads)."""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.search import run_index


def main() -> None:
    params = load_params()
    model_p, bm25_p = section(params, "model"), section(params, "bm25")
    with stage("index") as summary:
        summary.update(run_index(model_p, bm25_p, Paths()))


if __name__ == "__main__":
    main()
