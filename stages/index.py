"""index: embed every chunk with the fine-tuned embedder → models/index/ (what `ragtune search` loads)."""

from ragtune.console import stage
from ragtune.io import read_jsonl
from ragtune.params import load_params, section
from ragtune.retrieval import load_dense
from ragtune.search import INDEX_DIR, write_index

EMBEDDER = "models/embedder"


def main() -> None:
    params = load_params()
    model_p, bm25_p = section(params, "model"), section(params, "bm25")
    with stage("index") as summary:
        chunks = read_jsonl("data/chunks/chunks.jsonl")
        documents = read_jsonl("data/interim/documents.jsonl")
        embedder = load_dense(model_p, name=EMBEDDER)
        vectors = embedder.encode_passages([c["text"] for c in chunks])
        write_index(
            INDEX_DIR,
            chunks,
            documents,
            vectors,
            {
                "embedder": EMBEDDER,
                "query_prompt": embedder.query_prompt,
                "passage_prompt": embedder.passage_prompt,
                "bm25": {k: bm25_p[k] for k in ("tokenizer", "backend", "k1", "b") if k in bm25_p},
            },
        )
        summary["read"] = f"{len(chunks)} chunks of {len(documents)} documents"
        summary["wrote"] = f"{INDEX_DIR}/ ({vectors.shape[0]} × {vectors.shape[1]} vectors, chunks, manifest)"


if __name__ == "__main__":
    main()
