"""How close `ragtune plan`'s estimate comes to the run it prices: plan first, then run every stage and compare.

Usage (venv active; PROJECT is a DVC project with its inputs: this repo for the shipped sample, or a project made by
`benchmarks/scale_data.py --keep`):
    python benchmarks/plan_accuracy.py --project . --name sample
    python benchmarks/plan_accuracy.py --project /tmp/ragtune-scale/project-100000 --name 100k --data-only \
        --scale-row 100000

1. `ragtune plan --json` in PROJECT (the probe runs in a temporary folder; PROJECT is not touched);
2. each stage it priced, in DAG order, with `dvc repro --force --single-item STAGE`, timed (wall, CPU and peak RSS of
   the process tree), as a user's first `dvc repro` runs it: with an empty embedding cache (vectors an earlier run
   left would make the encoding stages look cheap);
   or, with --scale-row N, the per-stage times scale_data.py measured on that corpus (same session, same machine);
3. per stage and in total: estimate, measurement, estimate / measurement.

The issue's goal: the total within ±30% on the sample and on the 100,000-document corpus. Writes one row per
`--name` to metrics/benchmarks/plan_accuracy.json (a row of the same name is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ragtune.plan import cold_cache_env, run_measured

ROOT = Path(__file__).resolve().parents[1]


def compared(est: dict[str, Any], wall_s: float, cpu_s: float | None, rss_mib: float) -> dict[str, Any]:
    print(f"{est['stage']:<15} plan {est['seconds']:8.1f} s   measured {wall_s:8.1f} s", flush=True)
    return {
        "estimate_s": est["seconds"],
        "measured_s": round(wall_s, 1),
        "measured_cpu_s": round(cpu_s, 1) if cpu_s is not None else None,
        "ratio": round(est["seconds"] / wall_s, 2),
        "estimate_rss_mib": est["peak_rss_mib"],
        "measured_rss_mib": round(rss_mib),
    }


def measure(plan: dict[str, Any], project: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run each priced stage with `dvc repro --force --single-item` and compare."""
    stages = {}
    for est in plan["stages"]:
        repro = [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", est["stage"]]
        measured, _ = run_measured(repro, project, env)
        stages[est["stage"]] = compared(est, measured.wall_s, measured.cpu_s, measured.rss_mib)
    return stages


def against_scale_row(plan: dict[str, Any], docs: int) -> dict[str, Any]:
    """Compare with the stages benchmarks/scale_data.py measured on the same corpus (its row for ``docs``), instead
    of running them again: at 1.8M documents they take a quarter of an hour."""
    rows = json.loads((ROOT / "metrics/benchmarks/scale_data.json").read_text(encoding="utf-8"))["rows"]
    row = next(r for r in rows if r["docs"] == docs)
    return {
        est["stage"]: compared(est, m["seconds"], m.get("cpu_seconds"), m["peak_rss_mib"])
        for est in plan["stages"]
        if (m := row["stages"].get(est["stage"]))
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--name", required=True, help="the row's name in the output (sample, 100k, …)")
    ap.add_argument("--data-only", action="store_true", help="price and run the data stages only")
    ap.add_argument("--out", type=Path, default=ROOT / "metrics/benchmarks/plan_accuracy.json")
    ap.add_argument(
        "--scale-row",
        type=int,
        help="compare with metrics/benchmarks/scale_data.json's row of this many documents (PROJECT: the project "
        "scale_data.py --keep made for it) instead of running the stages",
    )
    args = ap.parse_args(argv)
    project = args.project.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", "ragtune.cli", "plan", "--root", str(project), "--json", str(plan_file)]
        probe, out = run_measured(cmd + (["--data-only"] if args.data_only else []), project)
        print(out[-3000:], flush=True)
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        if args.scale_row:
            stages = against_scale_row(plan, args.scale_row)
        else:  # the stages as a first `dvc repro` runs them: no vectors cached earlier (the plan prices that)
            stages = measure(plan, project, cold_cache_env(Path(tmp) / "cache"))
    total_est = sum(s["estimate_s"] for s in stages.values())
    total_measured = sum(s["measured_s"] for s in stages.values())
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    row = {
        "name": args.name,
        "documents": plan["documents"],
        "chunks": plan["chunks"],
        "probe_s": round(probe.wall_s, 1),
        "estimate_s": round(total_est, 1),
        "measured_s": round(total_measured, 1),
        "ratio": round(total_est / total_measured, 3),
        "within_30_percent": abs(total_est / total_measured - 1) <= 0.30,
        "stages": stages,
        "notes": plan["notes"],
        "commit": commit.stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    rows = json.loads(args.out.read_text(encoding="utf-8"))["rows"] if args.out.exists() else []
    rows = [r for r in rows if r["name"] != args.name] + [row]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: row[k] for k in ("name", "probe_s", "estimate_s", "measured_s", "ratio")}))


if __name__ == "__main__":
    main()
