# `ragtune serve` in a container: CPU serving of the models `dvc repro` trained (docs/deployment.md).
# Build at the repository root once models/ holds the trained folders (after `dvc repro`, or `dvc pull`):
#   docker build -t ragtune-serve .
#   docker run --rm -p 8000:8000 ragtune-serve
# The image holds code and models; a new model is a new image (tag it with the embedder's fingerprint,
# models/index/manifest.json), so what runs is always what the report measured.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf RAGTUNE_CACHE=/tmp/ragtune-cache \
    TOKENIZERS_PARALLELISM=false RAGTUNE_QUIET=1
WORKDIR /srv/ragtune

# The CPU build of torch first: an unpinned torch from PyPI pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY src/ src/
RUN pip install --no-deps .

# What `ragtune serve` reads: the model folders, the index, the chosen pipeline, and the report's figures
# (GET /v1/models). .dockerignore keeps data/, the DVC cache and the virtualenv out of the build context.
COPY models/ models/
COPY metrics/evaluate.json metrics/evaluate.json

RUN useradd --system --no-create-home ragtune && chown -R ragtune /srv/ragtune
USER ragtune
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["ragtune", "serve", "--host", "0.0.0.0", "--port", "8000", "--root", "/srv/ragtune"]
