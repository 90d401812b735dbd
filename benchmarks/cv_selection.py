"""Choose train_embedder changes by K-fold cross-validation over the train + dev questions, never on test.

Usage (repo root, venv active, after `dvc repro pairs`):
    python benchmarks/cv_selection.py --name default [--folds 5] [--set train_embedder.KEY=VALUE ...]
    python benchmarks/cv_selection.py --compare metrics/benchmarks/cv_selection/default.json \
        metrics/benchmarks/cv_selection/<name>.json
    python benchmarks/cv_selection.py --pipeline --name default [--set train_reranker.kind=late_interaction] \
        [--keep /tmp/cvp]   # keep fold models: a rerun re-runs only evaluate (resume, or a new selection rule)
    python benchmarks/cv_selection.py --pipeline --name b6 --set train_reranker.batch_size=6 --keep /tmp/cvp-b6 \
        --embedders-from /tmp/cvp   # the same folds' data and embedders: only the reranker is retrained

``--pipeline`` (issue 18) cross-validates the whole served pipeline, reranker and evaluate's dev choice included:
fold i is the test split, fold i+1 the dev split the pipeline is chosen on, the rest train; see
:func:`cross_validate_pipeline`. It writes metrics/benchmarks/cv_selection/pipeline_<name>.json with the paired
out-of-fold gain of the served pipeline over ft_dense and over its own retriever, and of every ``X+rerank`` over
``X``. The rest of this docstring is about the default mode, which compares train_embedder configs.

Why: the sample's dev split has 46 questions, so dev NDCG@10 cannot separate two configs that differ by a point or
two, and test (77 questions) must not be used to choose. Cross-validation scores every one of the 230 train + dev
questions once, by a model that never trained on it, at the price of one training run per fold.

For each fold this script lays out a scratch folder like the repository (`ragtune.paths.Paths`) with copies of the
files the stages read (chunks, synthetic pairs, test), makes the fold the dev split and the other folds the
training split, and runs the negatives and train_embedder stages there in this process, through
`ragtune.mining.run_negatives` and `ragtune.train.embedder.run.run_train_embedder` with params.yaml plus the `--set`
overrides, exactly as `dvc repro` would (best checkpoint on the fold, base kept if no checkpoint beats it). The
stage runs with `merge_alpha: 1`; this script then applies the configured WiSE-FT merge itself, so one training run
scores three shipping policies on the same queries:

- `unmerged`: the best checkpoint;
- `merged`: always `(1 - merge_alpha)·base + merge_alpha·fine-tuned`;
- `checked`: the stage's rule, the merge unless the unmerged model beats it on the fold by > `merge_tolerance`.

`--alphas 0.7,0.85` also scores `merged@α` and `checked@α` for other merge weights, from the same fold models.

The fold is both the checkpoint selector and the scorer, as dev is in the stage, so every config's out-of-fold score
is optimistic by the same mechanism; compare configs with each other, not with test.

Writes the per-query out-of-fold document-level NDCG@10 of base and of each policy, their means and paired-bootstrap
gains over base, and (for reporting only) the test score of each fold's model. `--compare A B` prints B's paired gain
over A per policy on the shared out-of-fold questions.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ragtune.console import stage
from ragtune.evaluation.metrics import paired_bootstrap
from ragtune.evaluation.run import run_evaluate
from ragtune.experiment import copy_inputs, doc_scores, train_embedder
from ragtune.io import read_json, read_jsonl, write_json, write_jsonl
from ragtune.models import load_embedder, resolve_model
from ragtune.params import load_params, section, with_overrides
from ragtune.paths import Paths
from ragtune.retrieval import model_prompt
from ragtune.train.embedder.config import EmbedderTrainConfig
from ragtune.train.embedder.merge import merge_lost_on_dev, merge_with_base
from ragtune.train.reranker.run import run_train_reranker

POLICIES = ("unmerged", "merged", "checked")


def folds_of(queries: list[dict], k: int, seed: int) -> list[list[dict]]:
    """A seeded shuffle dealt round-robin into k folds (the pairs stage already keeps duplicate texts together)."""
    order = sorted(queries, key=lambda q: q["query_id"])
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


def per_query(model, model_p: dict, chunks: list[dict], splits: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Document-level NDCG@10 per query id, per split, as the evaluate stage computes it (no embedding cache)."""
    qp = model_prompt(model, "query", model_p.get("query_prompt"))
    pp = model_prompt(model, "passage", model_p.get("passage_prompt"))
    return {
        name: {qid: round(m["ndcg@10"], 4) for qid, m in s["per_query"].items()}
        for name, s in doc_scores(model, qp, pp, chunks, splits).items()
    }


