"""ragtune: fine-tune Vietnamese retrieval models (embedder + reranker) in a reproducible DVC pipeline."""

__version__ = "0.1.0"
