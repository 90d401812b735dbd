"""Fine-tuning, cut the way sentence-transformers cuts it: what both trainers share here, each trainer in its own
package (``embedder/``, ``reranker/``: config, data, trainer, run), and the stage function in ``run``.

Shared: ``config`` (the keys both read), ``schedule`` (``epochs: auto``), ``common`` (arguments, precision,
callbacks), ``checkpoints`` (resume), ``card`` (model cards), ``guards`` (no dev, not enabled), ``rows`` and
``batching`` (the embedder's rows and document-disjoint batches).
"""
