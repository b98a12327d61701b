"""cache-sync doctor through the real CLI: a clear verdict on every backend (a directory, moto,
SeaweedFS, SeaweedFS behind the B2-faithful proxy), and an actionable refusal for each missing
key capability, played by the proxy's B2 mode."""

from __future__ import annotations

import json
import re

import pytest

from cache_sync.doctor import fix_for
from cache_sync.errors import AccessDenied, StorageError
from tests.support.faultproxy import B2Mode, fault_proxy
from tests.support.helpers import cli_env, make_tree, run_cli, run_json
from tests.support.s3servers import SECRET_KEY, free_port

CHECKS = ["list", "write", "read", "ranged read", "transfer 1 MiB", "batch delete",
          "deletes free space"]


def doctor(env: dict, *, human: bool = False) -> tuple[int, dict | None, str]:
    """(exit code, the --json report or None, the output) of one run."""
    p = run_cli((["doctor"] if human else ["--json", "doctor"]) + ["--size", "1M"], env,
                check=False)
    assert SECRET_KEY not in p.stdout + p.stderr
    return p.returncode, None if human else json.loads(p.stdout), p.stdout + p.stderr


def test_every_backend_gets_a_clean_verdict(remote):
    url, extra = remote
    env = cli_env(url, extra)
    rc, rep, text = doctor(env)
    assert rc == 0 and rep, text
    assert [c["name"] for c in rep["checks"]] == CHECKS
    assert all(c["result"] == "ok" for c in rep["checks"]), rep
    assert rep["verdict"] == "ok" and rep["throughput"]["bytes"] == 1024 * 1024
    assert rep["throughput"]["get_MBps"] > 0 and not rep["left_behind"]
    assert rep["dialect"] == ("-" if url.startswith("file://") else "compat")


def _b2_env(moto, proxy, **more: str) -> dict:
    bucket = moto.make_bucket()
    return cli_env(f"s3://{bucket}/cache", {**moto.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint,
                                           "CACHE_SYNC_S3_DIALECT": "b2", **more})


def _row(rep: dict, name: str) -> dict:
    return next(c for c in rep["checks"] if c["name"] == name)


def test_key_without_delete_permission_is_a_warning_naming_deletefiles(moto):
    with fault_proxy(moto.endpoint, b2=B2Mode(deny=frozenset({"delete"}))) as p:
        env = _b2_env(moto, p)
        rc, rep, _ = doctor(env)
        assert rc == 0 and rep and rep["verdict"] == "usable without gc"
        assert rep["missing"] == ["delete"]
        row = _row(rep, "batch delete")
        assert row["result"] == "refused" and "deleteFiles" in row["fix"] and "gc" in row["fix"]
        assert len(rep["left_behind"]) == 2 and "delete by hand" in row["fix"]
        rc, _, text = doctor(env, human=True)
        assert rc == 0 and "gc is unavailable" in text and "deleteFiles" in text
        assert re.search(r"^dialect +b2 ", text, re.M) and re.search(r"^transfer 1 MiB +ok ", text, re.M)
        assert not p.b2_refusals()  # the probe itself speaks B2's dialect


@pytest.mark.parametrize("deny, missing, fix", [
    ({"list"}, ["list"], "listFiles"),
    ({"write"}, ["write"], "writeFiles"),
    ({"list", "read", "write", "delete"}, ["delete", "list", "read", "write"], "another account"),
])
def test_missing_required_capability_fails_with_the_fix(moto, deny, missing, fix):
    with fault_proxy(moto.endpoint, b2=B2Mode(deny=frozenset(deny))) as p:
        rc, rep, text = doctor(_b2_env(moto, p))
    assert rc == 3 and rep and rep["verdict"] == "unusable" and rep["missing"] == missing
    assert fix in text


def test_aws_dialect_on_b2_is_diagnosed(moto):
    """What main did before dialects: gc's DeleteObjects refused for its CRC32 header."""
    with fault_proxy(moto.endpoint, b2=B2Mode()) as p:
        rc, rep, _ = doctor(_b2_env(moto, p, CACHE_SYNC_S3_DIALECT="aws"))
    assert rep
    row = _row(rep, "batch delete")
    assert rc == 0 and row["result"] == "failed"
    assert "Unsupported header 'x-amz-checksum-crc32'" in row["detail"]
    assert "CACHE_SYNC_S3_DIALECT=compat" in row["fix"]


def test_missing_bucket_and_dead_endpoint(moto, tmp_path):
    env = cli_env("s3://no-such-bucket-here/cache", moto.env())
    rc, rep, _ = doctor(env)
    assert rc == 3 and rep and "bucket does not exist" in _row(rep, "list")["fix"]
    dead = cli_env("s3://b/cache", {**moto.env(), "CACHE_SYNC_RETRIES": "1",
                                    "CACHE_SYNC_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    rc, rep, _ = doctor(dead)
    assert rc == 3 and rep and "endpoint does not answer" in _row(rep, "list")["fix"]


@pytest.mark.parametrize("code, dialect, needle", [
    ("AuthorizationHeaderMalformed", "aws", "wrong region: set CACHE_SYNC_REGION"),
    ("PermanentRedirect", "b2", "B2_REGION"),
    ("InvalidAccessKeyId", "b2", "master key"),
    ("AccessDenied", "aws", "allow s3:ListBucket"),
])
def test_fix_texts(code, dialect, needle):
    exc: StorageError = (AccessDenied if code.startswith(("Access", "Invalid")) else StorageError)(
        f"{code} on listing")
    exc.code = code
    assert needle in fix_for("list", exc, dialect, bucket_wide=False)


def test_a_key_without_delete_breaks_only_gc(moto, tmp_path):
    """The README's promise for a B2 key lacking deleteFiles: push and pull work, gc fails in
    one line with exit 3 and deletes nothing."""
    with fault_proxy(moto.endpoint, b2=B2Mode(deny=frozenset({"delete"}))) as p:
        env = _b2_env(moto, p)
        root = tmp_path / "root"
        make_tree(root, files=6)
        run_cli(["--root", str(root), "push", "packages"], env)
        (root / "packages" / "two.txt").write_text("2")
        run_cli(["--root", str(root), "push", "packages"], env)
        gc = run_cli(["--root", str(root), "gc", "--keep", "1"], env, check=False)
        assert gc.returncode == 3 and "access denied" in gc.stderr
        assert len(gc.stderr.strip().splitlines()) == 1 and "Traceback" not in gc.stderr
        log = run_json(["--root", str(tmp_path / "other"), "log", "packages"], env)
        assert len(log["snapshots"]) == 2  # nothing was deleted
        run_cli(["--root", str(tmp_path / "other"), "pull", "packages"], env)
        assert (tmp_path / "other" / "packages" / "two.txt").read_text() == "2"
        assert not p.b2_refusals()
