"""Secrets (issue 6 item 6, DESIGN via issue 2 property 7): with known fake credentials set,
run every command with -v/-vv, with --json and with failures injected (retries exhausted,
403, stalled reads, no server, SeaweedFS refusing the signature), and assert that neither the
access key, the secret nor the session token appears in stdout, stderr, the cache root (state,
manifests, journal) or the store's objects."""

from __future__ import annotations

import pytest

from cache_sync.cli.main import COMMANDS
from tests.support import faultkit as fk
from tests.support import leakcheck
from tests.support.faultproxy import FaultProxy
from tests.support.s3servers import free_port

SECRETS = (leakcheck.FAKE_KEY_ID, leakcheck.FAKE_SECRET, leakcheck.FAKE_TOKEN)
MODES = {"v": ["-v"], "vv": ["-vv"], "json": ["--json"], "json_vv": ["--json", "-vv"]}
FAULTS = ["none", "500", "403", "stall", "corrupt"]


def available_commands() -> list[str]:
    import importlib

    out = []
    for name in COMMANDS:
        try:
            importlib.import_module(f"cache_sync.cli.cmd_{name}")
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def args_for(command: str, tmp: str) -> list[str]:
    """Arguments that make each command do real work (and reach the store)."""
    return {"gc": ["gc", "--dry-run"], "run": ["run", "--", "true"],
            "install": ["install", "--attempts", "1", "--no-import-check",
                        f"{tmp}/missing-0.1-py3-none-any.whl"]}.get(command, [command])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, moto):
    tmp = tmp_path_factory.mktemp("secrets")
    bucket = moto.make_bucket()
    proxy = FaultProxy(moto.endpoint, seed=61, max_seconds=600).start()
    env = {**leakcheck.secret_env(), "AWS_DEFAULT_REGION": "us-east-1",
           "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint, "CACHE_SYNC_READ_TIMEOUT": "1",
           "CACHE_SYNC_RETRIES": "2"}
    ws = fk.workspace(tmp, f"s3://{bucket}/cache", env)
    fk.make_tree(ws.area(), 61, files=15, big=1)
    ws.run("push")
    yield ws, proxy, moto.client(), bucket
    proxy.stop()


def _inject(proxy: FaultProxy, fault: str) -> None:
    proxy.clear()
    if fault == "500":
        proxy.add("status", status=500)
    elif fault == "403":
        proxy.add("status", status=403)
    elif fault == "stall":
        proxy.add("stall", seconds=20)
    elif fault == "corrupt":
        proxy.add("corrupt", method="GET", range=None)


def _scan(r, label: str) -> list[str]:
    return (leakcheck.find_leaks(r.stdout, SECRETS, f"{label} stdout")
            + leakcheck.find_leaks(r.stderr, SECRETS, f"{label} stderr"))


def _matrix():
    """Long mode: every command x every mode x every fault. Default: every command with -v and
    with --json -vv (no fault), and pull/push/status with each fault under --json -vv."""
    fast = not fk.long_mode()
    for command in available_commands():
        for mode in MODES:
            for fault in FAULTS:
                if fast and not ((fault == "none" and mode in ("v", "json_vv"))
                                 or (fault != "none" and mode == "json_vv"
                                     and command in ("pull", "push"))):
                    continue
                yield command, mode, fault


@pytest.mark.parametrize("command,mode,fault", list(_matrix()))
def test_no_secret_in_output(setup, command, mode, fault):
    ws, proxy, _client, _bucket = setup
    _inject(proxy, fault)
    if command == "push":  # give push something to do
        (ws.area() / "changed.txt").write_text(f"{command} {mode} {fault}")
    r = ws.run(*MODES[mode], *args_for(command, str(ws.root.parent)), ok=False, timeout=120)
    proxy.clear()
    assert "Traceback" not in r.stderr, r.stderr
    leaks = _scan(r, f"{command} {mode} {fault}")
    assert leaks == [], leaks
    fk.record(f"secrets_{command}_{mode}_{fault}", secret_runs=1)


def test_no_secret_in_cache_root_or_store(setup):
    ws, _proxy, client, bucket = setup
    ws.run("-vv", "pull")
    assert leakcheck.scan_tree(ws.root, SECRETS) == []
    assert leakcheck.scan_bucket(client, bucket, SECRETS) == []


def test_no_secret_when_no_server_answers(setup, tmp_path):
    ws, *_ = setup
    dead = dict(ws.env, CACHE_SYNC_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                CACHE_SYNC_CONNECT_TIMEOUT="0.5")
    (ws.area() / "unpushed.txt").write_text("a change, so push must reach the store")
    for args in (["-vv", "pull"], ["--json", "-vv", "push"], ["-vv", "status"]):
        r = ws.run(*args, ok=False, env=dead, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert _scan(r, " ".join(args)) == []


def test_no_secret_when_the_signature_is_refused(seaweed, tmp_path):
    """SeaweedFS checks SigV4: our fake credentials are refused (403) and the error text that
    comes back must not carry them."""
    bucket = seaweed.make_bucket()
    env = {**leakcheck.secret_env(), "AWS_DEFAULT_REGION": "us-east-1",
           "CACHE_SYNC_ENDPOINT_URL": seaweed.endpoint}
    ws = fk.workspace(tmp_path, f"s3://{bucket}/cache", env)
    fk.make_tree(ws.area(), 62, files=3, big=0)
    for args in (["-vv", "push"], ["--json", "-vv", "pull"], ["-v", "log"]):
        r = ws.run(*args, ok=False, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert _scan(r, " ".join(args)) == []
    assert leakcheck.scan_tree(ws.root, SECRETS) == []
