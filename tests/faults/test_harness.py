"""Self-tests of the fault-suite helpers: kill-point harness, tree snapshots, the partial-file
checker, the small filesystem (tmpfs and injected ENOSPC) and the leak scanners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import zstandard

from tests.support import crash, leakcheck
from tests.support.faultproxy import fault_proxy
from tests.support.smallfs import merge_pythonpath, small_fs

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"]


def test_kill_after_lands_and_is_reported():
    r = crash.kill_after(SLEEPER, os.environ, delay=0.3, timeout=20)
    assert r.killed and r.returncode == -signal.SIGKILL  # the sleeper would run 30 s


def test_kill_after_a_finished_command_is_not_a_kill():
    r = crash.kill_after([sys.executable, "-c", "pass"], os.environ, delay=5, timeout=20)
    assert not r.killed and r.returncode == 0


def test_kill_at_request_count(moto):
    bucket = moto.make_bucket()
    code = ("import boto3,sys\n"
            "from botocore.config import Config\n"
            "c=boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',"
            "config=Config(retries={'total_max_attempts':1}))\n"
            "for i in range(10): c.put_object(Bucket=sys.argv[2],Key=f'k{i}',Body=b'x')\n")
    env = dict(os.environ, **moto.env())
    with fault_proxy(moto.endpoint) as p:
        r = crash.kill_at_request([sys.executable, "-c", code, p.endpoint, bucket], env, p, 4)
    assert r.killed
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["k0", "k1", "k2"]  # the 4th request was held when the kill landed


def test_seeded_delays_are_reproducible():
    assert crash.seeded_delays(7, 5, 2.0) == crash.seeded_delays(7, 5, 2.0)
    assert crash.seeded_delays(7, 5, 2.0) != crash.seeded_delays(8, 5, 2.0)


def test_snapshot_and_diff(tmp_path):
    crash.write_tree(tmp_path / "a", {"bin/run": b"#!/bin/sh\n", "lib/x.py": b"x = 1\n",
                                      "empty": None, "link": "->lib/x.py",
                                      ".cache-sync/state": b"s"}, modes={"bin/run": 0o755})
    tree = crash.snapshot_tree(tmp_path / "a")
    assert tree["bin/run"].mode == 0o755 and tree["link"].digest == "lib/x.py"
    assert tree["empty"].kind == "dir" and ".cache-sync" not in tree
    crash.write_tree(tmp_path / "b", {"bin/run": b"#!/bin/sh\n", "lib/x.py": b"x = 2\n",
                                      "link": "->lib/y.py"})
    diff = crash.diff_trees(tree, crash.snapshot_tree(tmp_path / "b"))
    assert any(d.startswith("missing empty") for d in diff)
    assert any(d.startswith("differs lib/x.py") for d in diff)
    assert any(d.startswith("differs link") for d in diff)
    assert any(d.startswith("differs bin/run") for d in diff)  # mode 0755 vs 0644
    assert crash.diff_trees(tree, crash.snapshot_tree(tmp_path / "a")) == []


def test_partial_checker_catches_half_written_file(tmp_path):
    old = {"f": b"old contents"}
    new = {"f": b"new contents, longer", "g": b"g"}
    crash.write_tree(tmp_path / "old", old)
    crash.write_tree(tmp_path / "new", new)
    allowed = [crash.snapshot_tree(tmp_path / "old"), crash.snapshot_tree(tmp_path / "new")]
    area = tmp_path / "area"
    crash.write_tree(area, {"f": b"new contents, longer", "g": b"g", ".f.tmp123": b"new c"})
    assert crash.partial_files(area, allowed, is_temp=lambda r: ".tmp" in r) == []
    (area / "g").write_bytes(b"")  # a zero-length leftover at a final path
    (area / "f").write_bytes(b"new cont")
    bad = crash.partial_files(area, allowed, is_temp=lambda r: ".tmp" in r)
    assert len(bad) == 2 and bad[0].startswith("f ")
    with pytest.raises(AssertionError):
        crash.assert_no_partial(area, allowed)


WRITER = ("import sys\n"
          "try:\n"
          "    with open(sys.argv[1], 'wb') as f:\n"
          "        for _ in range(int(sys.argv[2])): f.write(b'x' * 65536)\n"
          "except OSError as e:\n"
          "    print('errno', e.errno); sys.exit(3)\n"
          "import shutil; print('free', shutil.disk_usage(sys.argv[1]).free)\n")


@pytest.mark.parametrize("force_injected", [False, True], ids=["tmpfs", "injected"])
def test_small_fs_fills_up_with_enospc(force_injected):
    with small_fs(2 * 1024 * 1024, force_injected=force_injected) as fs:
        env = merge_pythonpath(dict(os.environ), fs.env())
        ok = subprocess.run([sys.executable, "-c", WRITER, str(fs.path / "a"), "8"], env=env,
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        free = int(ok.stdout.split()[-1])
        assert 0 < free <= 2 * 1024 * 1024 - 512 * 1024
        full = subprocess.run([sys.executable, "-c", WRITER, str(fs.path / "b"), "64"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert full.returncode == 3 and "errno 28" in full.stdout, full.stdout + full.stderr


def test_find_leaks_whole_fragment_and_encoded():
    s = leakcheck.FAKE_SECRET
    assert leakcheck.find_leaks(f"error: bad key {s}")
    assert leakcheck.find_leaks(f"...{s[5:5 + leakcheck.FRAGMENT]}...")
    assert leakcheck.find_leaks("x=" + __import__("urllib.parse").parse.quote(s, safe=""))
    assert leakcheck.find_leaks("cache-sync: error: access denied (AKIA***)") == []


def test_scan_tree_reads_zstd(tmp_path):
    (tmp_path / "snap.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(f'{{"k": "{leakcheck.FAKE_TOKEN}"}}'.encode()))
    (tmp_path / "clean.txt").write_text("nothing here")
    hits = leakcheck.scan_tree(tmp_path)
    assert len(hits) == 1 and "snap.json.zst" in hits[0]


def test_scan_bucket(moto):
    bucket = moto.make_bucket()
    c = moto.client()
    c.put_object(Bucket=bucket, Key="a", Body=b"clean")
    assert leakcheck.scan_bucket(c, bucket) == []
    c.put_object(Bucket=bucket, Key="b", Body=f"x{leakcheck.FAKE_SECRET}".encode())
    assert len(leakcheck.scan_bucket(c, bucket)) == 1


def test_cli_env_isolates_settings(monkeypatch):
    monkeypatch.setenv("CACHE_SYNC_ROOT", "/should/not/leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    env = crash.cli_env({"X": "1"})
    assert "CACHE_SYNC_ROOT" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(crash.REPO) and env["X"] == "1"
    r = crash.run_cli(["--version"], env, timeout=30)
    assert r.returncode == 0 and "cache-sync" in r.stdout
