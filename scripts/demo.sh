#!/usr/bin/env bash
# Quick start: run cache-sync's main job from this checkout on a local-directory store (no
# cloud account): push a small worker cache (packages + an HF-layout model), pull it into a
# fresh cache root, show status, verify it, push again (a no-op).
#
# It installs nothing but what these commands import, and only when missing (zstandard,
# tenacity, psutil, packaging: a few seconds); boto3 (S3 stores), runpod (the handler) and the
# test tools are not needed here. `pip install .` gives the `cache-sync` command itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import zstandard, tenacity, psutil, packaging' 2>/dev/null; then
  python3 -m pip install -q zstandard tenacity psutil packaging
fi
demo=$(mktemp -d "${TMPDIR:-/tmp}/cache-sync-demo.XXXXXX")
export CACHE_SYNC_REMOTE="file://$demo/store"   # the embedded default lives under ~/.cache;
                                                # the demo keeps its own so it leaves no trace
src="$demo/worker-1" dst="$demo/worker-2"
mkdir -p "$src/packages/demo_pkg" "$src/models/hub/models--demo--tiny/"{blobs,snapshots/rev1,refs}
printf 'def hello():\n    return "hello from the cache"\n' > "$src/packages/demo_pkg/__init__.py"
head -c 20000000 /dev/urandom > "$src/models/hub/models--demo--tiny/blobs/weights"
ln -s ../../blobs/weights "$src/models/hub/models--demo--tiny/snapshots/rev1/model.safetensors"
echo rev1 > "$src/models/hub/models--demo--tiny/refs/main"
set -x
python3 -m cache_sync --root "$src" push
python3 -m cache_sync --root "$dst" pull
python3 -m cache_sync --root "$dst" status
python3 -m cache_sync --root "$dst" verify
python3 -m cache_sync --root "$dst" push
PYTHONPATH="$dst/packages" python3 -c 'import demo_pkg; print(demo_pkg.hello())'
python3 -m cache_sync --root "$dst" log
{ set +x; } 2>/dev/null
echo "demo files are in $demo (remove with: rm -rf $demo)"
