"""chunk: documents.jsonl → chunks.jsonl, sized in the embedder's own tokens and refused if training would cut one."""

from ragtune.chunking import run_chunk
from ragtune.console import stage
from ragtune.params import key, load_params, section
from ragtune.paths import Paths


def main() -> None:
    with stage("chunk") as summary:
        params = load_params()
        model_p, chunk_p = section(params, "model"), section(params, "chunk")
        train_max_seq_length = int(key(params, "train_embedder.max_seq_length"))
        summary.update(run_chunk(model_p, chunk_p, train_max_seq_length, Paths()))


if __name__ == "__main__":
    main()