def mean(scores: dict[str, float]) -> float:
    return round(statistics.mean(scores.values()), 4) if scores else 0.0


def run_fold(params: dict, train: list[dict], fold: list[dict], workdir: Path) -> tuple[Path, dict, float]:
    """negatives + train_embedder in ``workdir`` with ``fold`` as dev; returns the model folder, metrics, seconds."""
    paths = Paths(workdir)
    copy_inputs(Paths(), paths, ("chunks", "synthetic", "test"))
    write_jsonl(paths.train, [{**q, "split": "train"} for q in train])
    write_jsonl(paths.dev, [{**q, "split": "dev"} for q in fold])
    return train_embedder(
        {**params, "train_embedder": {**params["train_embedder"], "merge_alpha": 1.0}}, paths, negatives=True
    )


def cross_validate(args: argparse.Namespace) -> None:
    params = with_overrides(load_params(), args.set)
    model_p = section(params, "model")
    cfg = EmbedderTrainConfig.from_params(section(params, "train_embedder"))
    paths = Paths()
    chunks = read_jsonl(paths.chunks)
    pool = read_jsonl(paths.train) + read_jsonl(paths.dev)
    test = read_jsonl(paths.test)
    folds = folds_of(pool, args.folds, args.fold_seed)

    base = load_embedder(resolve_model(model_p["embedder"]))
    base_scores = per_query(base, model_p, chunks, {"pool": pool, "test": test})
    alphas = [float(a) for a in args.alphas.split(",") if a and float(a) != cfg.merge_alpha]
    policies = [*POLICIES, *(f"{kind}@{a}" for a in alphas for kind in ("merged", "checked"))]
    oof: dict[str, dict[str, float]] = {p: {} for p in policies}
    test_means: dict[str, list[float]] = {p: [] for p in policies}
    fold_rows = []
    for i, fold in enumerate(folds):
        fold_ids = {q["query_id"] for q in fold}
        train = [q for q in pool if q["query_id"] not in fold_ids]
        with tempfile.TemporaryDirectory(prefix=f"ragtune-cv{i}-") as tmp:
            path, metrics, seconds = run_fold(params, train, fold, Path(tmp))
            model = load_embedder(str(path))
            scores = {"unmerged": per_query(model, model_p, chunks, {"fold": fold, "test": test})}
            tuned = copy.deepcopy(model.state_dict())
            unmerged_mean = mean(scores["unmerged"]["fold"])
            for alpha in (cfg.merge_alpha, *alphas):
                model.load_state_dict(tuned)
                merge_with_base(model, base, alpha)
                merged = per_query(model, model_p, chunks, {"fold": fold, "test": test})
                lost = merge_lost_on_dev(unmerged_mean, mean(merged["fold"]), cfg.merge_tolerance)
                suffix = "" if alpha == cfg.merge_alpha else f"@{alpha}"
                scores[f"merged{suffix}"] = merged
                scores[f"checked{suffix}"] = scores["unmerged"] if lost or alpha >= 1 else merged
        for p in policies:
            oof[p].update(scores[p]["fold"])
            test_means[p].append(mean(scores[p]["test"]))
        row = {
            "fold": i,
            "queries": len(fold),
            "train_groups": metrics["train"]["groups"],
            "train_rows": metrics["train"]["rows"],
            "shipped_by_stage": metrics["shipped"],
            "optimizer_steps": metrics["effective"]["optimizer_steps"],
            "stage_seconds": round(seconds, 1),
            "base": mean({q: base_scores["pool"][q] for q in fold_ids}),
            **{p: mean(scores[p]["fold"]) for p in policies},
            "checked_ships": "unmerged" if scores["checked"] is scores["unmerged"] else "merged",
        }
        fold_rows.append(row)
        print(json.dumps(row), flush=True)

    base_oof = {q: base_scores["pool"][q] for q in oof["unmerged"]}
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": f"{args.folds}-fold CV over train+dev (fold seed {args.fold_seed}); per fold stages/negatives.py "
        "+ stages/train_embedder.py with the fold as dev and merge_alpha 1, then the merge applied here; "
        "document-level NDCG@10",
        "overrides": args.set,
        "merge_alpha": cfg.merge_alpha,
        "merge_tolerance": cfg.merge_tolerance,
        "queries": {"out_of_fold": len(base_oof), "test": len(test)},
        "folds": fold_rows,
        "out_of_fold_ndcg@10": {"base": mean(base_oof), **{p: mean(oof[p]) for p in policies}},
        "gain_over_base": {p: paired_bootstrap(_wrap(oof[p]), _wrap(base_oof)) for p in policies},
        "test_ndcg@10_mean_over_fold_models": {
            "base": mean(base_scores["test"]),
            **{p: round(statistics.mean(v), 4) for p, v in test_means.items()},
        },
        "per_query": {"base": base_oof, **oof},
    }
    write_json(args.out or f"metrics/benchmarks/cv_selection/{args.name}.json", out)
    print(json.dumps({k: out[k] for k in ("out_of_fold_ndcg@10", "gain_over_base")}, indent=2))


