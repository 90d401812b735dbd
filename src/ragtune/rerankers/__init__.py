"""Reranker kinds beyond the cross-encoder: inference classes with ``load`` / ``predict`` / ``save``.

``late_interaction`` (ColBERT-style MaxSim over the fine-tuned embedder's token vectors) and ``llm`` (a yes/no
causal LM, Qwen3-Reranker's recipe). Each saved folder holds ``ragtune_reranker.json`` naming its kind, which is
what :func:`ragtune.rerank.load_reranker` dispatches on; a folder without it is a sentence-transformers
CrossEncoder.
"""

MARKER = "ragtune_reranker.json"  # {"kind": ..., ...} in a shipped reranker's folder: what loaders dispatch on
