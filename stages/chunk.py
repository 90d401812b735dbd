"""chunk: documents.jsonl → chunks.jsonl, sized in the embedder's own tokens."""

import statistics

from ragtune.chunking import build_chunker, chunk_corpus
from ragtune.console import stage
from ragtune.io import read_jsonl, write_json, write_jsonl
from ragtune.params import load_params, section


def main() -> None:
    params = load_params()
    model_p, chunk_p = section(params, "model"), section(params, "chunk")
    with stage("chunk") as summary:
        docs = read_jsonl("data/interim/documents.jsonl")
        chunker = build_chunker(model_p, chunk_p)
        chunks = chunk_corpus(docs, chunker)
        write_jsonl("data/chunks/chunks.jsonl", chunks)
        tokens = [c["n_tokens"] for c in chunks]
        per_doc: dict[str, int] = {}
        for c in chunks:
            per_doc[c["doc_id"]] = per_doc.get(c["doc_id"], 0) + 1
        write_json(
            "metrics/chunk.json",
            {
                "documents": len(docs),
                "chunks": len(chunks),
                "chunks_per_doc_mean": round(len(chunks) / max(1, len(docs)), 3),
                "chunks_per_doc_max": max(per_doc.values(), default=0),
                "tokens_mean": round(statistics.fmean(tokens), 1) if tokens else 0,
                "tokens_median": statistics.median(tokens) if tokens else 0,
                "tokens_max": max(tokens, default=0),
                "over_max_tokens": sum(1 for t in tokens if t > int(chunk_p["max_tokens"])),
            },
        )
        summary["read"] = f"{len(docs)} documents"
        summary["wrote"] = f"{len(chunks)} chunks (median {statistics.median(tokens) if tokens else 0} tokens)"


if __name__ == "__main__":
    main()
