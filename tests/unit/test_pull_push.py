"""pull / push in-process on a local directory store (no server, no subprocess)."""

from __future__ import annotations

import os
import time

import pytest

from cache_sync.config import Settings
from cache_sync.errors import DeadlineExceeded
from cache_sync.pull import pull
from cache_sync.push import push


def _settings(tmp_path, name: str) -> Settings:
    env = {"CACHE_SYNC_AREAS": "packages", "CACHE_SYNC_PACK_SIZE": "64k",
           "CACHE_SYNC_SMALL_FILE": "4k", "CACHE_SYNC_CHUNK_SIZE": "64k"}
    return Settings.from_env(env, root=str(tmp_path / name), remote=f"file://{tmp_path}/store")


def _tree(root) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture()
def pushed(tmp_path):
    writer = _settings(tmp_path, "writer")
    area = writer.area_path("packages")
    for i in range(20):
        (area / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (area / f"d{i % 3}" / f"f{i}").write_bytes(os.urandom(100 + i * 3000))
    [rep] = push(writer)
    assert rep.snapshot and not rep.up_to_date
    return writer


def test_pull_honours_its_deadline(tmp_path, pushed):
    reader = _settings(tmp_path, "reader")
    with pytest.raises(DeadlineExceeded, match="pull of packages"):
        pull(reader, deadline=time.monotonic() - 1)
    assert _tree(reader.area_path("packages")) == {}  # nothing fetched, nothing half-written
    [rep] = pull(reader, deadline=time.monotonic() + 60)
    assert _tree(reader.area_path("packages")) == _tree(pushed.area_path("packages"))
    assert rep.files == 20


def test_pull_deadline_stops_before_the_next_request(tmp_path, pushed, monkeypatch):
    """A deadline that passes during the fetch stops it at the next request; the area is
    left exactly as it was (the files fetched so far were only staged: design 5.2) and the
    next pull converges."""
    from cache_sync import pull as pull_mod

    reader = _settings(tmp_path, "reader").with_overrides(transfers=1)
    calls = {"n": 0}
    real = pull_mod.check_deadline

    def expiring(deadline, area):
        calls["n"] += 1
        real(time.monotonic() - 1 if calls["n"] > 6 else deadline, area)

    monkeypatch.setattr(pull_mod, "check_deadline", expiring)
    with pytest.raises(DeadlineExceeded):
        pull(reader, deadline=time.monotonic() + 60)
    want = _tree(pushed.area_path("packages"))
    got = _tree(reader.area_path("packages"))
    assert calls["n"] > 6 and got == {}  # a fresh root: nothing was put in place
    monkeypatch.setattr(pull_mod, "check_deadline", real)
    pull(reader)
    assert _tree(reader.area_path("packages")) == want


def test_push_without_changes_opens_no_store(tmp_path, pushed, monkeypatch):
    from cache_sync import push as push_mod

    def refuse(_settings):
        raise AssertionError("a push with nothing to send opened the store")

    monkeypatch.setattr(push_mod, "open_store", refuse)
    [rep] = push(pushed)
    assert rep.up_to_date


def test_up_to_date_pull_decodes_no_state_and_stats_no_file(pushed, tmp_path, monkeypatch):
    """The warm start on a network volume: after one LIST, a pull whose heads are the ones
    the root last synced to returns without decoding the state or scanning the area."""
    from cache_sync import local_cache
    from cache_sync import pull as pull_mod

    reader = _settings(tmp_path, "reader")
    pull(reader)
    (reader.area_path("packages") / "local-only.txt").write_text("not pushed")

    def boom(*_a, **_k):
        raise AssertionError("the up-to-date path must not get here")

    monkeypatch.setattr(pull_mod, "scan", boom)
    monkeypatch.setattr(local_cache.CacheState, "load_state", boom)
    [rep] = pull(reader)
    assert rep.up_to_date and rep.snapshot
    assert (reader.area_path("packages") / "local-only.txt").read_text() == "not pushed"
    monkeypatch.undo()

    # Once the store moves, the full path runs again and brings the new snapshot.
    (pushed.area_path("packages") / "d0" / "new").write_bytes(b"new")
    push(pushed)
    [rep] = pull(reader)
    assert not rep.up_to_date
    assert (reader.area_path("packages") / "d0" / "new").read_bytes() == b"new"
    assert (reader.area_path("packages") / "local-only.txt").read_text() == "not pushed"


def test_a_rewritten_state_file_disowns_the_heads_record(pushed, tmp_path):
    """The heads record vouches only for the state file it was written with."""
    from cache_sync.local_cache import CacheState

    reader = _settings(tmp_path, "reader")
    pull(reader)
    cache = CacheState(reader.root)
    remote = f"file://{tmp_path}/store"
    assert cache.synced_heads("packages", remote)
    state_file = cache.dir / "packages.state.zst"
    state_file.write_bytes(state_file.read_bytes())  # rewritten: new mtime
    os.utime(state_file, ns=(1, 1))
    assert cache.synced_heads("packages", remote) is None
    assert cache.synced_heads("packages", "file:///elsewhere") is None
