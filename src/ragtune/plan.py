"""``ragtune plan``: what a full ``dvc repro`` will take on this machine, priced before the long run.

Why: one of the projects ragtune was built from priced its 1.8M-document run at "6–12 h on a g4dn.xlarge" from
guesses, before starting. Here the price comes from running the real stage scripts on small slices of the user's
own corpus (the *probe*) and extrapolating each stage's measured wall time and peak memory to the full corpus.
Nothing is a constant: every figure is measured on this machine, in this session.

* **Data stages** (ingest, chunk, bm25, questions, pairs, negatives' BM25 side) run twice, on the first ``B/5`` and
  ``B`` documents of the corpus as ingest reads it (``B`` = ``probe_docs``); from chunk's pool threshold (20,000
  documents) on, on 20,000 and 40,000, so both probes run the code path the full run will. Every labeled question is
  kept, a positive past the cut standing in as the slice's BM25-first document for it (:func:`repoint`), so the
  question-driven work is full size in both. Time and peak RSS are fit as ``a + b·documents`` and read at ``N``.
  Whatever a stage does once for the whole corpus even in the probe (ingest parsing a JSONL table whole before its
  rows stream, the walk of a folder) lands in ``a`` and is already full size.
* **Model stages** (train_embedder, index, train_reranker, evaluate) run on the first ``T/4`` and ``T`` documents
  (``T`` = ``model_probe_docs``), the smaller training 1 optimizer step, the larger ``probe_steps``. A fit
  ``a + b·chunks`` of each run without its training loop gives loading, encoding the corpus (dev pool, index,
  evaluation) and saving; the schedule the full data will get (the trainers' own
  :func:`ragtune.train.schedule.resolve_schedule`) then adds its steps, dev checks and saves at the costs
  :func:`ragtune.train.common.step_timer` measured in the larger probe.
* **negatives' dense mining**, when ``negatives.dense`` would mine: the passages pairs' alignment did not already
  cache, at the base model's passages/s that evaluate's bake-off measured in the probe.

The probe itself takes minutes (it runs each stage four times on small inputs); on the shipped sample that is a
large share of the run, on a large corpus a small one. ``docs/scale.md#before-a-long-run-ragtune-plan`` gives the
measured accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ragtune.io import JsonlSink, iter_jsonl, write_json, write_jsonl
from ragtune.paths import Paths

DATA_STAGES = ("ingest", "chunk", "bm25", "questions", "pairs", "negatives")
MODEL_STAGES = ("train_embedder", "index", "train_reranker", "evaluate")
PROBE_DOCS = 10_000  # the data probe's larger slice (documents)
MODEL_PROBE_DOCS = 40  # the model probe's larger slice: its evaluate encodes every chunk with several models
PROBE_STEPS = 5  # optimizer steps of each trainer in the larger model probe (one dev check and one save, at the last)


class PlanError(RuntimeError):
    """A probe stage failed: the message holds its command, folder and the end of its output."""


@dataclass(frozen=True)
class Measure:
    """One run of one command: wall seconds, peak RSS (MiB) and CPU seconds of its whole process tree."""

    wall_s: float
    rss_mib: float
    cpu_s: float


def run_measured(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[Measure, str]:
    """Run ``cmd`` in ``cwd``; return its :class:`Measure` and output. RSS comes from wait4's ru_maxrss, which Linux
    takes as the maximum over the child and the descendants it waited for; CPU is user + system time of the same
    tree (the work done: it moves less than wall time when the machine is shared)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        list(cmd), cwd=cwd, env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if code:
        raise PlanError(f"{' '.join(cmd)} failed in {cwd} (exit {code}):\n{out[-4000:]}")
    return Measure(wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime), out


