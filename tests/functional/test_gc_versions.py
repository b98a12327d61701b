"""gc frees storage on a bucket that keeps versions (issue 19.4; docs/design.md 6.3).

Backblaze B2 keeps every version: a delete only hides a file. These tests run the real CLI
against a versioned bucket on a moto server, behind the B2-faithful proxy (the b2 dialect,
Content-MD5 on DeleteObjects, no flexible checksums), and look at the bucket's versions
afterwards: the unit users pay for is the stored bytes, not the visible keys."""

from __future__ import annotations

import json
import os
import shutil
import signal

from tests.support.faultproxy import B2Mode, fault_proxy
from tests.support.helpers import REPO, cli_env, describe, make_tree, run_cli, run_json
from tests.support.waits import wait_until

WINDOW = "1"
KILLPOINT = str(REPO / "tests" / "support" / "_killpoint")


def _versioned_env(moto, proxy) -> tuple[dict, str]:
    bucket = moto.make_bucket()
    moto.client().put_bucket_versioning(Bucket=bucket,
                                        VersioningConfiguration={"Status": "Enabled"})
    env = cli_env(f"s3://{bucket}/cache", {**moto.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint,
                                           "CACHE_SYNC_S3_DIALECT": "b2",
                                           "CACHE_SYNC_GC_WINDOW": WINDOW})
    return env, bucket


def _versions(moto, bucket: str) -> tuple[list[dict], list[dict]]:
    """(hidden data versions, delete markers) under the store's prefix."""
    hidden, markers = [], []
    for page in moto.client().get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix="cache/"):
        hidden += [v for v in page.get("Versions", []) if not v["IsLatest"]]
        markers += page.get("DeleteMarkers", [])
    return hidden, markers


def _gc_until_deleted(env: dict, root) -> list[dict]:
    """gc --keep 1 --grace 0 until a run's delete phase has deleted the marked objects (the
    first run marks; a later one, once the mark is WINDOW old by the store's clock, deletes)."""
    runs: list[dict] = []

    def one() -> bool:
        runs.append(run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env))
        return runs[-1]["objects_deleted"] > 0

    assert wait_until(one, 60, step=0.3), runs
    return runs


def test_gc_deletes_hidden_versions_so_the_bytes_go(moto, tmp_path):
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        env, bucket = _versioned_env(moto, p)
        root = tmp_path / "root"
        make_tree(root, files=12)
        run_cli(["--root", str(root), "push", "packages"], env)
        shutil.rmtree(root / "packages")  # every object of the first push becomes garbage
        (root / "packages").mkdir()
        (root / "packages" / "new.txt").write_text("new")
        run_cli(["--root", str(root), "push", "packages"], env)
        runs = _gc_until_deleted(env, root)
        last = runs[-1]
        assert last["versions_deleted"] > 0 and last["version_bytes_deleted"] > 0, last
        assert last["versions_note"] == ""
        hidden, markers = _versions(moto, bucket)
        assert hidden == [] and markers == [], (hidden[:3], markers[:3])
        # The store is whole: a fresh worker pulls exactly the pushed tree.
        fresh = tmp_path / "fresh"
        run_cli(["--root", str(fresh), "pull", "packages"], env)
        assert describe(fresh / "packages") == describe(root / "packages")
        assert not p.b2_refusals()
        # A further gc leaves nothing hidden either: not even its own clock probe (2 versions:
        # the probe's bytes and its delete marker).
        again = run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
        assert again["versions_deleted"] == 2 and _versions(moto, bucket) == ([], [])


def test_a_key_that_may_not_list_versions_gets_the_lifecycle_rule(moto, tmp_path):
    """The key may not list (or delete) versions: gc still does its work, exits 0, and says in
    one warning which lifecycle rule frees the space; the hidden versions stay."""
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        env, bucket = _versioned_env(moto, p)
        p.add("status", method="GET", key="?versions", status=403)
        root = tmp_path / "root"
        make_tree(root, files=6)
        run_cli(["--root", str(root), "push", "packages"], env)
        shutil.rmtree(root / "packages")
        (root / "packages").mkdir()
        (root / "packages" / "new.txt").write_text("new")
        run_cli(["--root", str(root), "push", "packages"], env)
        runs = _gc_until_deleted(env, root)
        note = runs[-1]["versions_note"]
        assert "daysFromHidingToDeleting" in note and "NoncurrentVersionExpiration" in note
        assert runs[-1]["versions_deleted"] == 0
        hidden, markers = _versions(moto, bucket)
        assert hidden and markers  # a plain delete only hid them
        text = run_cli(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
        warnings = [ln for ln in text.stderr.splitlines() if "daysFromHidingToDeleting" in ln]
        assert len(warnings) == 1 and "Traceback" not in text.stderr, text.stderr


def test_doctor_says_whether_deletes_free_space(moto):
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        env, bucket = _versioned_env(moto, p)
        rep = json.loads(run_cli(["--json", "doctor", "--size", "64K"], env).stdout)
        row = next(c for c in rep["checks"] if c["name"] == "deletes free space")
        assert row["result"] == "ok" and "keeps versions" in row["detail"], row
        assert rep["verdict"] == "ok"
        assert _versions(moto, bucket) == ([], [])  # the probe left nothing stored
        p.add("status", method="GET", key="?versions", status=403)
        r = run_cli(["--json", "doctor", "--size", "64K"], env, check=False)
        rep = json.loads(r.stdout)
        row = next(c for c in rep["checks"] if c["name"] == "deletes free space")
        assert r.returncode == 0 and row["result"] == "refused", row
        assert "daysFromHidingToDeleting" in row["fix"]
        assert rep["verdict"] == "usable, gc frees no storage"


def test_gc_killed_between_its_two_version_steps_brings_nothing_back(moto, tmp_path):
    """SIGKILL after gc deleted the hidden bytes and before it deleted the delete markers
    (``gc:versions-markers``, support/_killpoint): no deleted snapshot or object is visible
    again (a marker deleted first would bring a retention-deleted snapshot back as a head),
    and the next gc finishes the purge."""
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        env, bucket = _versioned_env(moto, p)
        root = tmp_path / "root"
        make_tree(root, files=4)
        run_cli(["--root", str(root), "push", "packages"], env)
        (root / "packages" / "new.txt").write_text("new")
        run_cli(["--root", str(root), "push", "packages"], env)
        kill = {**env, "FAULTS_KILL_AT": "gc:versions-markers",
                "PYTHONPATH": os.pathsep.join([KILLPOINT, env.get("PYTHONPATH", "")])}
        r = run_cli(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], kill,
                    check=False)
        assert r.returncode == -signal.SIGKILL, r.stderr
        log = run_json(["--root", str(tmp_path / "other"), "log", "packages"], env)
        assert len(log["snapshots"]) == 1, log  # the deleted snapshot stays deleted
        hidden, markers = _versions(moto, bucket)
        assert hidden == [] and markers, "killed between the steps: only markers are left"
        fresh = tmp_path / "fresh"
        run_cli(["--root", str(fresh), "pull", "packages"], env)
        assert describe(fresh / "packages") == describe(root / "packages")
        run_json(["--root", str(root), "gc", "--keep", "1", "--grace", "0"], env)
        assert _versions(moto, bucket) == ([], [])
