"""Clean upgrades (issue 11 item 7): after any sequence of installs, upgrades and downgrades,
`packages/` holds exactly one version of each distribution and every file on disk belongs to
the installed version, with pip and with uv (real installers, the tests' local index)."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.pkgindex import build_index, hermetic_env, make_wheel, serve

INSTALLERS = ["pip", pytest.param("uv", marks=pytest.mark.skipif(
    shutil.which("uv") is None, reason="no uv"))]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("upgrade-index")
    w = d / "wheels"
    return build_index(d / "idx", [
        make_wheel(w, "six", "1.16.0", {"six.py": "V = '1.16'\n", "six_compat.py": "OLD = 1\n"}),
        make_wheel(w, "six", "1.17.0", {"six.py": "V = '1.17'\n"}),
        make_wheel(w, "html5lib", "1.1", {"html5lib/__init__.py": "import six\n"},
                   requires=("six>=1.9",)),
        # two distributions sharing one top-level directory (a namespace package)
        make_wheel(w, "nsa", "1.0", {"nsp/a.py": "V = 1\n", "nsp/a_old.py": "OLD = 1\n"}),
        make_wheel(w, "nsa", "2.0", {"nsp/a.py": "V = 2\n"}),
        make_wheel(w, "nsb", "1.0", {"nsp/b.py": "B = 1\n"}),
    ])


def _record(info: Path) -> dict[str, str]:
    """path relative to packages/ -> sha256 (urlsafe b64) from a RECORD."""
    out = {}
    with open(info / "RECORD", newline="") as f:
        for row in csv.reader(f):
            if row and row[0] and not row[0].startswith(".."):
                out[os.path.normpath(row[0])] = row[1].partition("=")[2] if row[1] else ""
    return out


def check_clean(packages: Path) -> dict[str, str]:
    """One dist-info per distribution; every file belongs to one and has its RECORD hash."""
    infos = [p for p in packages.iterdir() if p.name.endswith(".dist-info")]
    names = Counter(p.name[:-len(".dist-info")].rsplit("-", 1)[0].lower() for p in infos)
    assert [n for n, c in names.items() if c > 1] == [], sorted(p.name for p in infos)
    owned: dict[str, str] = {}
    for info in infos:
        owned.update(_record(info))
    for dirpath, _dirs, files in os.walk(packages):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), packages)
            if rel == ".lock":  # uv's lock on its target
                continue
            assert rel in owned, f"{rel} belongs to no installed distribution"
            if owned[rel]:
                data = Path(packages, rel).read_bytes()
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
                assert digest.rstrip(b"=").decode() == owned[rel], f"{rel} is another version"
    return {p.name[:-len(".dist-info")].rsplit("-", 1)[0]: p.name[:-len(".dist-info")]
            .rsplit("-", 1)[1] for p in infos}


@pytest.mark.parametrize("installer", INSTALLERS)
def test_upgrade_sequences_leave_one_version_of_each(index, tmp_path, installer):
    steps = [
        (["six==1.16.0", "nsa==1.0", "nsb"], {"six": "1.16.0", "nsa": "1.0", "nsb": "1.0"}),
        # the sequence: pip resolves html5lib without looking at packages/ and brings
        # six 1.17 (uv keeps the 1.16 that satisfies it): either way, one six
        (["html5lib"], {}),
        # six_compat.py (1.16 only) must go; nsb's file in the shared nsp/ must survive
        (["six==1.17.0", "nsa==2.0"], {"six": "1.17.0", "nsa": "2.0", "nsb": "1.0"}),
        (["six==1.16.0"], {"six": "1.16.0"}),  # a downgrade
    ]
    packages = tmp_path / "cache" / "packages"
    with serve(index) as srv:
        env = hermetic_env(tmp_path, srv.url + "/simple")
        for spec, want in steps:
            p = subprocess.run([sys.executable, "-m", "cache_sync", "--json", "install",
                                "--no-push", "--installer", installer, *spec], env=env,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stdout + p.stderr
            assert json.loads(p.stdout)["installer"] == installer
            versions = check_clean(packages)
            for name, version in want.items():
                assert versions[name] == version, (spec, versions)
    assert (packages / "nsp" / "b.py").read_text() == "B = 1\n"
    assert not (packages / "nsp" / "a_old.py").exists()
    assert "1.16" in (packages / "six.py").read_text()  # the downgrade is whole again
