"""Held-out evaluation: score every system on the same queries, choose the pipeline search serves, report.

- :mod:`~ragtune.evaluation.metrics`: ranking metrics, per-query document-level scores, the paired bootstrap;
- :mod:`~ragtune.evaluation.systems`: every split ranked by every retriever, weights chosen on dev;
- :mod:`~ragtune.evaluation.selection`: the evidence ladder that chooses the served pipeline;
- :mod:`~ragtune.evaluation.report`: warnings, metrics/evaluate.json, the Markdown report;
- :mod:`~ragtune.evaluation.bakeoff`, :mod:`~ragtune.evaluation.forgetting`: cost side, out-of-domain check;
- :mod:`~ragtune.evaluation.run`: the evaluate stage (:func:`~ragtune.evaluation.run.run_evaluate`).

Nothing is imported here on purpose: the embedder trainer imports :mod:`ragtune.evaluation.metrics` alone, and a
package ``__init__`` that pulled in the stage would make it load (and dvc.yaml depend on) the whole evaluation.
"""