@dataclass(frozen=True)
class Line:
    """``a + b·x``, fit through two measurements (or one: then ``b`` = 0 and the estimate is that measurement)."""

    a: float
    b: float

    @staticmethod
    def fit(x1: float, y1: float, x2: float, y2: float) -> Line:
        """The line through both points, kept physical: never a negative slope (noise between two nearly equal runs
        would predict less work for more data) nor a negative intercept (then the line through the origin and the
        larger point, the proportional estimate)."""
        if x2 == x1:
            return Line(max(y1, y2), 0.0)
        b = max((y2 - y1) / (x2 - x1), 0.0)
        a = y2 - b * x2
        if a < 0:
            return Line(0.0, y2 / x2 if x2 else 0.0)
        return Line(a, b)

    def at(self, x: float) -> float:
        return self.a + self.b * x


# ------------------------------------------------------------------------------------------------ counting


def count_rows(config: Any) -> int:
    """How many documents the ``ingest.documents`` sources hold, counted without parsing them: one per file a
    folder will read, one per non-blank line of a JSONL table, one per row of a CSV/XLSX table (read by ingest's own
    reader). An upper bound of what ingest keeps: the probe measures the kept share."""
    from ragtune.ingest.run import plan as ingest_plan
    from ragtune.ingest.tables import read_table

    total = 0
    for source, entry in ingest_plan(config):
        if source.is_folder:
            total += 0 if entry.reason else 1
            continue
        fmt = source.path.suffix.lower().lstrip(".")
        if fmt in ("jsonl", "ndjson", "json"):
            with source.path.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        else:
            total += len(read_table(source.path, source.sheet, config.max_bad_fraction).rows)
    return total


# ------------------------------------------------------------------------------------------------ the probe


def repoint(
    queries: list[dict[str, Any]], kept: Sequence[str], closest: Callable[[str], str | None] | None = None
) -> list[dict[str, Any]]:
    """``queries`` with every positive outside ``kept`` replaced by a document of ``kept``: ``closest(query)`` (the
    probe passes BM25's first document of the slice for the question), else one chosen by a hash of the id.

    The probe keeps every question this way, so the question-driven work (splits, alignment, mining, training rows)
    is full size. The stand-in must resemble the question as a real positive does: against an unrelated positive
    every BM25 candidate outscores it, negatives' ``bm25_max_ratio`` drops them all, and mining walks the whole
    ranking (the 100,000-document corpus's probe priced negatives at 66 s for a 7 s stage that way).
    """
    known = set(kept)
    out = []
    for q in queries:
        seen: dict[str, None] = {}
        for p in q["positive_doc_ids"]:
            if p not in known:
                p = (closest(q["query"]) if closest else None) or kept[zlib.crc32(p.encode("utf-8")) % len(kept)]
            seen[p] = None
        out.append({**q, "positive_doc_ids": list(seen)})
    return out


def _closest_by_bm25(ids: list[str], texts: list[str]) -> Callable[[str], str | None]:
    """A function from a question to the document of ``ids`` that BM25 (syllables: fast at any size) ranks first."""
    from ragtune.retrieval import BM25Index

    index = BM25Index(list(ids), tokenizer="syllable").fit(texts)

    def closest(query: str) -> str | None:
        scores = index.scores(query)
        best = int(scores.argmax()) if len(scores) else -1
        return ids[best] if best >= 0 and scores[best] > 0 else None

    return closest


def probe_ingest(params_file: Path, repo: Path, out_root: Path, cap: int) -> dict[str, Any]:
    """Ingest the first ``cap`` documents of the user's sources (their own formats, ingest's own code) into the
    probe project ``out_root``, with every question, positives unchecked (:func:`repoint_probe_queries` re-points
    them afterwards, outside the measured run). Run in a child process by :func:`make_plan`, so that its time and
    memory are measured like a stage's."""
    from ragtune.ingest import load_config
    from ragtune.ingest.run import ingest
    from ragtune.params import load_params, section

    config = load_config(section(load_params(params_file), "ingest"), repo)
    paths = Paths(out_root)
    with JsonlSink(paths.documents) as sink:
        result = ingest(config, sink=sink, max_documents=cap)
    if not sink.count:
        raise PlanError(f"the probe's ingest kept no document from {params_file}'s ingest sources")
    write_jsonl(paths.queries, result.queries)
    write_jsonl(paths.ingest_quarantine, [])
    docs = result.metrics["documents"]
    positives = {p for q in result.queries for p in q["positive_doc_ids"]}
    return {"kept": sink.count, "read": docs["read"], "queries": len(result.queries), "positive_docs": len(positives)}


