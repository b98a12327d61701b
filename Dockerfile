# syntax=docker/dockerfile:1
# RunPod serverless worker for F5-TTS, small by construction (see docs/handler.md).
# The image holds only cache-sync, the handler and their light dependencies (boto3, runpod,
# zstandard, huggingface_hub, ...). torch, f5-tts and the models are NOT in it: `cache-sync run`
# pulls them from the bucket into the cache (the network volume when one is mounted) before the
# worker starts, and pushes what changed when RunPod stops the worker. On an empty bucket the
# fleet bootstraps itself: one worker installs requirements/runpod.txt and downloads the
# models named below, the others wait and pull (docs/design.md section 8).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    CACHE_SYNC_OVERLAP=1 \
    CACHE_SYNC_UNIT_START=1 \
    RUNPOD_LOG_LEVEL=INFO \
    HANDLER_ENGINE=f5 \
    HANDLER_F5_MODEL_REPO=SWivid/F5-TTS \
    HANDLER_VOCOS_MODEL_REPO=charactr/vocos-mel-24khz \
    CACHE_SYNC_HF_MODELS_HOOK=handler.models:hub_models
# The cache root is left unset on purpose: cache-sync picks /runpod-volume/cache when a
# network volume is mounted, else /tmp/runpod-cache. Set CACHE_SYNC_ROOT to override.

WORKDIR /opt/worker
COPY pyproject.toml ./
COPY cache_sync ./cache_sync
COPY handler ./handler
COPY requirements ./requirements
# DL3013 (pin versions): this installs the local project; its dependency ranges live in
# pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[handler]" \
    && rm -rf /opt/worker/build /opt/worker/*.egg-info

# Runs as root by default: RunPod network volumes are usually root-owned (filled from a pod
# that ran as root), and a non-root worker could not write /runpod-volume/cache. Without a
# network volume, or with the volume's cache dir chowned to 1000, build with
# --build-arg RUN_AS=worker to run unprivileged.
ARG RUN_AS=root
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin worker
USER ${RUN_AS}

# cache-sync run: preflight, pull, bootstrap what is missing (one worker per fleet), start the
# worker, forward SIGTERM, push, exit. On a cold start (CACHE_SYNC_UNIT_START=1) the worker
# starts once the metadata of packages/ is in and the requirements are satisfied by it; each
# import waits for its own distribution (docs/design.md section 5.4).
ENTRYPOINT ["cache-sync", "run", "--requirements", "/opt/worker/requirements/runpod.txt", \
            "--", "python", "-m", "handler"]
