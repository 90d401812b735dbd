"""Collect every benchmark's JSON from metrics/benchmarks/ into the README's Benchmarks section.

Each benchmark script writes its own JSON; this renders them between the README markers so figures in the README
are always the measured ones (never typed by hand).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

README = Path("README.md")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def render() -> str:
    lines = [START, ""]
    bench = Path("metrics/benchmarks")
    for path in sorted(bench.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        lines.append(f"**{path.stem}** (`benchmarks/{path.stem}.py`; measured on {data.get('machine', machine())})")
        lines.append("")
        lines.append("| figure | value |")
        lines.append("|---|---|")

        def walk(prefix: str, obj: object) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if k != "machine":
                        walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                lines.append(f"| {prefix} | {obj} |")

        walk("", data)
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} … {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + render() + tail, encoding="utf-8")
    print("README.md benchmarks section updated")


if __name__ == "__main__":
    main()
