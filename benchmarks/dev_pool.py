"""Does scoring dev against a fixed candidate pool keep the checkpoint the full corpus keeps, and what does it save?
(issue 20, item 6: "dev evaluation that scales").

Usage (repo root, venv active, after `dvc repro negatives`):
    python benchmarks/dev_pool.py [--k 10,20] [--set train_embedder.KEY=VALUE ...] [--out FILE]

The train_embedder stage re-scores dev at every eval step; sentence-transformers' IR evaluator re-encodes its whole
corpus each time. With `train_embedder.dev_pool_k` > 0 its corpus is a fixed pool instead: each dev question's
labeled chunks plus BM25's and the base model's top k (`ragtune.train.embedder.dev.build_dev_pool`).

This script trains the embedder once, in this process, on a scratch folder holding copies of what the stage reads
(`ragtune.experiment`), exactly as `dvc repro` runs it: the stage builds its own pool and chooses its checkpoint with
it. Its dev evaluator is observed, not replaced: every time the stage scores dev (before training, at every eval
step, and the WiSE-FT merge check after training) the same model is also scored by the full-corpus evaluator and by
a pooled evaluator for each extra `--k`, each timed. The stage's training is unchanged by the observers (the
choice only decides which checkpoint is loaded at the end, and early stopping is off by default), so one run
gives every evaluator's choice: the eval step with its best ndcg@10 (the first, as transformers keeps the first
best).

Writes metrics/benchmarks/dev_pool.json: per eval step each evaluator's ndcg@10 and seconds; per evaluator its
corpus size, mean seconds per eval, the step it would keep, whether that is the full corpus's choice, and the full
corpus's ndcg@10 at that step (regret: what the pooled choice costs, measured on the full corpus); the merge check
under each; and the pool's build time (as the stage reports it, with whatever the embedding cache held, and here
without the cache: BM25 index + the base model encoding every chunk).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ragtune.experiment import TRAIN_EMBEDDER_INPUTS, copy_inputs, train_embedder
from ragtune.io import read_jsonl, write_json
from ragtune.models import load_embedder, resolve_model
from ragtune.params import load_params, section, with_overrides
from ragtune.paths import Paths
from ragtune.retrieval import model_prompt
from ragtune.train.embedder import run as embedder_run
from ragtune.train.embedder.config import EmbedderTrainConfig
from ragtune.train.embedder.dev import dev_pool, dev_questions, pool_rankings
from ragtune.train.embedder.merge import merge_lost_on_dev

FULL = "full"


def label(k: int) -> str:
    """An evaluator's name in the JSON: ``full`` (the whole corpus, dev_pool_k 0) or ``pool@k``."""
    return FULL if k == 0 else f"pool@{k}"


def phase_names(calls: Sequence[dict[str, Any]]) -> list[str]:
    """Each dev scoring's name: ``before`` (the base model, before training), the eval step (``"18"``) during
    training, then ``unmerged`` and ``merged`` (the merge check after training), in call order. A call the trainer
    makes carries its step (> 0); the stage's own calls carry none (-1)."""
    names, trained = [], False
    after = iter(("unmerged", "merged"))
    for call in calls:
        if call["step"] > 0:
            trained = True
            names.append(str(call["step"]))
        else:
            names.append(next(after, f"after{len(names)}") if trained else "before")
    return names