def pipeline_splits(pool: list[dict], k: int, seed: int) -> list[dict[str, list[dict]]]:
    """Per fold i: test = fold i, dev = fold i+1 (mod k), train = the other k − 2 folds. Every question is a test
    question exactly once, and no fold's pipeline trains or chooses on its test questions."""
    if k < 3:
        raise SystemExit("--pipeline needs --folds ≥ 3 (a test fold, a dev fold and at least one training fold)")
    folds = folds_of(pool, k, seed)
    out = []
    for i, test in enumerate(folds):
        dev = folds[(i + 1) % k]
        held = {q["query_id"] for q in test + dev}
        out.append({"train": [q for q in pool if q["query_id"] not in held], "dev": dev, "test": test})
    return out


TRAINED = "trained.json"  # in a kept fold folder: what its models were trained on (see --keep)


def _training_key(params: dict, splits: dict[str, list[dict]]) -> dict:
    """What a fold's trained models depend on: the sections the negatives and training stages read, and the
    question ids of each split. A kept fold is reused only when this matches exactly."""
    sections = ("model", "negatives", "bm25", "train_embedder", "train_reranker")
    return {
        "params": {name: params.get(name) for name in sections},
        "splits": {name: sorted(q["query_id"] for q in qs) for name, qs in splits.items()},
    }


def _embedder_key(key: dict) -> dict:
    """A training key without the reranker's section: what a fold's data and embedder depend on."""
    return {**key, "params": {k: v for k, v in key["params"].items() if k != "train_reranker"}}


def reuse_embedder(source: Path, workdir: Path, key: dict) -> bool:
    """``--embedders-from``: copy ``source`` (a kept fold) into ``workdir`` without its reranker, when its data and
    embedder were made from the same params and splits as ``key``'s; returns whether it did.

    Why: a reranker setting is cross-validated on the same fold embedders as the run it is compared with, so the
    paired difference is the reranker's alone, and each fold costs the reranker's minutes instead of the whole
    chain's (2026-12-05: attention dropout, n_negatives, batch size and the frozen vocabulary were chosen this way).
    """
    marker = source / TRAINED
    if source.resolve() == workdir.resolve():
        raise SystemExit(f"--embedders-from {source.parent} is the --keep folder: name another one")
    if not marker.exists() or _embedder_key(read_json(marker)["key"]) != _embedder_key(key):
        return False
    shutil.rmtree(workdir, ignore_errors=True)
    ignore = shutil.ignore_patterns("*_checkpoints", TRAINED)
    shutil.copytree(source, workdir, ignore=ignore)
    shutil.rmtree(Paths(workdir).reranker, ignore_errors=True)
    return True


