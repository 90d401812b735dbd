"""Rerankers other than the cross-encoder of :mod:`ragtune.rerank`, one module per kind (``train_reranker.kind``).

Each saves a ``ragtune_reranker.json`` marker (``{"kind": ...}``) beside its weights, so a loader can tell the
kinds apart from the folder alone.
"""