def repoint_probe_queries(out_root: Path) -> None:
    """Re-point the probe project's question positives that lie past its cut (:func:`repoint`, with BM25's first
    document of the slice as the stand-in). Probe work, not ingest's: done in the plan's own process, unmeasured."""
    paths = Paths(out_root)
    ids, texts = [], []
    for _, d in iter_jsonl(paths.documents):
        ids.append(d["doc_id"])
        texts.append(f"{d.get('title') or ''}\n{d['text']}")
    queries = [q for _, q in iter_jsonl(paths.queries)]
    kept = set(ids)
    outside = any(p not in kept for q in queries for p in q["positive_doc_ids"])
    closest = _closest_by_bm25(ids, texts) if outside else None
    write_jsonl(paths.queries, repoint(queries, ids, closest))


# what the stages write (Paths): a probe project has its own; everything else is the repository's, linked
OUTPUTS = {
    "data": {"interim", "chunks", "bm25", "questions", "pairs", "negatives", "reranker"},
    "": {"models", "metrics", "dvclive", "reports", "params.yaml", "dvc.yaml", "dvc.lock", ".dvc", ".git", ".cache"},
}


def _link_repo(project: Path, repo: Path) -> None:
    """Link every entry of ``repo`` that is no stage output into ``project``, so that relative paths in the params
    (a local model folder, the prompt file, evaluate's out-of-domain sets and the corpus they name) resolve there as
    they do in the repository."""
    for parent in ("", "data"):
        src = repo / parent
        if not src.is_dir():
            continue
        (project / parent).mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            dest = project / parent / entry.name
            if entry.name in OUTPUTS[parent] or (parent == "" and entry.name == "data") or dest.exists():
                continue
            dest.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def _write_params(project: Path, params: dict[str, Any]) -> None:
    project.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(params, allow_unicode=True, sort_keys=False)
    (project / "params.yaml").write_text(text, encoding="utf-8")


def _lines(path: Path) -> int:
    """Records in a JSONL file the stages wrote (one per non-blank line): counted, not parsed."""
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass
class Slice:
    """One probe project: the first ``cap`` documents, what each stage measured there, and what they wrote."""

    cap: int
    root: Path
    docs: int = 0
    read: int = 0
    positive_docs: int = 0  # distinct documents the questions name (before the probe re-points them)
    measures: dict[str, Measure] = field(default_factory=dict)

    @property
    def paths(self) -> Paths:
        return Paths(self.root)

    @cached_property
    def chunks(self) -> int:
        """Chunks the slice's chunk stage wrote (read once, after it ran)."""
        return _lines(self.paths.chunks)

    @cached_property
    def groups(self) -> int:
        """Training groups the slice's negatives stage wrote (read once, after it ran)."""
        return _lines(self.paths.train_groups)

    def metrics(self, stage: str) -> dict[str, Any]:
        path = self.paths.metrics(stage)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def cold_cache_env(folder: Path) -> dict[str, str]:
    """The environment of a run whose embedding cache starts empty in ``folder`` (models still come from the user's
    cache, linked in): a first ``dvc repro`` encodes every text, and a probe that found vectors an earlier run left
    would price that work at nothing (the shipped sample's pairs stage: 14 s warm, 45 s cold)."""
    from ragtune.retrieval import cache_root

    folder.mkdir(parents=True, exist_ok=True)
    models = cache_root() / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (folder / "models").exists():
        (folder / "models").symlink_to(models.resolve(), target_is_directory=True)
    return dict(os.environ, RAGTUNE_CACHE=str(folder), RAGTUNE_QUIET="1", TOKENIZERS_PARALLELISM="false")