def summarize(calls: Sequence[dict[str, Any]], stage: str, merge_tolerance: float) -> dict[str, Any]:
    """Per evaluator: the eval step it would keep (first best ndcg@10 among the training evals), its mean seconds
    per training eval, whether it keeps the full corpus's step, and the full corpus's ndcg@10 there; per scoring, every
    evaluator's ndcg@10 and seconds; and each evaluator's merge decision. ``calls``: one record per dev scoring,
    ``{"step": int, "scores": {evaluator: {"ndcg@10": x, "seconds": s}}}``; ``stage`` names the evaluator the stage
    chose with."""
    names = phase_names(calls)
    by_name = dict(zip(names, calls, strict=True))
    steps = [n for n, c in zip(names, calls, strict=True) if c["step"] > 0]
    evaluators = list(calls[0]["scores"]) if calls else []
    chosen = {}
    for ev in evaluators:
        scores = [by_name[n]["scores"][ev]["ndcg@10"] for n in steps]
        chosen[ev] = steps[scores.index(max(scores))] if steps else None  # the first best, as transformers keeps
    out: dict[str, Any] = {}
    for ev in evaluators:
        row: dict[str, Any] = {
            "used_by_stage": ev == stage,
            # over the training evals: the stage's check before training reads the pool's base vectors, so it
            # costs its evaluator less than the observers (who encode), and would bias the comparison
            "seconds_per_eval": round(statistics.mean(by_name[n]["scores"][ev]["seconds"] for n in steps or names), 2),
            "chosen_step": chosen[ev],
        }
        if FULL in chosen and chosen[ev] is not None:
            full_at = {n: by_name[n]["scores"][FULL]["ndcg@10"] for n in steps}
            row["agrees_with_full"] = chosen[ev] == chosen[FULL]
            row["full_ndcg@10_at_chosen_step"] = round(full_at[chosen[ev]], 4)
            row["regret_full_ndcg@10"] = round(max(full_at.values()) - full_at[chosen[ev]], 4)
        if "unmerged" in by_name and "merged" in by_name:
            unmerged, merged = (by_name[n]["scores"][ev]["ndcg@10"] for n in ("unmerged", "merged"))
            row["merge_check"] = "undone" if merge_lost_on_dev(unmerged, merged, merge_tolerance) else "kept"
        out[ev] = row
    if FULL in out:
        for ev, row in out.items():
            if ev != FULL and row["seconds_per_eval"]:
                row["speedup_vs_full"] = round(out[FULL]["seconds_per_eval"] / row["seconds_per_eval"], 2)
    per_scoring = {
        n: {ev: {k: round(v, 4) for k, v in s.items()} for ev, s in c["scores"].items()}
        for n, c in zip(names, calls, strict=True)
    }
    return {"evaluators": out, "scorings": per_scoring}


def observed(stage: Any, stage_label: str, observers: dict[str, Any]) -> Any:
    """A sentence-transformers ``SequentialEvaluator`` of the stage's dev evaluator and the observers, each timed,
    that returns the stage's scores only: the trainer chooses exactly as it does without the observers. Every call
    is recorded in ``.calls`` (:func:`summarize` reads them)."""
    from sentence_transformers.base.evaluation import SequentialEvaluator

    class Observed(SequentialEvaluator):
        def __init__(self) -> None:
            super().__init__([stage, *observers.values()], main_score_function=lambda scores: scores[0])
            self.labels = [stage_label, *observers]
            self.primary_metric = stage.primary_metric
            self.calls: list[dict[str, Any]] = []

        def __call__(
            self, model: Any, output_path: str | None = None, epoch: float = -1, steps: int = -1, **kwargs: Any
        ) -> dict:
            # kwargs (the base model's pool vectors before training) fit the stage's own corpus only: the observers,
            # each over another corpus, encode theirs
            scores, result = {}, {}
            for name, ev in zip(self.labels, self.evaluators, strict=True):
                t0 = time.perf_counter()
                got = ev(model, output_path if ev is stage else None, epoch, steps, **(kwargs if ev is stage else {}))
                seconds = time.perf_counter() - t0
                scores[name] = {"ndcg@10": float(got[f"{ev.name}_cosine_ndcg@10"]), "seconds": seconds}
                if ev is stage:
                    result = got
            self.calls.append({"step": steps, "scores": scores})
            return result

    return Observed()


