"""train_embedder: training groups → a fine-tuned sentence-transformers embedder (resumable, measured on dev).

Runs as a single process (`python stages/train_embedder.py`) or under DDP (`torchrun --nproc_per_node N ...`).
"""

from ragtune.console import stage
from ragtune.params import load_params, section
from ragtune.paths import Paths
from ragtune.train.embedder.run import run_train_embedder


def main() -> None:
    with stage("train_embedder") as summary:
        params = load_params()
        summary.update(
            run_train_embedder(
                section(params, "model"),
                section(params, "train_embedder"),
                Paths(),
                bm25_p=section(params, "bm25"),
                access_p=section(params, "access"),
            )
        )


if __name__ == "__main__":
    main()
