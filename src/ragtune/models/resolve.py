"""Turn a model name into a local folder, offline if need be.

Every stage that embeds or tokenizes goes through :func:`resolve_model`, so the pipeline behaves the same on a
laptop with the Hugging Face hub, on an air-gapped box with a pre-filled HF cache, and on a machine with neither.
The order is:

1. ``name`` is an existing local folder → use it (an explicit path always wins, as in ``transformers``).
2. The HF cache (``snapshot_download(local_files_only=True)``), then the hub itself unless ``HF_HUB_OFFLINE=1``.
   The online attempt is preceded by a few-seconds reachability probe so a firewalled machine fails in seconds,
   never in minutes. ``revision`` (params ``model.revision``: a branch, tag or commit) pins both; without it the
   Hub's main branch is used.
3. An offline builder registered in :data:`OFFLINE_BUILDERS` for that name. It runs once and leaves a normal
   sentence-transformers folder at ``$RAGTUNE_CACHE/models/<org>--<name>`` (written to a temp dir, then renamed,
   so an interrupted build never leaves a half folder that later runs would trust). It builds one fixed version,
   so a pinned ``revision`` skips it.

The only builder today reconstructs ``intfloat/multilingual-e5-small`` offline (:mod:`ragtune.models.e5_offline`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from huggingface_hub import snapshot_download

from ragtune.models.e5_offline import E5_PROMPTS, build_multilingual_e5_small
from ragtune.models.errors import ModelResolutionError

if TYPE_CHECKING:  # heavy imports stay lazy: `ragtune --help` must not pay for torch/transformers
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

DEFAULT_EMBEDDER = "intfloat/multilingual-e5-small"

KNOWN_PROMPTS: dict[str, dict[str, str]] = {
    "intfloat/multilingual-e5-small": E5_PROMPTS,
    "intfloat/multilingual-e5-base": E5_PROMPTS,
    "intfloat/multilingual-e5-large": E5_PROMPTS,
}

# Formats no PyTorch stage ever loads; skipping them keeps e.g. BAAI/bge-m3 from pulling gigabytes of ONNX.
HUB_IGNORE_PATTERNS = [
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.gguf",
    "tf_model*",
    "flax_model*",
    "rust_model*",
    "coreml/*",
]

HUB_PROBE_TIMEOUT_S = 3.0
HUB_ETAG_TIMEOUT_S = 5.0

# The marker is written last, inside the temp dir, before the rename: its presence is what makes a cached
# folder trustworthy (a folder without it came from somewhere else, e.g. a manual copy, and is rebuilt).
BUILD_MARKER = ".ragtune-build.json"


Builder = Callable[[Path], None]
"""Writes a complete sentence-transformers folder into the given (existing, empty) directory."""

OFFLINE_BUILDERS: dict[str, Builder] = {
    "intfloat/multilingual-e5-small": build_multilingual_e5_small,
}


# --------------------------------------------------------------------------------------------- resolution


def ragtune_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The ragtune cache root: ``cache_dir`` if given, else ``$RAGTUNE_CACHE``, else ``~/.cache/ragtune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RAGTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ragtune"


def built_model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the offline builder's output for ``name`` lives (``org/model`` → ``org--model``, as the HF cache)."""
    return ragtune_cache_dir(cache_dir) / "models" / name.replace("/", "--")