def run_pipeline_fold(
    params: dict, splits: dict[str, list[dict]], workdir: Path, embedders_from: Path | None = None
) -> tuple[list[dict], dict, dict]:
    """negatives, train_embedder, train_reranker and evaluate in ``workdir`` on these splits, with the params as
    shipped; returns evaluate's per-query test records, the served pipeline record and timings. When ``workdir``
    already holds models trained on the same splits and params (``--keep``), only evaluate runs again; when
    ``embedders_from`` holds this fold with the same data and embedder params (:func:`reuse_embedder`), only
    train_reranker and evaluate run."""
    paths = Paths(workdir)
    key = _training_key(params, splits)
    marker = workdir / TRAINED
    model_p = section(params, "model")
    reused = marker.exists() and read_json(marker).get("key") == key
    if reused:
        train_seconds = float(read_json(marker)["seconds"])
    elif embedders_from is not None and reuse_embedder(embedders_from, workdir, key):
        t0 = time.perf_counter()
        with stage("train_reranker") as summary:
            summary.update(run_train_reranker(model_p, section(params, "train_reranker"), paths))
        train_seconds = time.perf_counter() - t0
        write_json(marker, {"key": key, "seconds": round(train_seconds, 1), "reranker_only": True})
    else:
        marker.unlink(missing_ok=True)
        copy_inputs(Paths(), paths, ("documents", "chunks", "synthetic"))
        for name, queries in splits.items():
            write_jsonl(getattr(paths, name), [{**q, "split": name} for q in queries])
        t0 = time.perf_counter()
        train_embedder(params, paths, negatives=True)
        with stage("train_reranker") as summary:
            summary.update(run_train_reranker(model_p, section(params, "train_reranker"), paths))
        train_seconds = time.perf_counter() - t0
        write_json(marker, {"key": key, "seconds": round(train_seconds, 1)})
    t0 = time.perf_counter()
    with stage("evaluate") as summary:
        summary.update(
            run_evaluate(
                model_p,
                section(params, "bm25"),
                section(params, "chunk"),
                section(params, "ingest"),
                section(params, "evaluate"),
                paths,
            )
        )
    timing = {"train_seconds": round(train_seconds, 1), "evaluate_seconds": round(time.perf_counter() - t0, 1)}
    return read_jsonl(paths.per_query_test), read_json(paths.pipeline), timing | {"reused_training": reused}


def _steps(workdir: Path) -> list[dict]:
    """The fold's selection ladder, compact: each candidate's dev gain and interval, proxy, and verdict."""
    selection = read_json(Paths(workdir).metrics("evaluate")).get("selection") or {}
    keep = ("candidate", "incumbent", "gain", "ci_low", "ci_high", "adopted", "evidence")
    return [
        {k: st[k] for k in keep} | ({"proxy": st["proxy"]} if st.get("proxy") else {})
        for st in selection.get("steps", [])
    ]


