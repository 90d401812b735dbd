"""Where every pipeline artefact lives, written out once.

dvc.yaml names the same paths (DVC cannot import Python); ``tests/test_paths.py`` checks that each path dvc.yaml
lists as a stage's output or data dependency is one of these, so the two cannot drift apart.

``Paths(root)`` puts the whole layout under ``root``: the stages use the repository root (``Path(".")``, so that
strings such as ``models/embedder`` that end up in model cards and reports stay relative), and unit tests use a
temporary folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The artefact layout of one pipeline checkout."""

    root: Path = field(default_factory=lambda: Path("."))

    def _p(self, *parts: str) -> Path:
        return Path(self.root, *parts)

    # ---------------------------------------------------------------------------------------------- data
    @property
    def documents(self) -> Path:
        return self._p("data", "interim", "documents.jsonl")

    @property
    def queries(self) -> Path:
        return self._p("data", "interim", "queries.jsonl")

    @property
    def ingest_quarantine(self) -> Path:
        return self._p("data", "interim", "quarantine.jsonl")

    @property
    def chunks(self) -> Path:
        return self._p("data", "chunks", "chunks.jsonl")

    @property
    def bm25_counts(self) -> Path:
        """The chunks' BM25 term counts (the bm25 stage): a folder of .npy arrays, the vocabulary and a manifest."""
        return self._p("data", "bm25")

    @property
    def questions(self) -> Path:
        """LLM-generated questions that passed every filter (the questions stage; empty when it is off)."""
        return self._p("data", "questions", "questions.jsonl")

    @property
    def questions_quarantine(self) -> Path:
        return self._p("data", "questions", "quarantine.jsonl")

    @property
    def answer_cache(self) -> Path:
        """The LLM's raw answers, appended as they arrive (a DVC ``persist`` output: repro never deletes it)."""
        return self._p("data", "questions", "answers.jsonl")

    def split(self, name: str) -> Path:
        """``train``, ``dev``, ``test`` or ``synthetic`` question pairs, or ``quarantine``."""
        return self._p("data", "pairs", f"{name}.jsonl")

    @property
    def train(self) -> Path:
        return self.split("train")

    @property
    def dev(self) -> Path:
        return self.split("dev")

    @property
    def test(self) -> Path:
        return self.split("test")

    @property
    def synthetic(self) -> Path:
        return self.split("synthetic")

    @property
    def pairs_quarantine(self) -> Path:
        return self.split("quarantine")

    @property
    def train_groups(self) -> Path:
        """The embedder's training groups with mined hard negatives."""
        return self._p("data", "negatives", "train_groups.jsonl")

    @property
    def reranker_train_groups(self) -> Path:
        return self._p("data", "reranker", "train_groups.jsonl")

    @property
    def reranker_dev_groups(self) -> Path:
        return self._p("data", "reranker", "dev_groups.jsonl")

    @property
    def reranker_distill_lists(self) -> Path:
        return self._p("data", "reranker", "distill_lists.jsonl")

    # -------------------------------------------------------------------------------------------- models
    @property
    def embedder(self) -> Path:
        return self._p("models", "embedder")

    @property
    def embedder_checkpoints(self) -> Path:
        return self._p("models", "embedder_checkpoints")

    @property
    def reranker(self) -> Path:
        return self._p("models", "reranker")

    @property
    def reranker_checkpoints(self) -> Path:
        return self._p("models", "reranker_checkpoints")

    @property
    def index(self) -> Path:
        return self._p("models", "index")

    @property
    def pipeline(self) -> Path:
        """The pipeline chosen on dev (``models/pipeline.json``), what search and serve run."""
        return self._p("models", "pipeline.json")

    # ----------------------------------------------------------------------------------- metrics, reports
    def metrics(self, stage: str) -> Path:
        """A stage's metrics JSON (``metrics/<stage>.json``; ``models`` is the bake-off's cost side)."""
        return self._p("metrics", f"{stage}.json")

    def benchmark(self, name: str) -> Path:
        return self._p("metrics", "benchmarks", f"{name}.json")

    @property
    def recall_at_k(self) -> Path:
        return self._p("metrics", "recall_at_k.csv")

    def live(self, stage: str) -> Path:
        """dvclive's folder for a training stage (its plots are a DVC plot)."""
        return self._p("dvclive", stage)

    @property
    def report(self) -> Path:
        return self._p("reports", "evaluation.md")

    @property
    def per_query_test(self) -> Path:
        return self._p("reports", "per_query_test.jsonl")

    def all(self) -> list[Path]:
        """Every artefact path above, for the dvc.yaml check."""
        props = [
            name for name, value in vars(type(self)).items() if isinstance(value, property) and not name.startswith("_")
        ]
        stages = (
            "ingest",
            "chunk",
            "questions",
            "pairs",
            "negatives",
            "train_embedder",
            "train_reranker",
            "evaluate",
            "models",
        )
        return (
            [getattr(self, name) for name in props]
            + [self.metrics(s) for s in stages]
            + [self.live("train_embedder") / "plots" / "metrics", self.live("train_reranker") / "plots" / "metrics"]
        )
