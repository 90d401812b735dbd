"""index: embed every chunk with the fine-tuned embedder → models/index/ (what `ragtune search` loads)."""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.search import run_index


def main() -> None:
    with stage("index") as summary:
        params = load_params()
        summary.update(run_index(section(params, "model"), section(params, "bm25"), section(params, "access"), Paths()))


if __name__ == "__main__":
    main()
