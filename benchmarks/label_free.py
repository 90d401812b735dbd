"""The label-free measurement: fine-tune with no labeled question, then score on a labeled test set never trained on.

Usage (repo root, venv active):
    python benchmarks/label_free.py --self-supervised --params examples/alqac2023.params.yaml
    python benchmarks/label_free.py --llm --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct \
        [--api-key-env OPENAI_API_KEY] --params examples/alqac2023.params.yaml
    [--ingest FILE] [--set SECTION.KEY=VALUE ...] [--max-synthetic-pairs N] [--max-steps N] [--out FILE]

Most organisations have documents and no labeled questions (issue 17). This answers "what does ragtune's label-free
path buy on a real corpus?" with the labeled questions held back as the judge:

- The corpus and the labeled questions come from an ingest section: params.yaml's (`--params`), or an ingest file
  (`--ingest`, `root` relative to the file, the format `evaluate.out_of_domain` reads). The labeled questions are
  ingested on their own, in a separate scratch folder, and used ONLY as the test set: the training pipeline is run
  with `ingest.queries: []`, so they reach no training pair, no dev split and no choice.
- Each arm runs the real stages in this process, through the `run_<stage>()` functions the stage scripts call,
  on a scratch `ragtune.paths.Paths`: ingest → chunk → questions → pairs → negatives → train_embedder.
  `--self-supervised`: `questions.generator: none`, `pairs.synthetic.enabled: true` (title → chunk, heading →
  section, inverse cloze). `--llm`: the questions stage asks the endpoint for questions per chunk; the pairs stage
  mixes them in and holds out synthetic dev/test from chunks no training question came from. `--llm` also runs the
  self-supervised arm and reports the LLM arm's gain over it, paired on the same test questions.
- Without labels there is no labeled dev: checkpoint choice, the WiSE-FT merge check and keep_base_if_worse use
  whatever dev the pipeline has (the generator's synthetic held-out set in `--llm`; none in `--self-supervised`,
  where `train_embedder.ship_unchecked: true` is set so that the stage trains at all instead of shipping the base
  model). The labeled test never chooses anything.
- Base and fine-tuned embedders are scored on the labeled test exactly as the evaluate stage scores them
  (document-level, `ragtune.experiment.doc_scores`), with the 95% paired-bootstrap interval of the gain.

Writes metrics/benchmarks/label_free.json and prints a one-line summary. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ragtune.chunking import run_chunk
from ragtune.console import stage
from ragtune.evaluation.metrics import paired_bootstrap
from ragtune.experiment import doc_scores
from ragtune.ingest import run_ingest
from ragtune.io import read_json, read_jsonl, write_json
from ragtune.mining import run_negatives
from ragtune.models import load_embedder, resolve_model
from ragtune.pairs import query_key
from ragtune.pairs.run import run_pairs
from ragtune.params import key, load_params, read_yaml, section, with_overrides
from ragtune.paths import Paths
from ragtune.questions.run import run_questions
from ragtune.retrieval import model_prompt
from ragtune.train.embedder.run import run_train_embedder

METRICS = ("ndcg@10", "recall@10", "mrr@10")
ARM_SS, ARM_LLM = "self_supervised", "llm"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a mode without what it needs is refused here, before any stage runs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--self-supervised", action="store_true", help="title/heading/ICT pairs only; no endpoint")
    mode.add_argument("--llm", action="store_true", help="LLM questions through an OpenAI-compatible endpoint")
    ap.add_argument("--base-url", help="--llm: the server's OpenAI-compatible root, e.g. http://localhost:8000/v1")
    ap.add_argument("--model", help="--llm: the model name the server serves")
    ap.add_argument("--api-key-env", default="", help="--llm: NAME of the env variable holding the key ('' = none)")
    ap.add_argument("--params", default="params.yaml", help="params file (its ingest section names corpus and test)")
    ap.add_argument("--ingest", help="an ingest-section file instead of the params' (root relative to the file)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="param override")
    ap.add_argument("--max-synthetic-pairs", type=int, help="bound: pairs.synthetic.max_pairs")
    ap.add_argument("--max-steps", type=int, help="bound: train_embedder.max_steps")
    ap.add_argument("--out", default="metrics/benchmarks/label_free.json")
    ap.add_argument("--keep", help="keep the scratch folders under this folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.llm and not (args.base_url and args.model):
        ap.error("--llm needs --base-url and --model (the OpenAI-compatible server to ask, and its model name)")
    if args.self_supervised and (args.base_url or args.model or args.api_key_env):
        ap.error("--base-url / --model / --api-key-env only apply to --llm")
    for name in ("max_synthetic_pairs", "max_steps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def ingest_section(params: dict[str, Any], ingest_file: str | None) -> dict[str, Any]:
    """The ingest section with an absolute ``root``, so the stages can run under any scratch root.

    params.yaml's root is relative to the repository (where this runs); an ingest file's is relative to the file.
    """
    if ingest_file:
        raw = read_yaml(ingest_file)
        sec, base = dict(raw.get("ingest", raw)), Path(ingest_file).parent
    else:
        sec, base = dict(section(params, "ingest")), Path.cwd()
    sec["root"] = str((base / str(sec.get("root", "."))).resolve())
    return sec


def arm_params(params: dict[str, Any], args: argparse.Namespace, arm: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params one arm runs with, and what this benchmark changed from the user's params (for the JSON)."""
    p = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    p["pairs"]["synthetic"] = dict(p["pairs"]["synthetic"], enabled=True)
    changed: dict[str, Any] = {"pairs.synthetic.enabled": True}
    if not p["train_embedder"].get("ship_unchecked"):
        # no labeled dev: without this the self-supervised arm ships the base model untrained (the no-dev guard)
        p["train_embedder"]["ship_unchecked"] = True
        changed["train_embedder.ship_unchecked"] = True
    if args.max_synthetic_pairs:
        p["pairs"]["synthetic"]["max_pairs"] = args.max_synthetic_pairs
        changed["pairs.synthetic.max_pairs"] = args.max_synthetic_pairs
    if args.max_steps:
        p["train_embedder"]["max_steps"] = args.max_steps
        changed["train_embedder.max_steps"] = args.max_steps
    q = dict(p.get("questions", {}), generator="none")
    if arm == ARM_LLM:
        q |= {"generator": "llm", "base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env}
    p["questions"] = q
    changed["questions.generator"] = q["generator"]
    return p, changed


def labeled_test(ingest_p: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """The labeled questions, ingested on their own under ``root`` (never under an arm's folder), as test queries.

    Every labeled question is test, whatever split its source fixed: none is trained on or chosen with.
    """
    if not ingest_p.get("queries"):
        raise SystemExit("label_free: the ingest section names no `queries`: there is no labeled test set to score")
    with stage("ingest (labeled test)") as summary:
        summary.update(run_ingest(ingest_p, Paths(root)))
    return [
        # document-level scoring only (as reported): no chunk alignment, so no chunk-level relevance
        {**{k: q[k] for k in ("query_id", "query", "positive_doc_ids")}, "positive_chunk_ids": [], "split": "test"}
        for q in read_jsonl(Paths(root).queries)
    ]


def run_arm(params: dict[str, Any], ingest_p: dict[str, Any], root: Path) -> tuple[Paths, dict[str, float]]:
    """ingest (documents only) → chunk → questions → pairs → negatives → train_embedder under ``root``, as
    ``dvc repro`` runs them; returns the arm's paths and each stage's seconds."""
    paths, seconds = Paths(root), {}
    model_p, bm25_p = section(params, "model"), section(params, "bm25")
    chunk_p, max_seq = section(params, "chunk"), key(params, "train_embedder.max_seq_length")
    steps = [
        ("ingest", lambda: run_ingest({**ingest_p, "queries": []}, paths)),
        ("chunk", lambda: run_chunk(model_p, chunk_p, max_seq, paths)),
        ("questions", lambda: run_questions(section(params, "questions"), model_p, bm25_p, paths)),
        ("pairs", lambda: run_pairs(section(params, "pairs"), model_p, bm25_p, paths)),
        ("negatives", lambda: run_negatives(section(params, "negatives"), model_p, bm25_p, paths)),
        (
            "train_embedder",
            lambda: run_train_embedder(model_p, section(params, "train_embedder"), paths, bm25_p=bm25_p),
        ),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        with stage(name) as summary:
            summary.update(fn())
        seconds[name] = round(time.perf_counter() - t0, 1)
    return paths, seconds


def pair_counts(paths: Paths) -> dict[str, Any]:
    """Training pairs by kind (labeled questions count as ``labeled``) and the pipeline's own dev/test sizes."""
    training = read_jsonl(paths.train) + read_jsonl(paths.synthetic)
    return {
        "training_by_kind": dict(sorted(Counter(p.get("kind", "labeled") for p in training).items())),
        "training": len(training),
        "pipeline_dev": len(read_jsonl(paths.dev)),
        "pipeline_test": len(read_jsonl(paths.test)),
    }


def leaked(paths: Paths, test: list[dict[str, Any]]) -> int:
    """Training questions equal (normalised) to a labeled test question; the report must show 0."""
    held = {query_key(q["query"]) for q in test}
    return sum(1 for p in read_jsonl(paths.train) + read_jsonl(paths.synthetic) if query_key(p["query"]) in held)


class Scorer:
    """Scores an embedder folder on the labeled test (and the pipeline's own held-out splits) as evaluate does."""

    def __init__(self, model_p: dict[str, Any], chunks: list[dict[str, Any]]) -> None:
        self.model_p, self.chunks = model_p, chunks

    def __call__(self, path: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        model = load_embedder(path)
        qp = model_prompt(model, "query", self.model_p.get("query_prompt"))
        pp = model_prompt(model, "passage", self.model_p.get("passage_prompt"))
        out = doc_scores(model, qp, pp, self.chunks, {n: q for n, q in splits.items() if q})
        return {n: {"mean": {m: s["mean"][m] for m in METRICS}, "per_query": s["per_query"]} for n, s in out.items()}


def arm_report(paths: Paths, seconds: dict[str, float], changed: dict[str, Any], test: list[dict]) -> dict[str, Any]:
    """What one arm did: pair counts, questions, training schedule, what shipped, seconds."""
    train = read_json(paths.metrics("train_embedder"))
    return {
        "params_changed": changed,
        "pairs": pair_counts(paths),
        "pairs_generated": read_json(paths.metrics("pairs")).get("generated"),  # how LLM questions were mixed in
        "training_questions_equal_to_a_test_question": leaked(paths, test),
        "questions": read_json(paths.metrics("questions")),
        "negatives_groups": read_json(paths.metrics("negatives"))["groups"],
        "train": {
            "rows": train["train"]["rows"],
            "optimizer_steps": train["effective"]["optimizer_steps"],
            "epochs": train["effective"]["epochs"],
            "plan": train.get("plan", {}).get("reason"),
            "shipped": train["shipped"],
            "dev_ndcg@10": {k: v.get("ndcg@10") for k, v in train["dev"].items() if k in ("before", "after")},
            "warnings": train["warnings"],
        },
        "stage_seconds": seconds,
    }


def per_query_path(out: str | Path, mode: str) -> Path:
    """Where the per-query test NDCG@10 goes: a folder beside ``out`` (report.py reads only the top level)."""
    out = Path(out)
    return out.parent / out.stem / f"per_query_{mode}.json"


def summary_line(out: dict[str, Any]) -> str:
    def pts(g: dict[str, float]) -> str:
        return f"{100 * g['gain']:+.1f} pts [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"

    base = out["test"]["base"]["ndcg@10"]
    parts = [
        f"{arm}: {base:.3f} → {a['test']['ndcg@10']:.3f} ({pts(a['gain_over_base'])})" for arm, a in out["arms"].items()
    ]
    if "llm_over_self_supervised" in out:
        parts.append(f"llm over self-supervised {pts(out['llm_over_self_supervised'])}")
    return (
        f"label_free {out['mode']}: {out['corpus']['documents']} docs / {out['corpus']['chunks']} chunks, "
        f"{out['test']['queries']} labeled test questions, doc NDCG@10 base → ft (gain, 95% CI): "
        + "; ".join(parts)
        + f"; {out['seconds']:.0f}s"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    params = with_overrides(load_params(args.params), args.set)
    ingest_p = ingest_section(params, args.ingest)
    arms = [ARM_SS, ARM_LLM] if args.llm else [ARM_SS]
    with tempfile.TemporaryDirectory(prefix="ragtune-label-free-") as tmp:
        scratch = Path(args.keep or tmp)
        test = labeled_test(ingest_p, scratch / "labeled")
        runs = {}
        for arm in arms:
            p, changed = arm_params(params, args, arm)
            paths, seconds = run_arm(p, ingest_p, scratch / arm)
            runs[arm] = (paths, arm_report(paths, seconds, changed, test))
        first = runs[ARM_SS][0]
        chunks = read_jsonl(first.chunks)
        score = Scorer(section(params, "model"), chunks)
        base = score(resolve_model(section(params, "model")["embedder"]), {"test": test})["test"]
        report: dict[str, Any] = {}
        for arm, (paths, info) in runs.items():
            # the arms chunk the same documents with the same params, so one base score serves both
            assert read_jsonl(paths.chunks) == chunks, "the arms' chunks differ"
            own = {"pipeline_dev": read_jsonl(paths.dev), "pipeline_test": read_jsonl(paths.test)}
            ft = score(str(paths.embedder), {"test": test, **own})
            base_own = score(resolve_model(section(params, "model")["embedder"]), own) if any(own.values()) else {}
            report[arm] = {
                "test": ft["test"]["mean"],
                "gain_over_base": paired_bootstrap(ft["test"]["per_query"], base["per_query"]),
                "gain_over_base_recall@10": paired_bootstrap(ft["test"]["per_query"], base["per_query"], "recall@10"),
                "pipeline_held_out": {  # the generator's synthetic dev/test, when the pipeline made any
                    n: {"base": base_own[n]["mean"], "ft": ft[n]["mean"]} for n in base_own
                },
                **info,
                "per_query_ndcg@10": {q: round(m["ndcg@10"], 4) for q, m in ft["test"]["per_query"].items()},
            }
        docs = read_json(first.metrics("chunk"))
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        + ("CUDA" if torch.cuda.is_available() else "CPU"),
        "mode": "llm" if args.llm else "self-supervised",
        "command": "python benchmarks/label_free.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "protocol": "the labeled questions are ingested apart and used only as test; each arm runs ingest "
        "(documents only) → chunk → questions → pairs → negatives → train_embedder in process on a scratch Paths; "
        "no labeled dev exists, so checkpoint choice, the merge check and keep_base_if_worse use the pipeline's own "
        "dev (the generator's synthetic held-out set with --llm, none in self-supervised); document-level metrics "
        "as evaluate computes them, 95% paired bootstrap (2000 resamples) of the per-query gain",
        "params_file": args.params,
        "ingest_file": args.ingest,
        "overrides": args.set,
        "bounds": {"max_synthetic_pairs": args.max_synthetic_pairs, "max_steps": args.max_steps},
        "corpus": {"root": os.path.relpath(ingest_p["root"]), "documents": docs["documents"], "chunks": docs["chunks"]},
        "test": {"queries": len(test), "base": base["mean"]},
        "arms": report,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.llm:
        out["llm_over_self_supervised"] = paired_bootstrap(
            {q: {"ndcg@10": v} for q, v in report[ARM_LLM]["per_query_ndcg@10"].items()},
            {q: {"ndcg@10": v} for q, v in report[ARM_SS]["per_query_ndcg@10"].items()},
        )
    # per query in a file of its own: benchmarks/report.py renders every key of the main JSON into the docs
    per_query = {"base": {q: round(m["ndcg@10"], 4) for q, m in base["per_query"].items()}}
    per_query |= {arm: r.pop("per_query_ndcg@10") for arm, r in report.items()}
    write_json(args.out, out)
    write_json(per_query_path(args.out, out["mode"]), {"ndcg@10": per_query})
    print(summary_line(out), flush=True)
    print(json.dumps({k: out[k] for k in ("test", "bounds")} | {a: r["gain_over_base"] for a, r in report.items()}))


if __name__ == "__main__":
    main()