class Prober:
    """Runs the stage scripts of ``repo`` in probe projects under ``work`` and keeps each run's :class:`Measure`.
    Each probe project has its own empty embedding cache (:func:`cold_cache_env`): the slices share their first
    documents, and the larger must not find the smaller's vectors."""

    def __init__(self, repo: Path, params_file: Path, work: Path, log: Callable[[str], None]):
        self.repo, self.params_file, self.work, self.log = repo.resolve(), params_file.resolve(), work, log

    def ingest(self, piece: Slice, params: dict[str, Any]) -> None:
        _write_params(piece.root, params)
        _link_repo(piece.root, self.repo)
        code = (
            "import json, sys; from pathlib import Path; from ragtune.plan import probe_ingest; "
            "print('PROBE ' + json.dumps(probe_ingest(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "
            "int(sys.argv[4]))))"
        )
        cmd = [sys.executable, "-c", code, str(self.params_file), str(self.repo), str(piece.root), str(piece.cap)]
        measure, out = run_measured(cmd, self.repo, cold_cache_env(piece.root / ".cache"))
        found = [line[6:] for line in out.splitlines() if line.startswith("PROBE ")]
        result = json.loads(found[-1])
        piece.docs, piece.read, piece.positive_docs = result["kept"], result["read"], result["positive_docs"]
        repoint_probe_queries(piece.root)
        piece.measures["ingest"] = measure
        self.log(f"probe ingest: {piece.docs:,} documents in {measure.wall_s:.1f} s")

    def stage(self, piece: Slice, stage: str) -> Measure:
        script = self.repo / "stages" / f"{stage}.py"
        measure, _ = run_measured([sys.executable, str(script)], piece.root, cold_cache_env(piece.root / ".cache"))
        piece.measures[stage] = measure
        self.log(f"probe {stage} on {piece.docs:,} documents: {measure.wall_s:.1f} s, {measure.rss_mib:,.0f} MiB")
        return measure


# ------------------------------------------------------------------------------------------------ estimates


@dataclass
class StageEstimate:
    """One stage's price: seconds and peak RSS on this machine, and how they were reached."""

    stage: str
    seconds: float
    peak_rss_mib: float
    basis: str

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": round(self.seconds, 1), "peak_rss_mib": round(self.peak_rss_mib),
                "basis": self.basis}  # fmt: skip


