"""Collect every benchmark's JSON from metrics/benchmarks/ into docs/benchmarks.md.

Each benchmark script writes its own JSON; this renders them between the markers in docs/benchmarks.md (the text
around the markers is hand-written and kept), so the figures there are always the measured ones (never typed by
hand). The README links to that page.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

TARGET = Path("docs/benchmarks.md")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def render() -> str:
    lines = [START, ""]
    bench = Path("metrics/benchmarks")
    for path in sorted(bench.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        script = data.get("script", f"benchmarks/{path.stem}.py")  # a script's second output names it
        lines.append(f"**{path.stem}** (`{script}`; measured on {data.get('machine', machine())})")
        lines.append("")
        lines.append("| figure | value |")
        lines.append("|---|---|")

        def walk(prefix: str, obj: object) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if k not in ("machine", "script"):
                        walk(f"{prefix}.{k}" if prefix else k, v)
            elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
                for i, item in enumerate(obj):  # a table's rows: one line per figure, not one unreadable cell
                    walk(f"{prefix}[{i}]", item)
            else:
                lines.append(f"| {prefix} | {obj} |")

        walk("", data)
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    text = TARGET.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{TARGET} lacks the {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    TARGET.write_text(head + render() + tail, encoding="utf-8")
    print(f"{TARGET} benchmarks section updated")


if __name__ == "__main__":
    main()
