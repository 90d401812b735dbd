"""The embedder's stages re-run on a scratch folder, and one embedder scored as evaluate scores it.

What the benchmarks share. A benchmark that asks "what if only the seed, or only the training split, differed"
runs the real stages, in process, through the same ``run_<stage>()`` functions the stage scripts call: their guards,
checkpoint choice and shipping rules are part of what it measures, so a copy of their logic would measure something
else. The stages write under a scratch :class:`~ragtune.paths.Paths`, so the repository's own outputs are never
touched, and the params go in as a dict, so no params.yaml is written.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ragtune.console import stage
from ragtune.evaluation.metrics import dense_ranking, score_systems
from ragtune.io import read_json
from ragtune.mining import run_negatives
from ragtune.params import section
from ragtune.paths import Paths
from ragtune.retrieval import DenseEncoder, DenseIndex, Embedder
from ragtune.train.embedder.run import run_train_embedder

# the pipeline artefacts (Paths attributes) the train_embedder stage reads
TRAIN_EMBEDDER_INPUTS = ("chunks", "train_groups", "dev", "test")


def copy_inputs(source: Paths, target: Paths, names: Iterable[str]) -> None:
    """Copy the artefacts ``names`` (:class:`~ragtune.paths.Paths` attributes: ``chunks``, ``dev``, …) from
    ``source`` to the same place under ``target``."""
    for name in names:
        dst = getattr(target, name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(getattr(source, name), dst)


def train_embedder(params: dict[str, Any], paths: Paths, *, negatives: bool = False) -> tuple[Path, dict, float]:
    """The negatives stage (when ``negatives``) and the train_embedder stage on ``paths``, as `dvc repro` runs them;
    returns the shipped embedder's folder, the stage's metrics and the seconds both stages took.

    One process may train several models in a row with nothing carried over: the trainer seeds Python's, NumPy's
    and torch's global generators from ``train_embedder.seed`` when it is built, before the first draw that
    training makes, and mining and the batch sampler draw from their own seeded generators.
    """
    model_p = section(params, "model")
    t0 = time.perf_counter()
    if negatives:
        with stage("negatives") as summary:
            summary.update(run_negatives(section(params, "negatives"), model_p, section(params, "bm25"), paths))
    with stage("train_embedder") as summary:
        summary.update(
            run_train_embedder(model_p, section(params, "train_embedder"), paths, bm25_p=section(params, "bm25"))
        )
    seconds = time.perf_counter() - t0
    return paths.embedder, read_json(paths.metrics("train_embedder")), seconds


def doc_scores(model: Any, qp: str, pp: str, chunks: list[dict], splits: dict[str, list[dict]]) -> dict[str, dict]:
    """Document-level mean and per-query metrics@10 per split, exactly as the evaluate stage computes them (no cache).

    Each split maps to ``{"mean": {...}, "per_query": {query_id: {...}}}``; the passages are encoded once.
    """
    enc = Embedder("trained", model, DenseEncoder(model, "", use_cache=False), qp, pp)
    index = DenseIndex([c["chunk_id"] for c in chunks], enc.encode_passages([c["text"] for c in chunks]))
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}
    out = {}
    for name, queries in splits.items():
        scored = score_systems({"m": dense_ranking(index, enc.encode_queries, queries)}, queries, chunk_to_doc, [10])
        out[name] = {"mean": scored["doc"]["m"], "per_query": scored["per_query"]["m"]}
    return out


def score(model: Any, qp: str, pp: str, chunks: list[dict], splits: dict[str, list[dict]]) -> dict[str, dict]:
    """Document-level ndcg@10 / mrr@10 per split, as the evaluate stage reports them."""
    return {
        name: {"ndcg@10": round(s["mean"]["ndcg@10"], 4), "mrr@10": round(s["mean"]["mrr@10"], 4)}
        for name, s in doc_scores(model, qp, pp, chunks, splits).items()
    }
