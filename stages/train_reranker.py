"""train_reranker: the fine-tuned embedder's candidates → a cross-encoder reranker (resumable, measured on dev)."""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.train.reranker.run import run_train_reranker


def main() -> None:
    with stage("train_reranker") as summary:
        params = load_params()
        summary.update(
            run_train_reranker(
                section(params, "model"), section(params, "train_reranker"), Paths(), access_p=section(params, "access")
            )
        )


if __name__ == "__main__":
    main()