def cross_validate_pipeline(args: argparse.Namespace) -> None:
    """``--pipeline``: the whole chain per fold, fold i as test, fold i+1 as dev (the pipeline is chosen on it, as
    evaluate chooses), the rest as train. Every train + dev question is scored once by a pipeline that neither
    trained nor chose on it, so the served pipeline's out-of-fold score is honest, unlike the fold-as-dev mode.

    ``--keep DIR`` keeps each fold's folder under DIR (models included). A later run with the same params and
    splits reuses a fold's trained models and re-runs only evaluate: an interrupted run resumes, and a change to
    evaluate's selection rule is re-measured in minutes instead of hours."""
    params = with_overrides(load_params(), args.set)
    paths = Paths()
    pool = read_jsonl(paths.train) + read_jsonl(paths.dev)
    oof: dict[str, dict[str, float]] = {}
    fold_rows = []
    for i, splits in enumerate(pipeline_splits(pool, args.folds, args.fold_seed)):
        fold, dev = splits["test"], splits["dev"]
        with contextlib.ExitStack() as stack:
            if args.keep:
                workdir = Path(args.keep) / f"fold{i}"
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"ragtune-cvp{i}-")))
            source = Path(args.embedders_from) / f"fold{i}" if args.embedders_from else None
            records, pipeline, timing = run_pipeline_fold(params, splits, workdir, source)
            steps = _steps(workdir)
        served, retriever = pipeline["system"], pipeline["retriever"]
        for rec in records:
            systems = {name: v["ndcg@10"] for name, v in rec["systems"].items()}
            systems["served"] = systems[served]
            systems["served_retriever"] = systems[retriever]
            for name, v in systems.items():
                oof.setdefault(name, {})[rec["query_id"]] = v
        row = {
            "fold": i,
            "train": len(splits["train"]),
            "dev": len(dev),
            "test": len(fold),
            "served": served,
            "fusion_weight": pipeline["fusion_weight"] if pipeline["rerank"] else None,
            **timing,
            **{n: mean({r["query_id"]: r["systems"][n]["ndcg@10"] for r in records}) for n in records[0]["systems"]},
            "steps": steps,
        }
        fold_rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
    pairs = {"served vs ft_dense": ("served", "ft_dense"), "served vs its retriever": ("served", "served_retriever")}
    pairs |= {f"{n} vs {n.partition('+')[0]}": (n, n.partition("+")[0]) for n in oof if n.endswith("+rerank")}
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "protocol": f"{args.folds}-fold CV over train+dev (fold seed {args.fold_seed}): fold i test, fold i+1 dev, "
        "the rest train; per fold negatives, train_embedder, train_reranker and evaluate as dvc repro runs them; "
        "document-level NDCG@10 of each fold's test questions",
        "overrides": args.set,
        "queries": len(oof.get("served", {})),
        "folds": fold_rows,
        "out_of_fold_ndcg@10": {n: mean(v) for n, v in sorted(oof.items())},
        "paired_gain": {k: paired_bootstrap(_wrap(oof[a]), _wrap(oof[b])) for k, (a, b) in pairs.items()},
        "per_query": oof,
    }
    write_json(args.out or f"metrics/benchmarks/cv_selection/pipeline_{args.name}.json", out)
    print(json.dumps({k: out[k] for k in ("out_of_fold_ndcg@10", "paired_gain")}, indent=2))


def _wrap(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    return {q: {"ndcg@10": v} for q, v in scores.items()}


def compare(a_path: str, b_path: str) -> None:
    """B's paired out-of-fold gain over A, per policy (per system for two ``--pipeline`` files), and B's policies
    against A's shipped (checked) policy where A has one."""
    a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (a_path, b_path))
    rows = {}
    for p in [p for p in b["per_query"] if p != "base"]:
        if p in a["per_query"]:
            rows[f"{p} vs {p}"] = paired_bootstrap(_wrap(b["per_query"][p]), _wrap(a["per_query"][p]))
        if "checked" in a["per_query"]:  # a --pipeline file has systems, not shipping policies
            rows[f"{p} vs A checked"] = paired_bootstrap(_wrap(b["per_query"][p]), _wrap(a["per_query"]["checked"]))
    print(json.dumps({"A": a["overrides"], "B": b["overrides"], "B_minus_A": rows}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="default", help="output file name under metrics/benchmarks/cv_selection/")
    ap.add_argument("--out", default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--alphas", default="", help="extra WiSE-FT merge weights to score, e.g. 0.7,0.85")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--compare", nargs=2, metavar=("A_JSON", "B_JSON"))
    ap.add_argument(
        "--pipeline",
        action="store_true",
        help="the whole chain per fold (embedder, reranker, evaluate's dev choice): the served pipeline out of fold",
    )
    ap.add_argument(
        "--keep",
        default=None,
        metavar="DIR",
        help="--pipeline: keep fold folders (models included) under DIR; a rerun reuses their training",
    )
    ap.add_argument(
        "--embedders-from",
        metavar="DIR",
        help="--pipeline with --keep: start each fold from DIR's kept fold (its data and embedder, made with the same "
        "params and splits) and retrain only the reranker, so a reranker setting is compared on the same embedders",
    )
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.pipeline:
        cross_validate_pipeline(args)
    else:
        cross_validate(args)


if __name__ == "__main__":
    main()
