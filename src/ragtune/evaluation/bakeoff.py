"""Base-model bake-off: what each dense model costs to serve, and one table across experiments.

Choosing a base embedder is a trade between quality and cost. A project ragtune was built from compared
AITeamVN/Vietnamese_Embedding, MiniLM and Qwen3-Embedding-0.6B by MRR and Hit@1 before choosing; the cost side
(vector size, encoding speed, memory) decides what a deployment can afford. evaluate records both sides for each
dense system (:func:`measure_encoder`, written to ``metrics/models.json``), and ``ragtune compare`` puts the
experiments of a sweep side by side (:func:`compare_rows`, :func:`render_table`):

    dvc exp run --queue -S model.embedder=intfloat/multilingual-e5-small -S train_embedder.enabled=false
    dvc exp run --queue -S model.embedder=AITeamVN/Vietnamese_Embedding -S train_embedder.enabled=false
    dvc queue start && dvc queue status      # wait until both are done
    ragtune compare                           # one row per experiment

Speed and memory are measured in a child process, so the peak memory is that model's alone (a loaded model,
its tokenizer and one encoding batch, plus the Python and torch runtime every deployment also pays), not whatever
the evaluate stage held at the time. They vary from run to run by a few percent, so they live in their own metrics
file and never take part in choosing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# what `ragtune compare` shows per experiment: (column title, path in the metrics files, number format)
COLUMNS = (
    ("test ndcg@10", ("evaluate", "test", "{system}", "ndcg@10"), "{:.4f}"),
    ("test mrr@10", ("evaluate", "test", "{system}", "mrr@10"), "{:.4f}"),
    ("test hit@1", ("evaluate", "test", "{system}", "hit@1"), "{:.4f}"),
    ("dim", ("models", "{system}", "dim"), "{:d}"),
    ("passages/s", ("models", "{system}", "passages_per_s"), "{:.1f}"),
    ("peak MiB", ("models", "{system}", "peak_rss_mib"), "{:.0f}"),
    ("size MiB", ("models", "{system}", "size_mib"), "{:.0f}"),
)


def measure_encoder(
    model: str | Path, texts: Sequence[str], prompt: str, *, batch_size: int = 32, max_seq_length: int | None = None
) -> dict[str, Any]:
    """Dimension, passages/s, peak memory (MiB) and size on disk (MiB) of encoding ``texts`` with ``model``.

    Runs ``python -m ragtune.evaluation.bakeoff`` in a child process (see the module docstring for why). ``model`` is
    a local folder or a name :func:`ragtune.models.resolve_model` understands.
    """
    payload = json.dumps(
        {
            "model": str(model),
            "texts": list(texts),
            "prompt": prompt,
            "batch_size": batch_size,
            "max_seq_length": max_seq_length,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.evaluation.bakeoff"], input=payload, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {model} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_here(spec: dict[str, Any]) -> dict[str, Any]:
    """The child process's side of :func:`measure_encoder`."""
    import time

    from ragtune.models import load_embedder, resolve_model

    path = resolve_model(spec["model"])
    model = load_embedder(path, max_seq_length=spec.get("max_seq_length"))
    texts, prompt, batch = spec["texts"], spec["prompt"], int(spec["batch_size"])
    model.encode(texts[:batch], prompt=prompt, batch_size=batch, show_progress_bar=False)  # warm-up
    t0 = time.perf_counter()
    vecs = model.encode(texts, prompt=prompt, batch_size=batch, show_progress_bar=False, convert_to_numpy=True)
    seconds = time.perf_counter() - t0
    weights = [p for p in Path(path).rglob("*") if p.suffix in (".safetensors", ".bin")]
    return {
        "dim": int(vecs.shape[1]),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "size_mib": round(sum(p.stat().st_size for p in weights) / 2**20, 1),
        "passages_per_s": round(len(texts) / seconds, 1),
        "peak_rss_mib": round(_peak_rss_kib() / 1024, 0),
        "measured_on": f"{len(texts)} passages, batch {batch}",
    }


def _peak_rss_kib() -> int:
    """This process's peak resident memory since it started (KiB).

    ``/proc/self/status`` VmHWM, not ``getrusage``: a child started by fork + exec inherits the parent's high-water
    mark in ``ru_maxrss`` (the pre-exec copy of the parent counts), so the evaluate stage's own 2 GiB showed up as
    every model's peak. VmHWM belongs to the process image after exec alone.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB; macOS: bytes (no /proc there)


def _lookup(metrics: dict[str, Any], path: Sequence[str], system: str) -> Any:
    node: Any = metrics
    for key in path:
        key = key.format(system=system)
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def compare_rows(experiments: Sequence[dict[str, Any]], system: str = "ft_dense") -> list[dict[str, Any]]:
    """One row per experiment: its name, base model and the :data:`COLUMNS` for ``system``.

    ``experiments`` items are ``{"name", "params": {...}, "metrics": {"evaluate": {...}, "models": {...}}}``, as
    :func:`experiments_from_dvc` builds them from ``dvc exp show --json``.
    """
    rows = []
    for exp in experiments:
        params = exp.get("params", {})
        row: dict[str, Any] = {
            "experiment": exp["name"],
            "model.embedder": _lookup(params, ("model", "embedder"), system),
            "trained": _lookup(params, ("train_embedder", "enabled"), system) is not False,
        }
        for title, path, _ in COLUMNS:
            row[title] = _lookup(exp.get("metrics", {}), path, system)
        rows.append(row)
    return rows


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_rows`; a missing figure shows as ``–``."""
    fmt = {title: f for title, _, f in COLUMNS}
    heads = ["experiment", "model.embedder", "trained", *fmt]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|---|" + "---:|" * len(fmt)]
    for r in rows:
        cells = [str(r["experiment"]), str(r["model.embedder"]), "yes" if r["trained"] else "no"]
        for title, f in fmt.items():
            v = r.get(title)
            cells.append("–" if v is None else f.format(int(v) if f == "{:d}" else v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def experiments_from_dvc(exp_show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten ``dvc exp show --json`` (the workspace, each commit and its experiments) into named experiments
    with their params.yaml and the metrics files evaluate writes."""
    out: list[dict[str, Any]] = []

    def take(entry: dict[str, Any], default_name: str) -> None:
        data = entry.get("data") or {}
        if not data or data.get("status") == "Failed":
            return
        files = {Path(k).name: v.get("data", {}) for k, v in (data.get("metrics") or {}).items()}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        out.append(
            {
                "name": entry.get("name") or data.get("name") or default_name,
                "params": params,
                "metrics": {"evaluate": files.get("evaluate.json", {}), "models": files.get("models.json", {})},
            }
        )

    def short(rev: Any) -> str:  # a commit hash shortened as git does; "workspace" stays whole
        rev = str(rev or "")
        return rev[:7] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev

    for commit in exp_show:
        take(commit, short(commit.get("rev", "workspace")))
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                take(rev, short(rev.get("rev")))
    return out


if __name__ == "__main__":
    print(json.dumps(_measure_here(json.loads(sys.stdin.read()))))