def _env_true(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    # Read the environment at call time: huggingface_hub.constants froze it at import, but tests and users
    # may set HF_HUB_OFFLINE later in the process.
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """TCP-connect to the hub endpoint within ``timeout`` seconds (DNS included, hence the thread).

    huggingface_hub's own timeouts apply per request and do not bound DNS resolution, so on a black-holed
    network an unguarded attempt can stall far longer than a pipeline stage should.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if result.get("ok"):
        return True, f"{host}:{port} reachable"
    return False, f"{host}:{port} unreachable ({result.get('error', f'no answer within {timeout:.0f}s')})"


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in {".", ".."}


def _is_model_folder(path: Path) -> bool:
    # A snapshot that only holds e.g. config.json (left by AutoConfig) is not loadable as a model.
    return path.is_dir() and any(
        (path / f).exists()
        for f in (
            "modules.json",
            "model.safetensors",
            "pytorch_model.bin",
            "model.safetensors.index.json",
            "pytorch_model.bin.index.json",
        )
    )


def resolve_model(name: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Return a local folder (str) loadable by ``SentenceTransformer`` / ``AutoTokenizer``.

    ``revision`` pins a Hub id to a branch, tag or commit (None or "": the main branch); a local folder has no
    revisions, so a revision given with one is an error rather than silently ignored. ``cache_dir`` overrides the
    ragtune cache root used by offline builders (``$RAGTUNE_CACHE``); the HF cache itself stays governed by
    ``HF_HOME`` / ``HF_HUB_CACHE`` so that it is shared with every other HF tool.
    Raises :class:`ModelResolutionError` naming every source that was tried.
    """
    if not name or not name.strip():
        raise ModelResolutionError(
            f"empty model name; pass a local folder or a Hugging Face id such as {DEFAULT_EMBEDDER!r}."
        )
    revision = str(revision).strip() if revision is not None else ""
    pin = {"revision": revision} if revision else {}  # no revision: the calls stay exactly what they were
    tried: list[str] = []
    build_error: Exception | None = None  # chained onto the final error so the builder's traceback survives

    # 1. an explicit local folder
    local = Path(name).expanduser()
    if local.is_dir():
        if revision:
            raise ModelResolutionError(
                f"model.revision {revision!r} pins a Hugging Face Hub download, but {name!r} is a local folder, "
                "which has no revisions. Fix: leave model.revision empty, or put the revision you want in that folder."
            )
        return str(local)
    if _looks_like_path(name):
        raise ModelResolutionError(f"{name!r} looks like a local path but no such folder exists (cwd: {Path.cwd()}).")
    tried.append(f"local folder {name!r}: does not exist")

    # 2a. the HF cache
    try:
        snap = Path(snapshot_download(name, local_files_only=True, **pin))
        if _is_model_folder(snap):
            return str(snap)
        tried.append(f"HF cache: snapshot {snap} has no weights (incomplete download)")
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError (odd names), permission errors...
        at = f" at revision {revision!r}" if revision else ""
        tried.append(f"HF cache ({_hf_cache_location()}){at}: {_short(exc)}")

    builder = OFFLINE_BUILDERS.get(name)
    built = built_model_dir(name, cache_dir)
    # 2b. the hub
    if _hub_offline():
        tried.append("HF hub: skipped (HF_HUB_OFFLINE=1)")
    else:
        ok, why = _hub_reachable()
        if not ok:
            tried.append(f"HF hub: skipped, {why}")
        else:
            try:
                snap = Path(
                    snapshot_download(name, etag_timeout=HUB_ETAG_TIMEOUT_S, ignore_patterns=HUB_IGNORE_PATTERNS, **pin)
                )
                if _is_model_folder(snap):
                    return str(snap)
                tried.append(f"HF hub: downloaded {snap} but it holds no weights")
            except Exception as exc:
                tried.append(f"HF hub: {_short(exc)}")

    # 3. an offline builder (cached after its first run)
    if builder is None:
        tried.append(f"offline builder: none registered for {name!r} (available: {sorted(OFFLINE_BUILDERS)})")
    elif revision:
        tried.append(
            f"offline builder: skipped, it builds one fixed version and cannot honour model.revision {revision!r} "
            "(leave model.revision empty to use it)"
        )
    else:
        try:
            return str(_build_cached(name, builder, built))
        except Exception as exc:
            build_error = exc
            tried.append(f"offline builder -> {built}: {_short(exc)}")

    steps = "\n  - ".join(tried)
    raise ModelResolutionError(
        f"could not resolve model {name!r}. Tried:\n  - {steps}\n"
        "Fix: pass a local model folder instead of a hub id; or, on a machine with internet, run "
        f"`huggingface-cli download {name}{f' --revision {revision}' if revision else ''}` and copy the HF cache "
        "here (point HF_HOME at it); "
        "or unset HF_HUB_OFFLINE if this machine can reach the hub."
    ) from build_error


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def _hf_cache_location() -> str:
    try:
        from huggingface_hub import constants

        return str(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - purely informational
        return "HF cache"


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialize concurrent builds of the same model (parallel DVC stages, pytest-xdist) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: the atomic rename still prevents half folders
        yield
        return
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_cached(name: str, builder: Builder, dest: Path) -> Path:
    """Run ``builder`` once into ``dest`` atomically; later calls (and waiting processes) reuse it."""
    if (dest / BUILD_MARKER).exists():
        return dest
    with _build_lock(dest.with_name(dest.name + ".lock")):
        if (dest / BUILD_MARKER).exists():  # another process finished while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            t0 = time.perf_counter()
            builder(tmp)
            marker = {
                "name": name,
                "builder": _callable_name(builder),
                "build_seconds": round(time.perf_counter() - t0, 2),
            }
            (tmp / BUILD_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            if dest.exists():  # a folder without the marker: untrusted leftovers, replace it
                trash = dest.with_name(f".{dest.name}.stale-{os.getpid()}")
                os.replace(dest, trash)
                shutil.rmtree(trash, ignore_errors=True)
            _chmod_like_umask(tmp)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _callable_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` for provenance; builders may be any callable (a class instance, a partial)."""
    target = getattr(fn, "func", fn)  # functools.partial
    qualname = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{getattr(target, '__module__', '?')}.{qualname}"


def _chmod_like_umask(root: Path) -> None:
    """mkdtemp (and some savers) create 0700/0600 entries; a shared cache should follow the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


# ------------------------------------------------------------------------------------------------ loaders


def load_embedder(
    name: str,
    *,
    revision: str | None = None,
    device: str | None = None,
    max_seq_length: int | None = None,
    cache_dir: str | Path | None = None,
) -> SentenceTransformer:
    """Resolve ``name`` (at ``revision``, see :func:`resolve_model`) and load it as a ``SentenceTransformer``.

    Known E5 models get their ``query: ``/``passage: `` prompts even when the folder came from the hub without
    them, so downstream code can always use ``prompt_name="query"`` / ``"passage"``.
    """
    from sentence_transformers import SentenceTransformer

    # the folder is local by now: the revision was honoured when resolving it, from_pretrained has nothing to pin
    path = resolve_model(name, revision=revision, cache_dir=cache_dir)
    model = SentenceTransformer(path, device=device, local_files_only=True)
    for prompt_name, prompt in KNOWN_PROMPTS.get(name, KNOWN_PROMPTS.get(_hub_id_of_snapshot(path), {})).items():
        if not model.prompts.get(prompt_name):  # missing, or the "" placeholder ST 6 adds
            model.prompts[prompt_name] = prompt
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def _hub_id_of_snapshot(path: str | Path) -> str | None:
    """``.../models--intfloat--multilingual-e5-small/snapshots/<rev>`` → ``intfloat/multilingual-e5-small``.

    Callers often pass the already-resolved folder; this keeps the known-prompt lookup working for HF snapshots.
    """
    for part in reversed(Path(path).parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return None


def load_tokenizer(
    name: str, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name`` at ``revision`` (chunking counts tokens with the vocabulary the embedder sees)."""
    from transformers import AutoTokenizer

    path = resolve_model(name, revision=revision, cache_dir=cache_dir)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