@dataclass
class Plan:
    """What :func:`make_plan` found: the corpus's size, each stage's price, and what it could not price."""

    documents: int
    rows_counted: int
    chunks: int
    training_groups: int
    stages: list[StageEstimate]
    probe_seconds: float
    notes: list[str] = field(default_factory=list)
    gpu: dict[str, Any] | None = None

    @property
    def total_s(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def peak_rss_mib(self) -> float:
        return max((s.peak_rss_mib for s in self.stages), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "rows_counted": self.rows_counted,
            "chunks": self.chunks,
            "training_groups": self.training_groups,
            "total_s": round(self.total_s, 1),
            "peak_rss_mib": round(self.peak_rss_mib),
            "probe_seconds": round(self.probe_seconds, 1),
            "stages": [s.as_dict() for s in self.stages],
            "notes": self.notes,
            "gpu": self.gpu,
        }


def _fit_stage(
    stage: str,
    small: Slice,
    big: Slice,
    x_small: float,
    x_big: float,
    x_full: float,
    unit: str,
    apart: Callable[[Slice], float] = lambda _: 0.0,
) -> StageEstimate:
    """A stage priced by the line through its two probe runs, read at the full corpus. ``apart(slice)``: seconds of
    a probe run that are priced separately (a trainer's steps, checks and saves) and taken out before the fit."""
    ms, mb = small.measures[stage], big.measures[stage]
    ts, tb = ms.wall_s - apart(small), mb.wall_s - apart(big)
    if x_full <= x_big:  # the probe ran the stage on all of it
        return StageEstimate(stage, tb, mb.rss_mib, f"measured on all {x_big:,.0f} {unit}")
    t = Line.fit(x_small, ts, x_big, tb)
    m = Line.fit(x_small, ms.rss_mib, x_big, mb.rss_mib)
    basis = f"{t.a:.1f} s + {1000 * t.b:.3g} ms × {x_full:,.0f} {unit} (probes at {x_small:,.0f} and {x_big:,.0f})"
    return StageEstimate(stage, t.at(x_full), max(m.at(x_full), mb.rss_mib), basis)


def _schedule(section_name: str, params: dict[str, Any], rows: int) -> Any:
    """The trainer's own schedule for ``rows`` rows (the same code the stage runs)."""
    from ragtune.params import section
    from ragtune.train.schedule import resolve_schedule

    if section_name == "train_embedder":
        from ragtune.train.embedder.config import EmbedderTrainConfig as Config
    else:
        from ragtune.train.reranker.config import RerankerTrainConfig as Config
    _, plan = resolve_schedule(Config.from_params(section(params, section_name)), rows)
    return plan


def _timing(piece: Slice, stage: str) -> dict[str, Any]:
    return (piece.metrics(stage).get("train") or {}).get("timing") or {}


def _trained_s(piece: Slice, stage: str) -> float:
    """Seconds the probe's trainer spent on optimizer steps, dev checks and saves (priced apart by the schedule)."""
    t = _timing(piece, stage)
    return float(t.get("steps_s_total") or 0) + float(t.get("evals_s_total") or 0) + float(t.get("saves_s_total") or 0)


def _schedule_s(
    section_name: str, params: dict[str, Any], probe: Slice, rows_scale: float, eval_scale: float = 1.0
) -> tuple[float, str]:
    """Seconds of the full schedule's optimizer steps, dev checks and saves, at the probe's measured costs: the first
    step as measured, each further step at the mean of the probe's later steps. The schedule is the trainer's own
    (``epochs: auto`` sized to the rows), for the probe's rows × ``rows_scale``; dev checks cost ``eval_scale`` times
    the probe's (a larger dev pool)."""
    metrics = probe.metrics(section_name)
    timing = _timing(probe, section_name)
    plan_rows = (metrics.get("plan") or {}).get("rows") or (metrics.get("train") or {}).get("rows") or 0
    if not timing.get("steps"):
        return 0.0, "the probe trained no step (nothing to train, or training is off)"
    rows = max(1, round(plan_rows * rows_scale))
    plan = _schedule(section_name, params, rows)
    step = float(timing["step_s_mean"])
    seconds = float(timing["first_step_s"]) + (plan.total_steps - 1) * step
    # the Trainer checks dev and saves every eval_steps / save_steps steps and at the last one
    evals = math.ceil(plan.total_steps / plan.eval_steps) if timing.get("evals") else 0
    saves = math.ceil(plan.total_steps / plan.save_steps) if timing.get("saves") else 0
    eval_s = float(timing.get("eval_s_mean") or 0) * eval_scale
    seconds += evals * eval_s + saves * float(timing.get("save_s_mean") or 0)
    why = f"{plan.total_steps} steps × {step:.2f} s ({rows:,} rows)"
    if evals:
        why += f", {evals} dev checks × {eval_s:.1f} s"
    return seconds, why


def make_plan(
    repo: Path,
    params_file: Path,
    *,
    probe_docs: int = PROBE_DOCS,
    model_probe_docs: int = MODEL_PROBE_DOCS,
    probe_steps: int = PROBE_STEPS,
    data_only: bool = False,
    work: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Plan:
    """Probe the pipeline ``params_file`` describes on slices of its corpus and price each stage at full size."""
    from ragtune.chunking import PARALLEL_MIN_DOCS
    from ragtune.ingest import load_config
    from ragtune.mining import decide_dense
    from ragtune.params import load_params, section
    from ragtune.retrieval import resolve_tokenizer

    started = time.perf_counter()
    params = load_params(params_file)
    config = load_config(section(params, "ingest"), repo)
    rows = count_rows(config)
    log(f"the ingest sources hold {rows:,} documents (files and table rows, before ingest's checks)")
    big_cap = min(rows, probe_docs)
    small_cap = max(1, big_cap // 5)
    if rows >= PARALLEL_MIN_DOCS:  # chunk's worker pool starts there: both probes must run the full run's path
        small_cap, big_cap = PARALLEL_MIN_DOCS, min(rows, max(probe_docs, 2 * PARALLEL_MIN_DOCS))
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="ragtune-plan-")) if work is None else work
    prober = Prober(repo, params_file, work, log)
    notes: list[str] = []
    try:
        probe_params = copy.deepcopy(params)
        probe_params["negatives"]["dense"] = "off"  # priced from the measured encode rate instead (see below)
        small, big = Slice(small_cap, work / "small"), Slice(big_cap, work / "big")
        pieces = [small, big] if rows > big_cap else [big]
        for piece in pieces:
            prober.ingest(piece, probe_params)
        whole = rows <= big_cap
        docs = big.docs if whole else round(rows * big.docs / max(big.read, 1))
        for piece in pieces:
            prober.stage(piece, "chunk")
        chunks_per_doc = big.chunks / max(big.docs, 1)
        chunks = big.chunks if whole else round(docs * chunks_per_doc)
        # bm25.tokenizer auto picks by the corpus's chunk count: the probe must run the tokenizer the full run will
        probe_params["bm25"]["tokenizer"] = resolve_tokenizer(str(params["bm25"]["tokenizer"]), chunks)
        if params["questions"].get("generator") == "llm":
            probe_params["questions"]["generator"] = "none"
            notes.append(
                "questions (generator: llm) is not priced: it waits on your server. Its work is "
                "questions.max_chunks (or every chunk) × the questions per chunk in questions.per_chunk."
            )
        for piece in pieces:
            _write_params(piece.root, probe_params)
            for stage in ("bm25", "questions", "pairs", "negatives"):
                prober.stage(piece, stage)
        small = small if len(pieces) == 2 else big
        estimates = [_fit_stage(stage, small, big, small.docs, big.docs, docs, "documents") for stage in DATA_STAGES]
        groups = big.groups if whole else round(Line.fit(small.docs, small.groups, big.docs, big.groups).at(docs))
        if whole:
            notes.append(f"the data probe read the whole corpus ({big.docs:,} documents): those stages are measured")
        if not data_only:
            estimates += _model_stages(
                prober, probe_params, params, docs, chunks, groups, model_probe_docs, probe_steps, estimates, notes,
                decide_dense,
            )  # fmt: skip
        return Plan(
            documents=docs,
            rows_counted=rows,
            chunks=chunks,
            training_groups=groups,
            stages=estimates,
            probe_seconds=time.perf_counter() - started,
            notes=notes,
        )
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _model_stages(
    prober: Prober,
    probe_params: dict[str, Any],
    params: dict[str, Any],
    docs: int,
    chunks: int,
    groups: int,
    model_probe_docs: int,
    steps: int,
    estimates: list[StageEstimate],
    notes: list[str],
    decide_dense: Callable[..., Any],
) -> list[StageEstimate]:
    """Run the model stages on two small slices (the larger with ``steps`` optimizer steps, the smaller with one);
    price them at full size."""
    top = min(docs, model_probe_docs)
    pieces = [Slice(max(1, top // 4), prober.work / "model-small"), Slice(top, prober.work / "model-big")]
    for piece, n_steps in zip(pieces, (1, steps), strict=True):  # the small slice prices the rest, not the steps
        mp = copy.deepcopy(probe_params)
        for name in ("train_embedder", "train_reranker"):
            mp[name] |= {"max_steps": n_steps, "eval_steps": n_steps, "save_steps": n_steps}
        prober.ingest(piece, mp)
        for stage in ("chunk", "bm25", "questions", "pairs", "negatives", *MODEL_STAGES):
            prober.stage(piece, stage)
    small, big = pieces
    # the full corpus's training rows, relative to the probe's (the probe keeps every question: often ≈ 1)
    rows_scale = groups / max(big.groups, 1)
    out = []
    for stage in MODEL_STAGES:
        trains = stage in ("train_embedder", "train_reranker")
        apart = (lambda piece, s=stage: _trained_s(piece, s)) if trains else (lambda _: 0.0)
        est = _fit_stage(stage, small, big, small.chunks, big.chunks, chunks, "chunks", apart)
        if trains:
            eval_scale = _dev_pool_scale(params, big, chunks) if stage == "train_embedder" else 1.0
            extra, why = _schedule_s(stage, params, big, rows_scale, eval_scale)
            est = StageEstimate(stage, est.seconds + extra, est.peak_rss_mib, f"{why}; the rest: {est.basis}")
        out.append(est)
    # negatives' dense side, priced at the base model's passages/s that evaluate's bake-off measured in the probe
    rate = ((big.metrics("models").get("base_dense") or {}).get("passages_per_s")) or 0.0
    n = params["negatives"]
    mode = {True: "on", False: "off"}.get(n["dense"], n["dense"])
    if rate:
        decision = decide_dense(str(mode), int(n["n_dense"]), chunks, float(n["dense_budget_s"]), lambda: rate)
        if decision.use:
            # pairs' alignment has already encoded the chunks of the labeled documents with the same model: the cache
            # hands them to the mining, which encodes the rest
            aligned = min(chunks, round(big.positive_docs * chunks / max(docs, 1)))
            # auto first times 3 batches of the corpus itself (mining.encode_rate), outside the cache
            timed = 3 * int(params["model"]["batch_size"]) if mode == "auto" else 0
            encoded = chunks - aligned + timed
            index_rss = next(o.peak_rss_mib for o in out if o.stage == "index")  # the encoder and the vectors
            for i, e in enumerate(estimates):
                if e.stage == "negatives":
                    estimates[i] = StageEstimate(
                        "negatives", e.seconds + encoded / rate, max(e.peak_rss_mib, index_rss),
                        f"{e.basis}; + dense mining: {encoded:,} passages (those pairs did not encode, and auto's "
                        f"speed test) at {rate:.1f} passages/s",
                    )  # fmt: skip
        notes.append(f"negatives.dense {mode}: {decision.why or decision.rule} → {'mines' if decision.use else 'off'}")
    return out


def _dev_pool_scale(params: dict[str, Any], probe: Slice, chunks: int) -> float:
    """How much longer one dev check of the embedder takes on the full corpus than in the probe: it encodes the dev
    questions and the dev pool (labeled chunks + BM25's and the base model's top ``dev_pool_k`` per question), or
    every chunk with ``dev_pool_k: 0``."""
    pool = (probe.metrics("train_embedder").get("dev") or {}).get("pool") or {}
    dev_q = _lines(probe.paths.dev)
    k = int(params["train_embedder"].get("dev_pool_k") or 0)
    probe_pool = int(pool.get("chunks") or probe.chunks)
    full_pool = chunks if k == 0 else min(chunks, max(probe_pool, dev_q * (2 * k + 1)))
    return (dev_q + full_pool) / max(dev_q + probe_pool, 1)


# ------------------------------------------------------------------------------------------------ GPU, output


def gpu_projection(plan: Plan, name: str, benchmarks: Path) -> dict[str, Any]:
    """The plan on a named GPU, from the device throughput in ``benchmarks/encode_throughput.json``: only the
    encoding-bound work scales (model stages and dense mining, by the measured passages/s ratio); data stages are
    CPU work either way. Says so when no GPU of that name was measured."""
    path = benchmarks / "encode_throughput.json"
    rows = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    cpu = next((v for k, v in rows.items() if k.startswith("cpu")), None)
    match = next((v for k, v in rows.items() if name.lower() in k.lower() and not k.startswith("cpu")), None)
    if match is None or cpu is None:
        return {
            "gpu": name,
            "measured": False,
            "why": f"no throughput for a GPU named {name!r} in {path} (measured: {', '.join(rows) or 'none'}). "
            "Run benchmarks/encode_throughput.py on that GPU (the device tool, or your own machine) to add it.",
        }
    ratio = float(match["fp32"]["passages_per_s"]) / float(cpu["fp32"]["passages_per_s"])
    stages = []
    for s in plan.stages:
        scaled = s.stage in MODEL_STAGES or (s.stage == "negatives" and "dense mining" in s.basis)
        stages.append({"stage": s.stage, "seconds": round(s.seconds / ratio if scaled else s.seconds, 1)})
    return {"gpu": name, "measured": True, "passages_per_s_ratio": round(ratio, 1), "stages": stages,
            "total_s": round(sum(s["seconds"] for s in stages), 1)}  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def render(plan: Plan) -> Iterator[Any]:
    """The plan as rich renderables: one table row per stage, then the notes."""
    from rich.table import Table

    table = Table(title=f"ragtune plan: {plan.documents:,} documents, ~{plan.chunks:,} chunks on this machine")
    for col in ("stage", "time", "peak RSS", "how it was priced"):
        table.add_column(col, overflow="fold")
    for s in plan.stages:
        table.add_row(s.stage, _duration(s.seconds), f"{s.peak_rss_mib / 1024:.1f} GiB", s.basis)
    table.add_row("total", _duration(plan.total_s), f"{plan.peak_rss_mib / 1024:.1f} GiB", "")
    yield table
    for note in plan.notes:
        yield f"• {note}"
    yield f"probe: {_duration(plan.probe_seconds)} on this machine"
    if plan.gpu:
        if plan.gpu.get("measured"):
            ratio = plan.gpu["passages_per_s_ratio"]
            yield f"on {plan.gpu['gpu']}: {_duration(plan.gpu['total_s'])} (encoding ×{ratio} the CPU's speed)"
        else:
            yield plan.gpu["why"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``ragtune plan`` (cli.py adds the subcommand; the logic stays here)."""
    ap.add_argument("--params", default="params.yaml", help="the params file to price (default params.yaml)")
    ap.add_argument("--root", default=".", help="repository root holding stages/ and the corpus (default .)")
    ap.add_argument("--probe-docs", type=int, default=PROBE_DOCS, help=f"data probe slice (default {PROBE_DOCS:,})")
    ap.add_argument(
        "--model-probe-docs", type=int, default=MODEL_PROBE_DOCS, help=f"model probe slice (default {MODEL_PROBE_DOCS})"
    )
    ap.add_argument(
        "--probe-steps", type=int, default=PROBE_STEPS, help=f"probe optimizer steps (default {PROBE_STEPS})"
    )
    ap.add_argument("--data-only", action="store_true", help="price the data stages only (ingest … negatives)")
    ap.add_argument("--gpu", help="also price the run on this GPU, from benchmarks' measured device throughput")
    ap.add_argument("--json", dest="json_file", help="also write the plan to this JSON file")
    ap.add_argument("--keep", help="run the probe in this folder and keep it (default: a temporary folder)")


def run(args: argparse.Namespace) -> int:
    """``ragtune plan``: probe, price, print (and write ``--json``); 2 with the reason when a probe stage fails."""
    from rich.console import Console

    from ragtune.console import console  # stderr: the probe's progress
    from ragtune.errors import UserError

    root = Path(args.root)
    try:
        plan = make_plan(
            root,
            root / args.params,
            probe_docs=args.probe_docs,
            model_probe_docs=args.model_probe_docs,
            probe_steps=args.probe_steps,
            data_only=args.data_only,
            work=Path(args.keep) if args.keep else None,
            log=lambda m: console.print(f"[dim]{m}[/]"),
        )
    except (PlanError, UserError) as exc:
        print(f"ragtune plan: {exc}", file=sys.stderr)
        return 2
    if args.gpu:
        plan.gpu = gpu_projection(plan, args.gpu, root / "metrics" / "benchmarks")
    out = Console(highlight=False)  # stdout: the plan itself
    for item in render(plan):
        out.print(item)
    if args.json_file:
        write_json(args.json_file, plan.as_dict())
    return 0
