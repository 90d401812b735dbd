"""train_embedder survives SIGKILL (resumes from its last checkpoint), restarts fresh when params change, and runs
as 2 CPU processes under torchrun (gloo)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_params

from ragtune.io import read_json

CKPT = "models/embedder_checkpoints"


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAGTUNE_QUIET="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _free_port() -> int:
    """A port nothing listens on now: a fixed one fails when another run (or another test session) holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _checkpoints(work: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in (work / CKPT).glob("checkpoint-*") if (p / "trainer_state.json").exists()
    )


@pytest.mark.slow
def test_sigkill_then_resume_then_fresh_on_param_change(tiny_repo):
    work, params, run = tiny_repo
    params["train_embedder"].update({"max_steps": 300, "save_steps": 40, "eval_steps": 1000, "logging_steps": 20})
    params["train_embedder"]["load_best_model_at_end"] = False
    write_params(work, params)
    run("repro", "negatives")
    (work / "metrics/train_embedder.json").unlink(missing_ok=True)  # the copy carries the committed one

    proc = subprocess.Popen(
        [sys.executable, "stages/train_embedder.py"], cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and not _checkpoints(work) and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, f"training finished before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_checkpoints(work))
    assert 0 < killed_at < 300
    assert not (work / "metrics/train_embedder.json").exists()

    out = run("repro", "train_embedder")
    assert "Resuming" in out
    m = read_json(work / "metrics/train_embedder.json")
    assert m["train"]["resumed_from_step"] >= killed_at
    assert m["effective"]["optimizer_steps"] == 300

    # a param that changes training must not continue from a stale checkpoint
    params["train_embedder"].update({"lr": 2e-4, "max_steps": 40})
    write_params(work, params)
    out = run("repro", "train_embedder")
    assert "Resuming" not in out
    m = read_json(work / "metrics/train_embedder.json")
    assert m["train"]["resumed_from_step"] == 0 and m["effective"]["optimizer_steps"] == 40
    assert m["effective"]["learning_rate"] == 2e-4


@pytest.mark.slow
def test_two_process_ddp_with_gloo(tiny_repo):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed next to this python")
    work, params, run = tiny_repo
    params["train_embedder"].update({"max_steps": 8, "save_steps": 4, "eval_steps": 4})
    write_params(work, params)
    run("repro", "negatives")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = str(_free_port())
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
         "stages/train_embedder.py"],
        cwd=work, env=dict(_env(work), MASTER_ADDR="127.0.0.1", MASTER_PORT=port), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = read_json(work / "metrics/train_embedder.json")
    assert m["effective"]["world_size"] == 2
    assert m["effective"]["optimizer_steps"] == 8
    assert m["effective"]["in_batch_negatives_per_query"] == 2 * params["train_embedder"]["batch_size"] - 1
    first = m["train"]["first_epoch_batches"]  # the two processes' batches are planned and reported as one
    assert first["batches"] > 1 and first["gathered_batches"] == math.ceil(first["batches"] / 2)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(work / "models/embedder"), device="cpu").encode(["xin chào"]).shape[1] == 32
