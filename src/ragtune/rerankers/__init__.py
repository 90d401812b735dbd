"""Reranker kinds beyond the cross-encoder: inference classes with load/predict/save."""
