"""Training/evaluation pairs: a leak-free train/dev/test split of labeled queries, plus self-supervised pairs.

Questions keep the split ingest fixed for them (a competition's test file, a curated dev set); the rest are
drawn by a seeded shuffle.

Positives only ever come from labels (a query's relevant documents) or from a document's own structure (its
title, a section heading, one of its sentences). Neighbouring documents are never positives, and pairs carry no
invented graded scores: MultipleNegativesRankingLoss needs only (query, positive), with other positives in the
batch as negatives.

``split`` (the split plan, ``query_key``), ``align`` (positive chunk of a relevant document), ``synthetic``,
``checks`` (``validate``, the leak gate) and ``run`` (``run_pairs``, the stage). ``run`` is not re-exported here:
train_embedder imports ``query_key`` from this package, and everything this file imports becomes a dependency of that
stage (its dvc.yaml deps and resume fingerprint), so editing the pairs stage's wiring must not re-run training.
"""

from ragtune.pairs.align import ScoreFn, align_positive_chunks, positive_chunks
from ragtune.pairs.checks import validate
from ragtune.pairs.split import QUARANTINE_REASONS, SPLITS, SplitPlan, query_key, split_queries
from ragtune.pairs.synthetic import cap_synthetic, synthetic_pairs, training_synthetic, use_synthetic

__all__ = [
    "QUARANTINE_REASONS",
    "SPLITS",
    "ScoreFn",
    "SplitPlan",
    "align_positive_chunks",
    "cap_synthetic",
    "positive_chunks",
    "query_key",
    "split_queries",
    "synthetic_pairs",
    "training_synthetic",
    "use_synthetic",
    "validate",
]
