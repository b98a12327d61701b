#!/usr/bin/env bash
# Prepare a worker's cache from a Backblaze B2 (or any S3-compatible) bucket.
#
#   source scripts/setup-backblaze-storage.sh
#
# Checks the settings (naming what is missing, never printing a secret), creates the cache
# layout, probes the bucket (cache-sync doctor: list/read/write/delete, the S3 dialect, latency,
# throughput, the fix for anything refused; its table goes to stderr), pulls, and exports the environment
# (TMPDIR, PIP_*, PYTHONPATH, HF_*, ...) into the calling shell. All logic is in cache-sync;
# this file only wires variables. Returns (never exits the calling shell) with:
#   0 ok (also when only delete is refused: gc unavailable), 2 settings missing, 3 bucket
#   unreachable or the key lacks list/read/write, other: cache-sync's own exit code.
#
# Variables: B2_BUCKET [B2_PREFIX=cache-sync] B2_APPLICATION_KEY_ID B2_APPLICATION_KEY B2_REGION
#   or CACHE_SYNC_REMOTE=s3://bucket/prefix with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and
#   CACHE_SYNC_ENDPOINT_URL. CACHE_SYNC_ROOT picks the cache root. CACHE_SYNC_PYTHON=python
#   runs `python -m cache_sync` instead of the cache-sync command.

_cache_sync_setup() {
  local -a cs missing=()
  if [ -n "${CACHE_SYNC_PYTHON:-}" ]; then
    cs=("$CACHE_SYNC_PYTHON" -m cache_sync)
  else
    cs=(cache-sync)
  fi

  if [ -z "${CACHE_SYNC_REMOTE:-}" ]; then
    if [ -n "${B2_BUCKET:-}" ]; then
      export CACHE_SYNC_REMOTE="s3://${B2_BUCKET}/${B2_PREFIX:-cache-sync}"
    else
      missing+=("B2_BUCKET (or CACHE_SYNC_REMOTE)")
    fi
  fi
  case "${CACHE_SYNC_REMOTE:-s3://}" in
    s3://*)
      if [ -z "${B2_APPLICATION_KEY_ID:-}${AWS_ACCESS_KEY_ID:-}" ]; then
        missing+=("B2_APPLICATION_KEY_ID (or AWS_ACCESS_KEY_ID)")
      fi
      if [ -z "${B2_APPLICATION_KEY:-}${AWS_SECRET_ACCESS_KEY:-}" ]; then
        missing+=("B2_APPLICATION_KEY (or AWS_SECRET_ACCESS_KEY)")
      fi
      if [ -z "${B2_REGION:-}${CACHE_SYNC_ENDPOINT_URL:-}${AWS_ENDPOINT_URL_S3:-}${AWS_ENDPOINT_URL:-}" ]; then
        missing+=("B2_REGION (e.g. us-west-004) or CACHE_SYNC_ENDPOINT_URL")
      fi
      ;;
  esac
  if [ "${#missing[@]}" -gt 0 ]; then
    local m
    for m in "${missing[@]}"; do
      echo "setup-backblaze-storage: missing setting: $m" >&2
    done
    return 2
  fi

  local exports
  # `cache-sync env` creates the layout (packages/ pip/ models/ deps/ tmp/ build/) too.
  exports="$("${cs[@]}" env --shell bash)" || return $?
  if ! "${cs[@]}" doctor --size "${CACHE_SYNC_DOCTOR_SIZE:-8M}" >&2; then
    echo "setup-backblaze-storage: the bucket cannot serve this worker with these settings" \
      "(remote ${CACHE_SYNC_REMOTE}); see the fixes in the table above" >&2
    return 3
  fi
  "${cs[@]}" pull || return $?
  eval "$exports"
  echo "setup-backblaze-storage: cache ready at ${CACHE_SYNC_ROOT} from ${CACHE_SYNC_REMOTE}" >&2
}

_cache_sync_setup_rc=0
_cache_sync_setup "$@" || _cache_sync_setup_rc=$?
unset -f _cache_sync_setup
if (return 0 2>/dev/null); then
  # shellcheck disable=SC2317  # reachable: this file is sourced
  return "$_cache_sync_setup_rc"
fi
echo "setup-backblaze-storage: run with 'source' to keep the exports in your shell" >&2
exit "$_cache_sync_setup_rc"
