#!/usr/bin/env bash
# Install the RunPod worker's packages into the cache (after setup-backblaze-storage.sh):
# the curated requirements (f5-tts with --no-deps plus its real runtime dependencies, see
# requirements/runpod.txt), then, last and optional, the prebuilt flash-attn wheel matching the
# installed Python/torch/CUDA/C++ ABI, then an import check. packages/ is pushed afterwards.
# All logic is in `cache-sync install`; extra arguments are passed to it.
#
#   RUNPOD_REQUIREMENTS   requirements file (default: requirements/runpod.txt)
#   FLASH_ATTN_VERSION    flash-attn release to select, or "none" (default 2.8.3)
#   RUNPOD_CHECK_IMPORTS  modules that must import (default: f5_tts.api runpod torch torchaudio)
#   CACHE_SYNC_PYTHON     run `$CACHE_SYNC_PYTHON -m cache_sync` instead of cache-sync
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="${RUNPOD_REQUIREMENTS:-$here/../requirements/runpod.txt}"
flash_attn="${FLASH_ATTN_VERSION:-2.8.3}"
read -r -a check_imports <<<"${RUNPOD_CHECK_IMPORTS:-f5_tts.api runpod torch torchaudio}"

if [ -n "${CACHE_SYNC_PYTHON:-}" ]; then
  cs=("$CACHE_SYNC_PYTHON" -m cache_sync)
else
  cs=(cache-sync)
fi

args=(install -r "$requirements" "$@")
if [ "$flash_attn" != "none" ]; then
  args+=(--flash-attn "$flash_attn")
fi
if [ "${#check_imports[@]}" -gt 0 ]; then
  args+=(--check-imports "${check_imports[@]}")
fi
exec "${cs[@]}" "${args[@]}"