@contextlib.contextmanager
def observing(pools: dict[int, list[str]], stage_k: int, seen: dict[str, Any]) -> Iterator[None]:
    """While active, the train_embedder stage builds its dev evaluator as always, wrapped in :class:`Observed` with
    a full-corpus evaluator and one per pool in ``pools`` (k → chunk ids) besides its own (:func:`observed`).
    ``seen`` receives the wrapper and the pool the stage built."""
    real = embedder_run.build_ir_evaluator

    def build(*args: Any, **kwargs: Any) -> Any:
        stage_ev = real(*args, **kwargs)
        seen["stage_pool"] = kwargs.get("pool")
        observers = {
            label(k): real(*args, **{**kwargs, "pool": ids or None, "name": label(k).replace("@", "")})
            for k, ids in sorted(pools.items())
            if k != stage_k
        }
        seen["observed"] = observed(stage_ev, label(stage_k), observers)
        return seen["observed"]

    embedder_run.build_ir_evaluator = build
    try:
        yield
    finally:
        embedder_run.build_ir_evaluator = real


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", default="", help="extra pool depths to observe, e.g. 10,20 (the stage's own always runs)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--out", default="metrics/benchmarks/dev_pool.json")
    args = ap.parse_args(argv)

    params = with_overrides(load_params(), args.set)
    model_p, bm25_p = section(params, "model"), section(params, "bm25")
    cfg = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    paths = Paths()
    chunks = read_jsonl(paths.chunks)
    dev = dev_questions(read_jsonl(paths.dev), cfg.dev_level)
    if not dev:
        raise SystemExit(f"{paths.dev} has no question labeled at dev_level {cfg.dev_level}: there is no dev to score")
    ks = sorted({0, cfg.dev_pool_k, *(int(k) for k in args.k.split(",") if k.strip())})
    if max(ks) == 0:
        raise SystemExit("no pool to compare with the full corpus: give --k, or keep train_embedder.dev_pool_k > 0")

    # every pool from one set of rankings at the deepest k, with the base model as the stage loads it, but without
    # the embedding cache: the seconds are those of a cold build
    base = load_embedder(resolve_model(model_p["embedder"], revision=model_p.get("revision")))
    base.max_seq_length = cfg.max_seq_length
    t0 = time.perf_counter()
    rankings, _ = pool_rankings(
        dev,
        chunks,
        max(ks),
        base=base,
        base_fingerprint="",
        query_prompt=model_prompt(base, "query", model_p.get("query_prompt")),
        passage_prompt=model_prompt(base, "passage", model_p.get("passage_prompt")),
        bm25_params=bm25_p,
        batch_size=int(model_p["batch_size"]),
        max_seq_length=model_p.get("max_seq_length"),  # as the stage builds its pool
    )
    build_seconds = time.perf_counter() - t0
    del base
    built = {k: dev_pool(dev, chunks, cfg.dev_level, rankings.values(), k) for k in ks if k}
    pools = {0: [], **{k: ids for k, (ids, _) in built.items()}}
    chunk_to_doc = {c["chunk_id"]: c["doc_id"] for c in chunks}

    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ragtune-dev-pool-") as tmp, observing(pools, cfg.dev_pool_k, seen):
        scratch = Paths(Path(tmp))
        copy_inputs(paths, scratch, TRAIN_EMBEDDER_INPUTS)
        _, metrics, seconds = train_embedder(params, scratch)
    if "observed" not in seen or not seen["observed"].calls:
        raise SystemExit(f"the stage did not train ({metrics['shipped']}): there are no checkpoints to choose from")
    summary = summarize(seen["observed"].calls, label(cfg.dev_pool_k), cfg.merge_tolerance)
    for k, ids in pools.items():
        row = summary["evaluators"][label(k)]
        row["chunks"] = len(ids) if k else len(chunks)
        row["fraction_of_corpus"] = round(row["chunks"] / len(chunks), 4)
        if k:  # MaxP NDCG@10 wants ten distinct documents in each question's own candidates
            own = built[k][1].values()
            row["docs_per_query_min"] = min(len({chunk_to_doc[c] for c in cids}) for cids in own)
    stage_pool = seen.get("stage_pool")
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU'}",
        "protocol": "stages/train_embedder.py once, in process, on copies of the repository's chunks, training "
        "groups, dev and test, with params.yaml plus the overrides; at every dev scoring the stage's evaluator, the "
        "full-corpus evaluator and a pooled evaluator per extra k score the same model; chosen step = first best "
        "ndcg@10 over the training evals; document level unless dev_level says otherwise",
        "overrides": args.set,
        "dev_level": cfg.dev_level,
        "dev_questions": len(dev),
        "corpus_chunks": len(chunks),
        "stage": {
            "dev_pool_k": cfg.dev_pool_k,
            "pool": metrics["dev"].get("pool"),
            "pool_matches_this_script": stage_pool == (pools[cfg.dev_pool_k] or None),
            "optimizer_steps": metrics["effective"]["optimizer_steps"],
            "eval_steps": metrics.get("plan", {}).get("eval_steps"),
            "shipped": metrics["shipped"],
            "stage_seconds": round(seconds, 1),
        },
        "pool_build_seconds_uncached": round(build_seconds, 1),
        **summary,
    }
    write_json(args.out, out)
    keys = ("chunks", "seconds_per_eval", "chosen_step", "agrees_with_full", "regret_full_ndcg@10")
    for ev, row in summary["evaluators"].items():
        print(ev, {k: row.get(k) for k in keys}, flush=True)


if __name__ == "__main__":
    main()
