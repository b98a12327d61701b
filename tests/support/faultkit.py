"""Shared pieces of the fault suite: a workspace (cache root + store + environment) driven
through the real CLI, seeded tree generation and mutation, and a store auditor that proves
every snapshot in a store is intact and pullable byte for byte (without the CLI)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from cache_sync.config import Settings
from cache_sync.fsutil import TMP_PREFIX
from cache_sync.layout import object_key
from cache_sync.repo import list_refs
from cache_sync.snapshot import CODEC_ZSTD, Snapshot, decode
from cache_sync.storage import Store, open_store
from tests.support import crash

# Small pack/chunk sizes so a few MiB of test data make many objects (many kill points) and
# exercise both the pack path and the chunk path.
SMALL_OBJECTS = {
    "CACHE_SYNC_SMALL_FILE": "64k",
    "CACHE_SYNC_CHUNK_SIZE": "256k",
    "CACHE_SYNC_PACK_SIZE": "512k",
    "CACHE_SYNC_RETRY_BASE": "0.05",
    "CACHE_SYNC_RETRY_MAX": "1",
    "CACHE_SYNC_TRANSFERS": "4",
}
AREA = "packages"


def is_temp(rel: str) -> bool:
    return os.path.basename(rel).startswith(TMP_PREFIX)


@dataclass
class Workspace:
    root: Path
    remote: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        return crash.cli("--root", str(self.root), "--remote", self.remote, *args)

    def run(self, *args: str, ok: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*args), env=dict(env or self.env), capture_output=True,
                           text=True, timeout=timeout)
        if ok:
            assert r.returncode == 0, f"{args} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def area(self, name: str = AREA) -> Path:
        return self.root / name

    def tree(self, name: str = AREA) -> dict[str, crash.Entry]:
        return crash.snapshot_tree(self.area(name), skip=())

    def settings(self, **kw) -> Settings:
        return Settings.from_env(self.env, root=str(self.root), remote=self.remote, **kw)

    def cli(self, *args: str) -> None:
        """The real CLI entry point in this process (for actors that ``interleave.py``
        steps through their store requests); the settings come from ``os.environ``."""
        from cache_sync.cli.main import main

        rc = main(["--root", str(self.root), "--remote", self.remote, *args])
        if rc != 0:
            raise AssertionError(f"{args} on {self.root.name} exited {rc}")

    def sibling(self, name: str) -> Workspace:
        """Another cache root on the same store (another worker)."""
        return Workspace(self.root.parent / name, self.remote, dict(self.env))


def workspace(tmp_path: Path, remote: str | None = None, extra: Mapping[str, str] | None = None,
              name: str = "root") -> Workspace:
    env = crash.cli_env({**SMALL_OBJECTS, "CACHE_SYNC_AREAS": AREA, **(extra or {})})
    return Workspace(tmp_path / name, remote or f"file://{tmp_path}/store", env)


# --- trees -----------------------------------------------------------------------------------
def make_tree(area: Path, seed: int, files: int = 60, big: int = 1) -> None:
    """A pip-like tree: packages with small files (some empty, some executable), a relative
    symlink, an empty dir, an HF-style blobs/snapshots pair, and ``big`` chunked files."""
    rng = random.Random(seed)
    area.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        p = area / f"pkg{i % 7}" / f"mod{i}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"" if i % 17 == 0 else rng.randbytes(rng.choice([50, 900, 4000, 30000])))
        if i % 11 == 0:
            p.chmod(0o755)
    (area / "empty-dir").mkdir(exist_ok=True)
    (area / "README.txt").write_bytes(b"compressible text, stored with zstd\n" * (200 + seed % 50))
    blobs = area / "hub" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob = rng.randbytes(5000)
    digest = hashlib.sha256(blob).hexdigest()
    (blobs / digest).write_bytes(blob)
    snap = area / "hub" / "snapshots" / "main"
    snap.mkdir(parents=True, exist_ok=True)
    link = snap / "config.json"
    if not link.is_symlink():
        link.symlink_to(f"../../blobs/{digest}")
    for j in range(big):
        (area / f"weights{j}.bin").write_bytes(rng.randbytes(rng.randint(600_000, 900_000)))


def mutate(area: Path, seed: int) -> None:
    """A seeded change: add files, rewrite one, delete one, flip a mode, add a symlink."""
    rng = random.Random(seed)
    files = sorted(p for p in area.rglob("*") if p.is_file() and not p.is_symlink())
    for k in range(rng.randint(2, 6)):
        p = area / f"new{seed}" / f"f{k}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(rng.choice([10, 3000, 70000])))
    if files:
        victim = rng.choice(files)
        victim.write_bytes(rng.randbytes(rng.randint(1, 20000)))
        gone = rng.choice(files)
        if gone != victim and gone.exists():
            gone.unlink()
        flip = rng.choice(files)
        if flip.exists():
            flip.chmod(flip.stat().st_mode ^ 0o111)
    link = area / f"new{seed}" / "link"
    if not link.is_symlink():
        link.symlink_to("f0.py")


def reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


# --- store audit -----------------------------------------------------------------------------
@dataclass
class Audit:
    snapshots: dict[str, Snapshot]
    objects_checked: int


def open_raw_store(ws: Workspace) -> Store:
    return open_store(ws.settings())


def audit_store(ws: Workspace, area: str = AREA,
                expected: Mapping[str, Mapping[str, crash.Entry]] | None = None,
                verified: dict[str, int] | None = None) -> Audit:
    """Every snapshot of ``area`` decodes, every object it names exists and hashes to its name,
    and every file it lists reassembles to its recorded SHA-256 (that is: every snapshot pulls
    byte for byte). With ``expected`` (snapshot id -> tree), each listed snapshot must also
    equal the tree that was pushed as it."""
    store = open_raw_store(ws)
    objects: dict[str, bytes] = {}
    # ``verified`` (oid -> size) carries hashes checked by an earlier audit: objects are
    # immutable, so one LIST showing the same size is enough to skip re-reading them. A full
    # audit (verified=None) re-reads everything.
    sizes = {info.key.rsplit("/", 1)[-1]: info.size for info in store.list("objects/")}

    def obj(oid: str) -> bytes:
        if oid not in objects:
            data = store.get(object_key(oid))
            assert hashlib.sha256(data).hexdigest() == oid, f"object {oid} does not match its name"
            objects[oid] = data
            if verified is not None:
                verified[oid] = len(data)
        return objects[oid]

    snaps: dict[str, Snapshot] = {}
    for ref in list_refs(store, area):
        snap = decode(store.get(ref.key), what=ref.key)
        snaps[snap.id] = snap
        for e in snap.entries.values():
            if e.kind != "f":
                continue
            if verified is not None and e.blobs and all(
                    verified.get(b.oid) == sizes.get(b.oid) is not None for b in e.blobs):
                continue  # checked by an earlier audit, and still there with the same size
            h = hashlib.sha256()
            for b in e.blobs:
                stored = obj(b.oid)[b.offset:b.offset + b.stored]
                raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=b.raw) \
                    if b.codec == CODEC_ZSTD else stored
                assert len(raw) == b.raw
                h.update(raw)
            assert h.hexdigest() == e.digest, f"{ref.key}: {e.path} does not reassemble"
        if expected and snap.id in expected:
            want = expected[snap.id]
            got = {p: (e.kind, e.digest if e.kind == "f" else e.target) for p, e in
                   snap.entries.items()}
            exp = {p: (x.kind[0], x.digest) for p, x in want.items()}
            assert got == exp, f"snapshot {snap.id} differs from the tree pushed as it"
    store.close()
    return Audit(snaps, len(objects))


def age_store(ws: Workspace, prefix: str, seconds: float = 3 * 86400.0) -> None:
    """Move the store-side times (mtimes) under ``prefix`` of a local store back: time
    passing for gc's grace and mark delays, without waiting."""
    base = Path(ws.remote[len("file://"):]) / prefix
    for p in base.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def snapshot_ids(ws: Workspace, area: str = AREA) -> set[str]:
    store = open_raw_store(ws)
    try:
        return {r.id for r in list_refs(store, area)}
    finally:
        store.close()


# --- counts for docs/faults.md ---------------------------------------------------------------
def record(test: str, **counts: int) -> None:
    """Append this test's counts (kill points survived, faults injected per kind, hostile
    inputs, fuzz iterations) as one JSON line to $FAULTS_STATS, when set."""
    import json

    path = os.environ.get("FAULTS_STATS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **counts}) + "\n")


def long_mode() -> bool:
    """The documented long run: ``FAULTS_LONG=1`` (or pytest --run-slow for @slow tests)."""
    return os.environ.get("FAULTS_LONG", "") not in ("", "0")
