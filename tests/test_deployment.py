"""The Dockerfile stays in step with the code: CI has no container runtime to build it, so what can drift is checked
here (the command it runs, the torch pin, the files it copies, what .dockerignore leaves in)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ragtune.cli import _parser

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_the_image_runs_a_command_ragtune_accepts_on_all_interfaces():
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert cmd[0] == "ragtune"
    args = _parser().parse_args(cmd[1:])
    assert (args.command, args.host, args.port, args.root) == ("serve", "0.0.0.0", 8000, "/srv/ragtune")
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.M) and "127.0.0.1:8000/health" in DOCKERFILE


def test_torch_is_the_pinned_cpu_build_and_the_copied_sources_exist():
    pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(encoding="utf-8"), re.M).group(1)
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pin}" in DOCKERFILE
    assert DOCKERFILE.index("whl/cpu torch") < DOCKERFILE.index("pip install -r requirements.txt")
    sources = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("COPY ")]
    tracked = [s for s in sources if not s.startswith(("models", "metrics/evaluate.json"))]  # DVC outputs
    assert tracked and all((REPO / s).exists() for s in tracked), tracked
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not {s.rstrip("/") for s in sources} & set(ignored)  # nothing the image copies is left out
    assert {".venv", "data", ".dvc/cache", ".git"} <= set(ignored)
